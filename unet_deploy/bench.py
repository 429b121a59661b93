"""Latency benchmarks: per-stage timings of the whole pipeline per backend and precision, against the seed's.

One run measures, for each ``Case`` of ``CASES`` (a backend at a precision on a device) that
applies to the model and machine: preprocess / inference / postprocess / end-to-end latency
percentiles on a real-size source image, throughput at several batch sizes, first-call
latency (load + first prediction), peak memory, and pixel agreement with the fp32 eager
model. The seed article's own way of predicting (PIL letterbox, ToTensor, eager forward,
``torch.argmax``, ``cv2.resize`` back, ``cv2.findContours``) runs as one more case on the same
weights, so the report states our best backend's speed-up over it.

Our pipeline is timed stage by stage with the functions the runtime uses
(``preprocess.preprocess_batch``, the backend, ``postprocess.argmax/to_original/find_regions``);
an inference stage returns host memory, so CUDA work is synchronised inside it.
"""
from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import click
import cv2
import numpy as np

from .errors import UnetDeployError
from .fileio import atomic_write_text, read_image
from .meta import ModelMeta, check_size
from .postprocess import argmax, find_regions, to_original
from .preprocess import preprocess_batch

STAGES = ("preprocess", "inference", "postprocess", "end_to_end")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("cpu", "cuda")
DEFAULT_BATCHES = (1, 4, 16)
DEFAULT_SOURCE_SIZE = (1920, 1080)  # width, height: a full-HD camera frame


@dataclass(frozen=True)
class Case:
    """One row of the benchmark matrix: ``backend`` at ``precision`` on ``device``.

    ``backend`` is ``eager`` (the checkpoint in PyTorch), ``seed`` (the baseline) or a name in
    the runtime's ``BACKENDS``; ``fmt`` is the export format the case runs (``None``: the
    checkpoint itself). Adding a backend or a precision is one more row in ``CASES``.
    """

    backend: str
    precision: str = "fp32"
    device: str = "cpu"
    fmt: str | None = None

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision} {self.device}"


# The matrix, in the order it runs. "seed" is the seed article's pipeline (the baseline) and
# "eager" fp32 the accuracy reference, so both come first on each device.
CASES: list[Case] = [
    Case("eager", "fp32", "cpu"),
    Case("seed", "fp32", "cpu"),
    Case("eager", "bf16", "cpu"),
    Case("torchscript", "fp32", "cpu", "torchscript"),
    Case("onnxruntime", "fp32", "cpu", "onnx"),
    Case("aoti", "fp32", "cpu", "aoti"),
    Case("openvino", "fp32", "cpu", "openvino"),
    Case("eager", "fp32", "cuda"),
    Case("seed", "fp32", "cuda"),
    Case("eager", "fp16", "cuda"),
    Case("eager", "bf16", "cuda"),
    Case("torchscript", "fp32", "cuda", "torchscript"),
    Case("torchscript", "fp16", "cuda", "torchscript"),
    Case("onnxruntime", "fp32", "cuda", "onnx"),
    Case("onnxruntime", "fp16", "cuda", "onnx"),
    Case("aoti", "fp32", "cuda", "aoti"),
    Case("aoti", "fp16", "cuda", "aoti"),
]

# Exported model file suffix -> the format its cases run (a checkpoint is anything else).
_SUFFIX_FORMATS = ((".torchscript.pt", "torchscript"), (".onnx", "onnx"), (".pt2", "aoti"), (".xml", "openvino"))


@dataclass
class BenchSettings:
    """How much to measure: timed ``runs`` after ``warmup`` runs, the batch sizes, and time limits.

    ``case_budget_s`` caps one case: batch sizes whose projected time would pass it are
    skipped (and say so). ``deadline`` (a ``time.perf_counter()`` value) caps the whole run.
    ``threads`` sets the CPU threads of torch and of each backend (None: their defaults).
    """

    runs: int = 20
    warmup: int = 3
    batches: tuple[int, ...] = DEFAULT_BATCHES
    case_budget_s: float = 120.0
    deadline: float | None = None
    threads: int | None = None  # CPU threads for torch and the backends (None: their default)


# ----------------------------------------------------------------------------- the source image
def source_image(width: int = 1920, height: int = 1080, seed: int = 0) -> np.ndarray:
    """A synthetic inspection photo (BGR uint8, ``width`` x ``height``) from ``data.synthetic``.

    Realistic content matters: the letterbox resamples real texture, and a model trained on
    such images finds a handful of regions rather than noise. Deterministic for a given ``seed``.
    """
    from .data.synthetic import sample

    return sample(seed, 0, (width, height)).image


def load_source(image: str | Path | None, size: Sequence[int] = DEFAULT_SOURCE_SIZE) -> tuple[np.ndarray, str]:
    """The benchmark input: ``image`` read and resized to ``size`` (W, H), or ``source_image(*size)``.

    Returns the BGR image and a short description for the report.
    """
    w, h = (int(v) for v in size)
    if image is None:
        return source_image(w, h), f"synthetic {w}x{h}"
    img = read_image(image, cv2.IMREAD_COLOR)
    if img.shape[:2] != (h, w):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
    return img, f"{Path(image).name} resized to {w}x{h}"


# ----------------------------------------------------------------------------- statistics
def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean/min of ``samples_ms`` (linear interpolation between order statistics)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean()), "min": float(a.min())}


class _PeakRSS:
    """Context manager sampling this process's resident memory; ``delta_mb`` = peak minus start."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s, self.start = interval_s, _rss_bytes()
        self.peak, self._stop = self.start, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> "_PeakRSS":
        if self.start:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def delta_mb(self) -> float | None:
        return (self.peak - self.start) / 2**20 if self.start else None


def _release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so a case's RSS delta is its own."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0  # not Linux: memory is not reported


# ----------------------------------------------------------------------------- machine facts
def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX-BF16)."""
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _cuda_available() -> bool:
    torch = _torch()
    return bool(torch is not None and torch.cuda.is_available())


def hardware_info() -> dict[str, Any]:
    """The machine, for the report: CPU model, cores, SIMD flags, memory, GPU, library versions, date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    flags = _cpu_flags()
    simd = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma", "avx_vnni"))
    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_flags": simd,
        "native_bf16": cpu_has_native_bf16(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        if hasattr(os, "sysconf") else None,
        "gpu": None,
        "versions": {"numpy": np.__version__, "opencv": cv2.__version__},
    }
    torch = _torch()
    if torch is not None:
        info["versions"]["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = f"{p.name} ({p.total_memory / 2**30:.0f} GiB)"
            info["versions"]["cuda"] = torch.version.cuda
    try:
        import onnxruntime as ort

        info["versions"]["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    return info


def model_gflops(meta: ModelMeta, input_size: Sequence[int] | None = None) -> float:
    """GFLOPs of one forward pass (multiply-add = 2 FLOPs), counted by ``FlopCounterMode`` on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .checkpoint import build_model

    h, w = input_size or meta.input_size
    with torch.device("meta"):
        model = build_model(meta).eval()
        x = torch.empty(1, meta.in_channels, h, w)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


def matmul_gflops(dtype: str = "fp32", device: str = "cpu", n: int = 1024, seconds: float = 1.0) -> float:
    """Measured GFLOP/s of an ``n x n`` matrix product in ``dtype`` on ``device`` (the hardware limit)."""
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    if device == "cuda":
        n = max(n, 8192)
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)
    _sync(device)
    a @ b  # warm-up
    _sync(device)
    count, t0 = 0, time.perf_counter()
    while True:
        a @ b
        count += 1
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return 2.0 * n**3 * count / elapsed / 1e9


def matmul_rates(devices: Iterable[str] = ("cpu",), log: Callable[[str], None] = lambda s: None) -> dict[str, dict[str, float]]:
    """Measured matmul GFLOP/s per device and precision (fp32, bf16; fp16 on CUDA).

    bf16 on a CPU without it in hardware is emulated (~100x slower): measured on small matrices.
    """
    rates: dict[str, dict[str, float]] = {}
    for device in devices:
        rates[device] = {}
        for precision in ("fp32", "bf16") if device == "cpu" else ("fp32", "bf16", "fp16"):
            slow = device == "cpu" and precision == "bf16" and not cpu_has_native_bf16()
            rates[device][precision] = matmul_gflops(precision, device, n=256 if slow else 1024)
            log(f"matmul {device} {precision}: {rates[device][precision]:.3g} GFLOP/s")
    return rates


LIMIT_CAVEAT = ("a reference, not a bound - kernels nearer the FMA peak than torch's matmul, or doing fewer "
                "multiplications (Winograd 3x3 convolutions), go under it")


def hardware_limit(gflops: float, rates: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Inference time at each measured matmul rate of ``matmul_rates`` (model ``gflops`` over the rate).

    See ``LIMIT_CAVEAT``: this is not the fastest possible time.
    """
    out: dict[str, Any] = {"model_gflops": gflops}
    for device, per in rates.items():
        for precision, rate in per.items():
            out[f"{device}_{precision}"] = {"matmul_gflops": rate, "min_inference_ms": 1000.0 * gflops / rate}
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- runners
Stages = dict[str, float]


class Runner:
    """Our pipeline around one inference function: ``runner(images) -> (stage ms, original-size masks)``.

    ``infer`` maps a float32 NCHW batch (the output of ``preprocess_batch``) to logits in host
    memory. ``artefact`` is the file that was loaded (for its size in the report).
    """

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], meta: ModelMeta, artefact: Path | None = None) -> None:
        self.infer, self.meta, self.artefact = infer, meta, artefact

    def prepare(self, images: Sequence[np.ndarray]) -> None:
        """Untimed set-up for these images (nothing for our pipeline)."""

    def __call__(self, images: Sequence[np.ndarray]) -> tuple[Stages, list[np.ndarray]]:
        t0 = time.perf_counter()
        x, transforms = preprocess_batch(images, self.meta)
        t1 = time.perf_counter()
        logits = self.infer(x)
        t2 = time.perf_counter()
        masks = []
        for i, t in enumerate(transforms):
            mask = to_original(argmax(logits[i]), t)
            find_regions(mask, self.meta.classes)
            masks.append(mask)
        t3 = time.perf_counter()
        return _stages(t0, t1, t2, t3), masks


def _stages(t0: float, t1: float, t2: float, t3: float) -> Stages:
    ms = 1000.0
    return {"preprocess": (t1 - t0) * ms, "inference": (t2 - t1) * ms, "postprocess": (t3 - t2) * ms,
            "end_to_end": (t3 - t0) * ms}  # fmt: skip


class _SeedRunner(Runner):
    """The seed article's prediction, one image at a time, as its ``utils.py``/``test.py`` did it.

    PIL: paste onto a black square of the longer side, ``resize`` to the input size (PIL's
    default bicubic, ``keep_image_size_open_rgb``), ToTensor-style ``/255`` CHW float, eager fp32
    forward under ``no_grad``, ``torch.argmax``, ``cv2.resize`` (nearest) of the mask back to the
    square and a crop, and ``cv2.findContours`` per class. The timer starts at the decoded PIL
    image, as ours starts at the decoded OpenCV array.
    """

    def __init__(self, model: Any, meta: ModelMeta, device: str, artefact: Path | None = None) -> None:
        super().__init__(lambda x: x, meta, artefact)
        self.model, self.device = model, device
        self._pil: dict[int, Any] = {}

    def prepare(self, images: Sequence[np.ndarray]) -> None:
        from PIL import Image

        for im in images:
            if id(im) not in self._pil:
                self._pil[id(im)] = Image.fromarray(cv2.cvtColor(im, cv2.COLOR_BGR2RGB))

    def __call__(self, images: Sequence[np.ndarray]) -> tuple[Stages, list[np.ndarray]]:
        self.prepare(images)
        total: Stages = dict.fromkeys(STAGES, 0.0)
        masks = []
        for im in images:
            stages, mask = _seed_predict(self.model, self._pil[id(im)], self.meta, self.device)
            for k, v in stages.items():
                total[k] += v
            masks.append(mask)
        return total, masks


def _seed_predict(model: Any, img: Any, meta: ModelMeta, device: str) -> tuple[Stages, np.ndarray]:
    """One image through the seed's pipeline (see ``_SeedRunner``); returns stage ms and the mask."""
    import torch
    from PIL import Image

    t0 = time.perf_counter()
    temp = max(img.size)  # keep_image_size_open_rgb: paste top-left on a black square, resize
    square = Image.new("RGB", (temp, temp))
    square.paste(img, (0, 0))
    square = square.resize((meta.input_size[1], meta.input_size[0]))
    x = torch.from_numpy(np.array(square)).permute(2, 0, 1).float().div(255.0).unsqueeze(0)  # ToTensor
    t1 = time.perf_counter()
    with torch.no_grad():
        out = model(x.to(device))
        _sync(device)
    t2 = time.perf_counter()
    mask = torch.argmax(out, dim=1)[0].to(torch.uint8).cpu().numpy()
    w, h = img.size
    mask = cv2.resize(mask, (temp, temp), interpolation=cv2.INTER_NEAREST)[:h, :w]
    for c in range(1, meta.num_classes):
        cv2.findContours((mask == c).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    t3 = time.perf_counter()
    return _stages(t0, t1, t2, t3), mask


_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# Bench names that the runtime registry (``runtime.base.BACKENDS``) knows by another name.
_RUNTIME_NAMES = {"eager": "checkpoint"}
# Backends that run without torch.
_TORCH_FREE = ("onnxruntime", "openvino")
# Backends whose precision is a cast when loading; the others run an export made at that
# precision (``export_model(precision=...)``).
_CAST_AT_LOAD = ("eager",)


def _runtime_name(backend: str) -> str:
    return _RUNTIME_NAMES.get(backend, backend)


def _load_backend(case: Case, source: "_ModelSource", threads: int | None = None) -> Runner:
    """Load the case's model with the runtime's ``Segmenter`` (its backend registry, its re-batching)."""
    from .runtime import Segmenter

    path = source.artefact(case)
    seg = Segmenter(path, device=case.device, backend=_runtime_name(case.backend), threads=threads,
                    input_size=source.meta.input_size)  # fmt: skip
    if case.precision != "fp32" and case.backend in _CAST_AT_LOAD:
        _cast(seg._backend, case.precision)  # the torch backends have no precision option (yet)
    return Runner(seg.infer, source.meta, path)


def _cast(backend: Any, precision: str) -> None:
    """Run a torch backend in ``precision``: weights cast and channels_last; its ``forward`` then casts
    inputs to ``backend.dtype`` and logits back to float32."""
    torch = backend.torch
    dtype = getattr(torch, _DTYPES[precision])
    attr = "model" if hasattr(backend, "model") else "module"
    setattr(backend, attr, getattr(backend, attr).to(dtype).to(memory_format=torch.channels_last))
    backend.dtype = dtype


def _load_seed(case: Case, source: "_ModelSource", threads: int | None = None) -> Runner:
    from .checkpoint import load_checkpoint

    if threads:
        _torch().set_num_threads(threads)
    model, _ = load_checkpoint(source.checkpoint, device=case.device)
    return _SeedRunner(model, source.meta, case.device, source.checkpoint)


# Backends that do not load through the runtime registry. Any other backend name is looked up
# there, so a new runtime backend is benchmarked by one more row in ``CASES``.
LOADERS: dict[str, Callable[[Case, "_ModelSource", int | None], Runner]] = {"seed": _load_seed}


def _backend_names() -> list[str]:
    """Every backend name the benchmark can run: ``eager``, ``seed`` and the runtime's."""
    from .runtime.base import BACKENDS

    names = ["eager", "seed"] + [n for n in BACKENDS if n != "checkpoint"]
    return names + sorted({c.backend for c in CASES} - set(names))


# ----------------------------------------------------------------------------- the model under test
@dataclass
class _ModelSource:
    """What the benchmark was given: a checkpoint (exports made on demand) or one exported file."""

    path: Path
    meta: ModelMeta
    checkpoint: Path | None = None  # set when the input is a checkpoint
    backend: str | None = None  # the runtime backend of an exported input
    workdir: Path | None = None
    _exported: dict[tuple[str, str, str], Path] = field(default_factory=dict)
    export_ms: dict[str, float] = field(default_factory=dict)

    def artefact(self, case: Case) -> Path:
        """The file ``case`` runs: the input itself, or an export made now into ``workdir``."""
        if self.checkpoint is None or case.fmt is None:
            return self.path
        precision = "fp32" if case.backend in _CAST_AT_LOAD else case.precision
        # An AOTI package is compiled for one device; reduced precision is exported where it runs.
        device = case.device if case.fmt == "aoti" or precision != "fp32" else "cpu"
        key = (case.fmt, device, precision)
        if key not in self._exported:
            t0 = time.perf_counter()
            out = self.workdir / f"{case.fmt}-{device}-{precision}"
            self._exported[key] = _export(self.checkpoint, case.fmt, out, self.meta, device, precision)
            self.export_ms[" ".join(key)] = (time.perf_counter() - t0) * 1000
        return self._exported[key]


def _export(checkpoint: Path, fmt: str, out_dir: Path, meta: ModelMeta, device: str, precision: str) -> Path:
    """Export ``checkpoint`` to ``fmt`` with ``unet_deploy.export.export_model``, as deployed: height
    and width fixed at ``meta.input_size`` (the runtime always letterboxes to it), batch dynamic."""
    from .export import export_model, get_format

    static = "dynamic" in get_format(fmt).options  # the formats that can fix H and W do
    result = export_model(checkpoint, fmt, out_dir=out_dir, img_size=meta.input_size, dynamic=not static,
                          precision=precision, device=device, check=False, verbose=False)  # fmt: skip
    return Path(result[fmt])


def _open_model(path: Path, img_size: Sequence[int] | None, workdir: Path) -> _ModelSource:
    """Read the metadata of a checkpoint or an exported model; ``img_size`` overrides a checkpoint's."""
    from .runtime import Segmenter
    from .runtime.base import backend_class

    if not path.is_file():
        raise UnetDeployError(f"{path}: file not found; pass a checkpoint (.pt) or an exported model")
    cls = backend_class(path)
    if cls.name == "checkpoint":
        from .checkpoint import load_checkpoint

        _, meta = load_checkpoint(path)
        if img_size is not None:
            meta.input_size = check_size(img_size, "--img-size")
        return _ModelSource(path, meta, checkpoint=path, workdir=workdir)
    meta = Segmenter(path, device="auto").meta
    if img_size is not None and check_size(img_size, "--img-size") != tuple(meta.input_size):
        raise UnetDeployError(
            f"{path}: exported for {meta.input_size[0]}x{meta.input_size[1]} input, not "
            f"{img_size[0]}x{img_size[1]}; drop --img-size or benchmark the checkpoint instead"
        )
    return _ModelSource(path, meta, backend=cls.name, workdir=workdir)


# ----------------------------------------------------------------------------- case selection
def _skip_reason(case: Case, source: _ModelSource, explicit_precision: bool) -> str | None:
    """Why ``case`` cannot run here (``None``: it can)."""
    if source.checkpoint is None and _runtime_name(case.backend) != source.backend:
        return f"needs the checkpoint (the input is an exported {source.backend} model)"
    if case.backend not in _backend_names():
        return f"the runtime has no backend {case.backend!r}"
    if case.backend not in _TORCH_FREE and _torch() is None:
        return "torch is not installed"
    if case.backend in _TORCH_FREE and importlib.util.find_spec(case.backend) is None:
        return f"{case.backend} is not installed"
    if source.checkpoint is not None and case.fmt is not None:
        from .export import EXPORT_FORMATS

        if case.fmt not in {f.arg for f in EXPORT_FORMATS}:
            return f"export_model cannot make {case.fmt} yet"
    if case.device == "cuda":
        if case.backend == "onnxruntime":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
        elif not _cuda_available():
            return "no CUDA device"
    if case.precision == "bf16" and not explicit_precision:
        if case.device == "cpu" and not cpu_has_native_bf16():
            return "no native bf16 on this CPU (AVX512-BF16/AMX); --precision bf16 runs it emulated"
        if case.device == "cuda" and _cuda_available() and not _torch().cuda.is_bf16_supported():
            return "this GPU has no bf16"
    return None


def select_cases(
    backends: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    devices: Sequence[str] | None = None,
    cases: Sequence[Case] | None = None,
) -> list[Case]:
    """The rows of ``cases`` (default ``CASES``) matching the given backends, precisions and devices.

    ``None`` keeps all of that kind. The seed baseline and the eager fp32 reference follow the
    chosen devices: they are dropped only when ``backends`` is given without them.
    """
    chosen = []
    for case in cases if cases is not None else CASES:
        if backends and case.backend not in backends:
            continue
        if precisions and case.precision not in precisions:
            continue
        if devices and case.device not in devices:
            continue
        chosen.append(case)
    return chosen


# ----------------------------------------------------------------------------- measuring
def _measure(runner: Runner, images: list[np.ndarray], runs: int, deadline: float, device: str) -> tuple[dict, list]:
    """Time ``runs`` calls (at least one, stopping early past ``deadline``); per-stage summaries and masks."""
    runner.prepare(images)
    samples: dict[str, list[float]] = {k: [] for k in STAGES}
    masks: list[np.ndarray] = []
    for i in range(max(1, runs)):
        if i and time.perf_counter() > deadline:
            break
        stages, masks = runner(images)
        for k, v in stages.items():
            samples[k].append(v)
    return {k: summarize(v) for k, v in samples.items()} | {"runs": len(samples["end_to_end"])}, masks


def run_case(
    case: Case,
    source: _ModelSource,
    image: np.ndarray,
    settings: BenchSettings,
    reference: np.ndarray | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Benchmark one case; returns its report row (``status`` ok/error with the measurements or the reason)."""
    row: dict[str, Any] = {"backend": case.backend, "precision": case.precision, "device": case.device,
                           "format": case.fmt or "checkpoint"}  # fmt: skip
    start = time.perf_counter()
    deadline = start + settings.case_budget_s
    if settings.deadline is not None:
        deadline = min(deadline, settings.deadline)
    _release_memory()
    torch = _torch() if case.device == "cuda" else None
    if torch is not None:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        cuda_free0 = torch.cuda.mem_get_info()[0]
    with _PeakRSS() as rss:
        source.artefact(case)  # export first: not part of the load time
        t0 = time.perf_counter()
        runner = LOADERS.get(case.backend, _load_backend)(case, source, settings.threads)
        t1 = time.perf_counter()
        runner.prepare([image])
        t2 = time.perf_counter()
        stages, masks = runner([image])
        t3 = time.perf_counter()
        row["load_ms"], row["first_call_ms"] = (t1 - t0) * 1000, (t3 - t2) * 1000
        row["first_result_ms"] = row["load_ms"] + row["first_call_ms"]
        for _ in range(max(0, settings.warmup - 1)):
            runner([image])
        row["warmup_ms"] = (time.perf_counter() - t2) * 1000
        latency, masks = _measure(runner, [image], settings.runs, deadline, case.device)
        row["runs"] = latency.pop("runs")
        row["latency_ms"] = latency
        e2e = latency["end_to_end"]["p50"]
        row["pre_post_share"] = (latency["preprocess"]["p50"] + latency["postprocess"]["p50"]) / e2e if e2e else None
        row["fps"] = 1000.0 / e2e if e2e else None
        row["throughput"] = []
        for b in settings.batches:
            try:
                row["throughput"].append(_throughput(runner, image, b, settings, row, deadline, case.device))
            except UnetDeployError as e:  # e.g. a model exported for one batch size only
                row["throughput"].append({"batch": b, "status": f"error: {e.message}"})
    row["memory_mb"] = {"rss_peak_delta": rss.delta_mb}
    if torch is not None:
        row["memory_mb"]["cuda_max_allocated"] = torch.cuda.max_memory_allocated() / 2**20
        row["memory_mb"]["cuda_used_delta"] = (cuda_free0 - torch.cuda.mem_get_info()[0]) / 2**20
    row["artefact"] = str(runner.artefact) if runner.artefact else None
    row["size_mb"] = _size_mb(runner.artefact)
    row["pixel_agreement"] = float((masks[0] == reference).mean()) if reference is not None else None
    row["mask"] = masks[0]  # removed before the report is written; the first row's is the reference
    row["status"] = "ok"
    row["seconds"] = time.perf_counter() - start
    log(f"  {case.name}: e2e p50 {e2e:.1f} ms, first result {row['first_result_ms']:.0f} ms, {row['runs']} runs")
    return row


def _size_mb(path: Path | None) -> float | None:
    """Size of a model file in MiB (an OpenVINO ``.xml`` with its ``.bin`` weights)."""
    if path is None or not path.is_file():
        return None
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
    return sum(p.stat().st_size for p in files if p.is_file()) / 2**20


def _throughput(runner: Runner, image: np.ndarray, batch: int, settings: BenchSettings, single: dict[str, Any],
                deadline: float, device: str) -> dict[str, Any]:  # fmt: skip
    """Images/s at ``batch`` images per call, unless its projected time passes ``deadline``.

    ``single`` is the batch-1 latency measurement (``latency_ms`` and ``runs``), reused for batch 1.
    """
    e2e_ms = single["latency_ms"]["end_to_end"]["p50"]
    if batch == 1:
        return {"batch": 1, "status": "ok", "runs": single["runs"], "images_per_s": 1000.0 / e2e_ms,
                "ms_per_image": e2e_ms, "latency_ms": single["latency_ms"]}  # fmt: skip
    runs = max(2, min(settings.runs, math.ceil(settings.runs / batch)))
    projected = (1 + runs) * batch * e2e_ms / 1000.0
    if time.perf_counter() + projected > deadline:
        return {"batch": batch, "status": f"skipped (needs ~{projected:.0f} s, over the time budget)"}
    images = [image] * batch
    runner(images)  # warm-up at this shape
    latency, _ = _measure(runner, images, runs, deadline, device)
    n = latency.pop("runs")
    p50 = latency["end_to_end"]["p50"]
    return {"batch": batch, "status": "ok", "runs": n, "images_per_s": 1000.0 * batch / p50,
            "ms_per_image": p50 / batch, "latency_ms": latency}  # fmt: skip


def benchmark(
    model: str | Path,
    cases: Sequence[Case] | None = None,
    settings: BenchSettings | None = None,
    image: np.ndarray | None = None,
    img_size: Sequence[int] | None = None,
    explicit_precision: bool = False,
    hw_limit: bool = False,
    log: Callable[[str], None] = lambda s: None,
    image_desc: str | None = None,
) -> dict[str, Any]:
    """Benchmark ``model`` (a checkpoint, or an exported .onnx/.torchscript.pt/.pt2/.xml) over ``cases``.

    A checkpoint is exported to each format a case needs, into a temporary folder. ``image``
    is the source image (default ``source_image()`` 1920x1080); ``img_size`` overrides a
    checkpoint's network input size. Returns the report dict that ``format_table``,
    ``to_markdown`` and the JSON file show: machine, model, settings, one row per case
    (skipped ones with their reason), and the speed-up of the best backend over the seed.
    """
    settings = settings or BenchSettings()
    cases = list(cases) if cases is not None else select_cases(devices=["cuda" if _cuda_available() else "cpu"])
    if image is None:
        image, image_desc = load_source(None)
    image_desc = image_desc or f"{image.shape[1]}x{image.shape[0]} array"
    with tempfile.TemporaryDirectory(prefix="unet-bench-") as tmp:
        source = _open_model(Path(model), img_size, Path(tmp))
        if source.checkpoint is None:  # an exported model: its own backend, and the seed row saying why not
            precision = str(source.meta.extra.get("precision", "fp32"))  # what the export wrote
            devices = list(dict.fromkeys(c.device for c in cases))
            cases = [Case(source.backend, precision, d) for d in devices] + [c for c in cases if c.backend == "seed"]
        report = _report_head(source, image, image_desc, settings)
        if hw_limit and source.checkpoint is not None:
            devices = sorted({c.device for c in cases} & set(DEVICES) - ({"cuda"} if not _cuda_available() else set()))
            report["hardware_limit"] = hardware_limit(report["model"]["gflops"], matmul_rates(devices or ["cpu"]))
        # The fp32 eager model is the accuracy reference: run it first, or once aside when not asked for.
        cases.sort(key=lambda c: (c.backend, c.precision) != ("eager", "fp32"))
        reference, report["reference"] = None, "the first fp32 case"
        if source.checkpoint is not None and cases and (cases[0].backend, cases[0].precision) != ("eager", "fp32"):
            reference = _load_backend(Case("eager"), source, settings.threads)([image])[1][0]
            report["reference"] = "eager fp32 cpu"
        rows = []
        for i, case in enumerate(cases, 1):
            log(f"[{i}/{len(cases)}] {case.name}")
            reason = _skip_reason(case, source, explicit_precision)
            if reason is None and settings.deadline is not None and time.perf_counter() > settings.deadline:
                reason = "time budget spent"
            if reason is not None:
                rows.append({"backend": case.backend, "precision": case.precision, "device": case.device,
                             "format": case.fmt, "status": f"skipped: {reason}"})  # fmt: skip
                log(f"  skipped: {reason}")
                continue
            try:
                row = run_case(case, source, image, settings, reference, log)
            except Exception as e:  # a backend that fails here is a finding, not the end of the run
                text = e.message if isinstance(e, UnetDeployError) else str(e)
                msg = " ".join(text.split())[:300] or type(e).__name__
                row = {"backend": case.backend, "precision": case.precision, "device": case.device,
                       "format": case.fmt, "status": f"error: {type(e).__name__}: {msg}"}  # fmt: skip
                log(f"  error: {msg}")
            if reference is None and row.get("status") == "ok" and case.precision == "fp32":
                reference, report["reference"] = row["mask"], case.name  # first fp32 result is the reference
                row["pixel_agreement"] = 1.0
            row.pop("mask", None)
            rows.append(row)
        report["export_ms"] = dict(source.export_ms)
    report["results"] = rows
    report["summary"] = _summary(rows)
    return report


def _report_head(source: _ModelSource, image: np.ndarray, image_desc: str, settings: BenchSettings) -> dict[str, Any]:
    meta = source.meta
    model: dict[str, Any] = {
        "path": str(source.path), "kind": "checkpoint" if source.checkpoint else source.backend,
        "classes": meta.classes, "input_size": list(meta.input_size), "base_channels": meta.arch["base_channels"],
        "upsample": meta.arch["upsample"],
    }  # fmt: skip
    if _torch() is not None:
        from .checkpoint import build_model
        from .model import count_parameters

        import torch

        with torch.device("meta"):
            model["parameters"] = count_parameters(build_model(meta))
        model["gflops"] = model_gflops(meta)
    return {
        "tool": "unet-bench",
        "machine": hardware_info(),
        "model": model,
        "source": {"description": image_desc, "size": [int(image.shape[0]), int(image.shape[1])]},
        "settings": {"runs": settings.runs, "warmup": settings.warmup, "batches": list(settings.batches),
                     "case_budget_s": settings.case_budget_s, "threads": settings.threads},  # fmt: skip
    }


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per device: the fastest of our cases (end-to-end p50 at batch 1) and its speed-up over the seed."""
    out: dict[str, Any] = {}
    for device in DEVICES:
        ok = [r for r in rows if r["device"] == device and r.get("status") == "ok"]
        ours = [r for r in ok if r["backend"] != "seed"]
        if not ours:
            continue
        best = min(ours, key=lambda r: r["latency_ms"]["end_to_end"]["p50"])
        entry: dict[str, Any] = {"best": f"{best['backend']} {best['precision']}",
                                 "best_end_to_end_ms": best["latency_ms"]["end_to_end"]["p50"],
                                 "best_pre_post_share": best["pre_post_share"]}  # fmt: skip
        seed = [r for r in ok if r["backend"] == "seed"]
        if seed:
            s = seed[0]["latency_ms"]["end_to_end"]["p50"]
            entry["seed_end_to_end_ms"] = s
            entry["speedup_vs_seed"] = s / entry["best_end_to_end_ms"]
        out[device] = entry
    return out


# ----------------------------------------------------------------------------- output
def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    batches = report["settings"]["batches"]
    head = ["backend", "prec", "dev", "status", "MB", "first ms", "pre", "infer", "post", "e2e p50", "p90", "p99",
            "pre+post", *[f"img/s b{b}" for b in batches], "peak MB", "agree"]  # fmt: skip
    rows = []
    for r in report["results"]:
        if r.get("status") != "ok":
            rows.append([r["backend"], r["precision"], r["device"], r["status"]] + [""] * (len(head) - 4))
            continue
        lat = r["latency_ms"]
        tput = {t["batch"]: (_fmt(t["images_per_s"], 2) if t.get("status") == "ok" else "skip") for t in r["throughput"]}
        mem = r["memory_mb"]
        peak = mem.get("cuda_max_allocated") if r["device"] == "cuda" else mem.get("rss_peak_delta")
        agree = r.get("pixel_agreement")
        rows.append([
            r["backend"], r["precision"], r["device"], "ok", _fmt(r.get("size_mb")), _fmt(r["first_result_ms"], 0),
            _fmt(lat["preprocess"]["p50"]), _fmt(lat["inference"]["p50"]), _fmt(lat["postprocess"]["p50"]),
            _fmt(lat["end_to_end"]["p50"]), _fmt(lat["end_to_end"]["p90"]), _fmt(lat["end_to_end"]["p99"]),
            f"{100 * r['pre_post_share']:.1f}%" if r.get("pre_post_share") is not None else "-",
            *[tput.get(b, "-") for b in batches], _fmt(peak, 0),
            f"{100 * agree:.2f}%" if agree is not None else "-",
        ])  # fmt: skip
    return head, rows


def _summary_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for device, s in report.get("summary", {}).items():
        line = (f"{device}: best {s['best']} {s['best_end_to_end_ms']:.1f} ms end to end "
                f"(pre+post {100 * s['best_pre_post_share']:.1f}%)")  # fmt: skip
        if "speedup_vs_seed" in s:
            line += f"; seed pipeline {s['seed_end_to_end_ms']:.1f} ms -> {s['speedup_vs_seed']:.2f}x faster"
        lines.append(line)
    hw = report.get("hardware_limit")
    if hw:
        parts = [f"{k}: {v['matmul_gflops']:.3g} GFLOP/s -> {v['min_inference_ms']:.3g} ms"
                 for k, v in hw.items() if isinstance(v, dict)]  # fmt: skip
        lines.append(f"hardware limit ({hw['model_gflops']:.1f} GFLOPs/image at torch's matmul rate; "
                     f"{LIMIT_CAVEAT.split(' - ')[0]}): " + "; ".join(parts))
    return lines


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table (times in ms, p50 unless named) with the summary lines under it."""
    head, rows = _table_rows(report)
    status_col = head.index("status")
    measured = [r for r in rows if r[status_col] == "ok"]  # a skip reason does not widen its column
    widths = [max([len(head[i])] + [len(r[i]) for r in (rows if i < status_col else measured)]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        if cells[status_col] not in ("ok", "status"):  # a skipped/error row: its reason runs on
            return "  ".join(c.ljust(widths[i]) for i, c in enumerate(cells[:status_col])) + "  " + cells[status_col]
        return "  ".join(c.rjust(widths[i]) if i > status_col else c.ljust(widths[i]) for i, c in enumerate(cells))

    m, s = report["model"], report["source"]
    title = (f"{Path(m['path']).name}: {m['kind']}, {len(m['classes'])} classes, input "
             f"{m['input_size'][0]}x{m['input_size'][1]}, base {m['base_channels']}; source {s['description']}; "
             f"{report['settings']['runs']} runs after {report['settings']['warmup']} warm-up")  # fmt: skip
    out = [title, line(head)] + [line(r) for r in rows] + _summary_lines(report)
    return "\n".join(out)


def to_markdown(report: dict[str, Any], title: str | None = None, level: int = 2) -> str:
    """The report as a Markdown section: a heading, the table, the summary and the reference used."""
    head, rows = _table_rows(report)
    m = report["model"]
    title = title or f"{Path(m['path']).name} ({m['input_size'][0]}x{m['input_size'][1]}, base {m['base_channels']})"
    out = [f"{'#' * level} {title}", ""]
    gf = m.get("gflops")
    out.append(f"Model: {m['kind']}, {len(m['classes'])} classes, input {m['input_size'][0]}x{m['input_size'][1]}, "
               f"base_channels {m['base_channels']}" + (f", {m.get('parameters', 0):,} parameters, {gf:.2f} GFLOPs/image"
               if gf else "") + f". Source image: {report['source']['description']}. "
               f"{report['settings']['runs']} timed runs after {report['settings']['warmup']} warm-up; "
               f"accuracy = argmax pixel agreement with {report['reference']}. Times in ms (p50 unless named).")  # fmt: skip
    out += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    summary = _summary_lines(report)
    if summary:
        out += [""] + [f"- {s}" for s in summary]
    return "\n".join(out) + "\n"


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(report, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def run_benchmark(
    model: str | Path,
    *,
    backends: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    device: str = "auto",
    runs: int = 20,
    warmup: int = 3,
    batches: Sequence[int] = DEFAULT_BATCHES,
    img_size: Sequence[int] | None = None,
    image: str | Path | np.ndarray | None = None,
    source_size: Sequence[int] = DEFAULT_SOURCE_SIZE,
    threads: int | None = None,
    budget_s: float = 120.0,
    hw_limit: bool = False,
    json_path: str | Path | None = None,
    markdown_path: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Benchmark ``model`` as ``unet-bench`` does and return the report (optionally written as JSON/Markdown).

    ``backends``/``precisions`` pick rows of ``CASES`` (None: all that apply; naming a
    precision runs it even where the hardware only emulates it); ``device`` is ``auto``
    (CUDA when there is one), ``cpu``, ``cuda`` or ``all``. ``image`` is a file or a BGR array
    used as the source image (a file is resized to ``source_size`` W, H); by default a synthetic
    ``source_size`` image. ``report["results"]`` holds one row per case; ``report["summary"]``
    the best backend per device and its speed-up over the seed pipeline.
    """
    known = _backend_names()
    unknown = sorted(set(backends or ()) - set(known))
    if unknown:
        raise UnetDeployError(f"backend {','.join(unknown)} is unknown; choose from {', '.join(known)}")
    bad = sorted(set(precisions or ()) - set(PRECISIONS))
    if bad:
        raise UnetDeployError(f"precision {','.join(bad)} is unknown; choose from {', '.join(PRECISIONS)}")
    if not batches or min(batches) < 1:
        raise UnetDeployError(f"batch sizes {list(batches)} must be whole numbers of at least 1, such as 1,4,16")
    if device not in ("auto", "all", *DEVICES):
        raise UnetDeployError(f"device {device!r} must be auto, cpu, cuda or all")
    if device == "cuda" and not _cuda_available():
        raise UnetDeployError("device cuda: no CUDA device is visible to torch; use --device cpu")
    devices = list(DEVICES) if device == "all" else [device if device != "auto" else
                                                     "cuda" if _cuda_available() else "cpu"]  # fmt: skip
    cases = select_cases(backends, precisions, devices)
    if not cases:
        raise UnetDeployError("no benchmark case matches these backend/precision/device choices")
    if isinstance(image, np.ndarray):
        src, desc = image, f"{image.shape[1]}x{image.shape[0]} array"
    else:
        src, desc = load_source(image, source_size)
    settings = BenchSettings(runs=runs, warmup=warmup, batches=tuple(batches), case_budget_s=budget_s, threads=threads)
    report = benchmark(model, cases, settings, src, img_size, explicit_precision=bool(precisions),
                       hw_limit=hw_limit, log=log or (lambda s: None), image_desc=desc)  # fmt: skip
    if json_path:
        write_json(report, json_path)
    if markdown_path:
        atomic_write_text(markdown_path, to_markdown(report))
    return report


# ----------------------------------------------------------------------------- CLI
def _split(values: Sequence[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--backend", "backends", multiple=True, metavar="NAME[,NAME]",
              help="Backends to run (default all that apply): eager, seed, torchscript, onnxruntime, aoti, openvino.")
@click.option("--precision", "precisions", multiple=True, metavar="P[,P]",
              help="fp32, bf16, fp16 (default: fp32 and what the device computes natively).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "all"]), default="auto", show_default=True,
              help="auto = cuda when there is one, else cpu; all = both.")
@click.option("--batch", "batches", multiple=True, metavar="N[,N]", help="Batch sizes for throughput [default: 1,4,16].")
@click.option("--runs", type=click.IntRange(1), default=20, show_default=True, help="Timed runs per case.")
@click.option("--warmup", type=click.IntRange(1), default=3, show_default=True, help="Warm-up runs (the first is timed as first call).")
@click.option("--img-size", type=int, nargs=2, default=None, metavar="H W",
              help="Network input size (checkpoint only; default: the model's).")
@click.option("--source-size", type=int, nargs=2, default=DEFAULT_SOURCE_SIZE, show_default=True, metavar="W H",
              help="Size of the source image, letterboxed every run.")
@click.option("--image", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="A real image as source (resized to --source-size) instead of the synthetic one.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads (default: the libraries' own).")
@click.option("--budget", type=float, default=120.0, show_default=True, help="Seconds per case at most (approximately).")
@click.option("--hw-limit", is_flag=True, help="Also measure matmul GFLOP/s and the model's GFLOPs: the hardware limit.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the full report as JSON.")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the table as Markdown.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def command(model: Path, backends: tuple[str, ...], precisions: tuple[str, ...], device: str, batches: tuple[str, ...],
            runs: int, warmup: int, img_size: tuple[int, int] | None, source_size: tuple[int, int], image: Path | None,
            threads: int | None, budget: float, hw_limit: bool, json_path: Path | None, md_path: Path | None, quiet: bool) -> None:  # fmt: skip
    """Benchmark MODEL (a checkpoint, or an exported .onnx/.torchscript.pt/.pt2/.xml) per backend and stage.

    For each backend and precision: preprocess, inference, postprocess and end-to-end latency
    (p50/p90/p99) on a full-size source image, images/s per batch size, first-result time
    (load + first call), peak memory and pixel agreement with the fp32 eager model; plus the
    seed article's own pipeline on the same weights, and the speed-up over it. A checkpoint is
    exported to every format needed into a temporary folder.

    \b
    Examples:
      unet-bench runs/a/best.pt                              # every backend on this machine
      unet-bench model.onnx --runs 50 --json bench.json      # one exported model
      unet-bench best.pt --backend eager,onnxruntime --batch 1,8 --img-size 512 512
      unet-bench best.pt --device cuda --precision fp32,fp16 --markdown bench.md
    """
    try:
        sizes = tuple(int(b) for b in _split(batches)) or DEFAULT_BATCHES
    except ValueError:
        raise UnetDeployError(f"--batch {','.join(batches)} must be whole numbers such as 1,4,16") from None
    report = run_benchmark(
        model, backends=_split(backends) or None, precisions=_split(precisions) or None, device=device,
        runs=runs, warmup=warmup, batches=sizes, img_size=img_size, image=image, source_size=source_size,
        threads=threads, budget_s=budget, hw_limit=hw_limit, json_path=json_path, markdown_path=md_path,
        log=None if quiet else (lambda s: click.echo(s, err=True)),
    )  # fmt: skip
    click.echo(format_table(report))
    for path in (json_path, md_path):
        if path:
            click.echo(f"wrote {path}", err=True)
