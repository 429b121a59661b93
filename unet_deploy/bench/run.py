"""Running a benchmark: one case measured end to end, the whole matrix on one model, and ``run_benchmark`` (what unet-bench calls)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import formats
from ..errors import UnetDeployError
from ..fileio import atomic_write_text
from .cases import DEVICES, EAGER, SEED, Case, bench_name, select_cases, skip_reason
from .cases import precisions as _precisions
from .machine import cuda_available, hardware_info, hardware_limit, matmul_rates, model_gflops, torch_module
from ..meta import check_tiling
from ..metrics import compare_masks
from .measure import (DEFAULT_BATCHES, BenchSettings, PeakRSS, measure, release_memory, size_mb,
                      throughput, tile_count)
from .report import summary, to_markdown, write_json
from .source import DEFAULT_SOURCE_SIZE, ModelSource, load_source, open_model

Log = Callable[[str], None]


def run_case(case: Case, source: ModelSource, image: np.ndarray, settings: BenchSettings,
             reference: np.ndarray | None = None, log: Log = lambda s: None,
             tiling: dict[str, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """Benchmark one case; returns its report row with the measurements and its first mask (``"mask"``).

    ``tiling`` (``{"scale", "overlap"}``) runs the case's inference through ``tiling.tiled_class_map``
    instead of the letterbox (``mode`` says which). ``ms_per_frame`` is the end-to-end p50,
    ``ms_per_megapixel`` that over the source frame's megapixels, ``tiles`` the network inputs per
    frame. ``pixel_agreement`` is the share of the mask's pixels equal to ``reference`` (None without one).
    """
    row = _head(case, tiling)
    start = time.perf_counter()
    deadline = start + settings.case_budget_s
    if settings.deadline is not None:
        deadline = min(deadline, settings.deadline)
    release_memory()
    torch = torch_module() if case.device == "cuda" else None
    if torch is not None:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        cuda_free0 = torch.cuda.mem_get_info()[0]
    with PeakRSS() as rss:
        source.artefact(case)  # export first: not part of the load time
        t0 = time.perf_counter()
        runner = source.runner(case, settings.threads, tiling)
        t1 = time.perf_counter()
        runner.prepare([image])
        t2 = time.perf_counter()
        runner([image])
        t3 = time.perf_counter()
        row["load_ms"], row["first_call_ms"] = (t1 - t0) * 1000, (t3 - t2) * 1000
        row["first_result_ms"] = row["load_ms"] + row["first_call_ms"]
        for _ in range(max(0, settings.warmup - 1)):
            runner([image])
        row["warmup_ms"] = (time.perf_counter() - t2) * 1000
        latency, masks = measure(runner, [image], settings.runs, deadline)
        row["runs"] = latency.pop("runs")
        row["latency_ms"] = latency
        e2e = latency["end_to_end"]["p50"]
        row["pre_post_share"] = (latency["preprocess"]["p50"] + latency["postprocess"]["p50"]) / e2e if e2e else None
        row["fps"] = 1000.0 / e2e if e2e else None
        row["tiles"] = tile_count(image.shape[:2], source.meta, tiling)
        row["ms_per_frame"] = e2e
        row["ms_per_megapixel"] = e2e / (image.shape[0] * image.shape[1] / 1e6)
        row["throughput"] = []
        for b in settings.batches:
            try:
                row["throughput"].append(throughput(runner, image, b, settings, row, deadline))
            except UnetDeployError as e:  # e.g. a model exported for one batch size only
                row["throughput"].append({"batch": b, "status": f"error: {e.message}"})
    row["memory_mb"] = {"rss_peak_delta": rss.delta_mb}
    if torch is not None:
        row["memory_mb"]["cuda_max_allocated"] = torch.cuda.max_memory_allocated() / 2**20
        row["memory_mb"]["cuda_used_delta"] = (cuda_free0 - torch.cuda.mem_get_info()[0]) / 2**20
    row["artefact"] = str(runner.artefact) if runner.artefact else None
    row["size_mb"] = size_mb(runner.artefact)
    row["pixel_agreement"] = _agreement(reference, masks[0])
    row["mask"] = masks[0]  # removed before the report is written
    row["status"] = "ok"
    row["seconds"] = time.perf_counter() - start
    log(f"  {case.name} {row['mode']}: e2e p50 {e2e:.1f} ms, first result {row['first_result_ms']:.0f} ms, {row['runs']} runs")
    return row


def benchmark(model: str | Path, cases: Sequence[Case] | None = None, settings: BenchSettings | None = None,
              image: np.ndarray | None = None, img_size: Sequence[int] | None = None, explicit_precision: bool = False,
              hw_limit: bool = False, log: Log = lambda s: None, image_desc: str | None = None,
              tiling: dict[str, float] | bool | None = None) -> dict[str, Any]:  # fmt: skip
    """Benchmark ``model`` (a checkpoint, or an exported model of any registered format) over ``cases``.

    A checkpoint is exported to each format a case needs, into a temporary folder. ``image``
    is the source image (default ``source_image()`` 1920x1080); ``img_size`` overrides a
    checkpoint's network input size. Returns the report dict that ``format_table``,
    ``to_markdown`` and the JSON file show: machine, model, settings, one row per case
    (skipped ones with their reason), and the speed-up of the best backend over the seed.
    ``tiling`` (``{"scale", "overlap"}``; None: the model's ``meta.tiling``; False: none) adds a
    tiled row after each case's letterbox row (the seed pipeline has none); tiled rows agree
    with the first fp32 tiled mask.
    """
    settings = settings or BenchSettings()
    cases = list(cases) if cases is not None else select_cases(devices=["cuda" if cuda_available() else "cpu"])
    if image is None:
        image, image_desc = load_source(None)
    image_desc = image_desc or f"{image.shape[1]}x{image.shape[0]} array"
    with tempfile.TemporaryDirectory(prefix="unet-bench-") as tmp:
        source = open_model(Path(model), img_size, Path(tmp))
        if source.checkpoint is None:  # an exported model: its own backend, and the seed row saying why not
            precision = str(source.meta.extra.get("precision", "fp32"))  # what the export wrote
            devices = list(dict.fromkeys(c.device for c in cases))
            own = bench_name(formats.get(source.format))
            cases = [Case(own, precision, d, source.format) for d in devices] + [c for c in cases if c.backend == SEED]
        tiling = None if tiling is False else check_tiling(source.meta.tiling if tiling is None else tiling, "tiling")
        report = _report_head(source, image, image_desc, settings)
        report["tiling"] = tiling
        if hw_limit and source.checkpoint is not None:
            devices = sorted({c.device for c in cases} & set(DEVICES) - ({"cuda"} if not cuda_available() else set()))
            report["hardware_limit"] = hardware_limit(report["model"]["gflops"], matmul_rates(devices or ["cpu"]))
        # The fp32 eager model is the accuracy reference: run it first, or once aside when not asked for.
        cases.sort(key=lambda c: (c.backend, c.precision) != (EAGER, "fp32"))
        reference, report["reference"] = None, "the first fp32 case"
        if source.checkpoint is not None and cases and (cases[0].backend, cases[0].precision) != (EAGER, "fp32"):
            reference = source.runner(Case(EAGER), settings.threads)([image])[1][0]
            report["reference"] = "eager fp32 cpu"
        rows, tiled_reference = [], None
        for i, case in enumerate(cases, 1):
            log(f"[{i}/{len(cases)}] {case.name}")
            row = _row(case, source, image, settings, explicit_precision, reference, log)
            mask = row.pop("mask", None)
            if reference is None and mask is not None and case.precision == "fp32":
                reference, report["reference"] = mask, case.name  # the first fp32 result is the reference
                row["pixel_agreement"] = _agreement(reference, mask)
            rows.append(row)
            if tiling is not None and case.backend != SEED:
                row = _row(case, source, image, settings, explicit_precision, tiled_reference, log, tiling)
                mask = row.pop("mask", None)
                if tiled_reference is None and mask is not None and case.precision == "fp32":
                    tiled_reference = mask
                    row["pixel_agreement"] = 1.0
                rows.append(row)
        report["export_ms"] = dict(source.export_ms)
    report["results"] = rows
    report["summary"] = summary(rows)
    return report


def _row(case: Case, source: ModelSource, image: np.ndarray, settings: BenchSettings, explicit_precision: bool,
         reference: np.ndarray | None, log: Log, tiling: dict[str, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """``run_case``, or the row saying why the case was skipped or failed."""
    reason = skip_reason(case, source, explicit_precision)
    if reason is None and settings.deadline is not None and time.perf_counter() > settings.deadline:
        reason = "time budget spent"
    head = _head(case, tiling)
    if reason is not None:
        log(f"  skipped: {reason}")
        return head | {"status": f"skipped: {reason}"}
    try:
        return run_case(case, source, image, settings, reference, log, tiling)
    except Exception as e:  # a backend that fails here is a finding, not the end of the run
        text = e.message if isinstance(e, UnetDeployError) else str(e)
        msg = " ".join(text.split())[:300] or type(e).__name__
        log(f"  error: {msg}")
        return head | {"status": f"error: {type(e).__name__}: {msg}"}


def _head(case: Case, tiling: dict[str, float] | None) -> dict[str, Any]:
    """The keys every row starts with: the case and its mode (``letterbox`` or ``tiled``)."""
    return {"backend": case.backend, "precision": case.precision, "device": case.device, "format": case.fmt,
            "mode": "letterbox" if tiling is None else "tiled"}  # fmt: skip


def _report_head(source: ModelSource, image: np.ndarray, image_desc: str, settings: BenchSettings) -> dict[str, Any]:
    meta = source.meta
    model: dict[str, Any] = {
        "path": str(source.path), "kind": "checkpoint" if source.checkpoint else source.backend,
        "classes": meta.classes, "input_size": list(meta.input_size), "base_channels": meta.arch["base_channels"],
        "upsample": meta.arch["upsample"],
    }  # fmt: skip
    torch = torch_module()
    if torch is not None:
        from ..checkpoint import build_model
        from ..model import count_parameters

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
    log: Log | None = None,
    tiling: dict[str, float] | bool | None = None,
) -> dict[str, Any]:
    """Benchmark ``model`` as ``unet-bench`` does and return the report (optionally written as JSON/Markdown).

    ``backends``/``precisions`` pick rows of ``cases()`` (None: all that apply; naming a
    precision runs it even where the hardware only emulates it); ``device`` is ``auto``
    (CUDA when there is one), ``cpu``, ``cuda`` or ``all``. ``image`` is a file or a BGR array
    used as the source image (a file is resized to ``source_size`` W, H); by default a synthetic
    ``source_size`` image. ``report["results"]`` holds one row per case; ``report["summary"]``
    the best backend per device and its speed-up over the seed pipeline. ``log`` gets progress lines.
    ``tiling`` (``{"scale", "overlap"}``, None: the model's own, False: letterbox only) adds tiled rows.
    """
    known = _precisions()
    bad = sorted(set(precisions or ()) - set(known))
    if bad:
        raise UnetDeployError(f"precision {','.join(bad)} is unknown; choose from {', '.join(known)}")
    if not batches or min(batches) < 1:
        raise UnetDeployError(f"batch sizes {list(batches)} must be whole numbers of at least 1, such as 1,4,16")
    if device not in ("auto", "all", *DEVICES):
        raise UnetDeployError(f"device {device!r} must be auto, cpu, cuda or all")
    if device == "cuda" and not cuda_available():
        raise UnetDeployError("device cuda: no CUDA device is visible to torch; use --device cpu")
    devices = list(DEVICES) if device == "all" else [device if device != "auto" else
                                                     "cuda" if cuda_available() else "cpu"]  # fmt: skip
    cases = select_cases(backends, precisions, devices)
    if not cases:
        raise UnetDeployError("no benchmark case matches these backend/precision/device choices")
    if isinstance(image, np.ndarray):
        src, desc = image, f"{image.shape[1]}x{image.shape[0]} array"
    else:
        src, desc = load_source(image, source_size)
    settings = BenchSettings(runs=runs, warmup=warmup, batches=tuple(batches), case_budget_s=budget_s, threads=threads)
    report = benchmark(model, cases, settings, src, img_size, explicit_precision=bool(precisions),
                       hw_limit=hw_limit, log=log or (lambda s: None), image_desc=desc, tiling=tiling)  # fmt: skip
    if json_path:
        write_json(report, json_path)
    if markdown_path:
        atomic_write_text(markdown_path, to_markdown(report))
    return report


def _agreement(reference: np.ndarray | None, mask: np.ndarray) -> float | None:
    """The share of ``mask``'s pixels equal to ``reference`` (``metrics.compare_masks``; None without a reference)."""
    return None if reference is None else compare_masks([reference], [mask]).agreement / 100.0
