"""Measuring one pipeline: the stage-timed ``Runner``, repeated runs, throughput, percentiles and peak memory.

Our pipeline is ``Segmenter`` itself (``Runner``): its own stages, timed the way it times them
for every ``Result``; its inference stage returns host memory, so CUDA work is finished inside it.
"""
from __future__ import annotations

import ctypes
import gc
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import UnetDeployError
from ..meta import ModelMeta
from ..tiling import scaled_size, tile_grid

if TYPE_CHECKING:  # pragma: no cover
    from ..runtime import Segmenter

STAGES = ("preprocess", "inference", "postprocess", "end_to_end")
DEFAULT_BATCHES = (1, 4, 16)
Stages = dict[str, float]


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
    threads: int | None = None


class Runner:
    """What users run, timed: ``Segmenter.predict_batch`` on the images, as one batch.

    ``runner(images) -> (stage ms, original-size masks)``: the stage times are the Segmenter's own
    (the sum of each ``Result.timings`` stage over the images), ``end_to_end`` the wall time of the
    call. Letterbox or tiles, host or device pipeline: whatever the Segmenter was made with.
    ``artefact`` is the file that was loaded (for its size in the report).
    """

    def __init__(self, seg: "Segmenter", artefact: Path | None = None) -> None:
        self.seg, self.meta, self.artefact = seg, seg.meta, artefact

    def prepare(self, images: Sequence[np.ndarray]) -> None:
        """Untimed set-up for these images (nothing for our pipeline)."""

    def __call__(self, images: Sequence[np.ndarray]) -> tuple[Stages, list[np.ndarray]]:
        t0 = time.perf_counter()
        results = self.seg.predict_batch(images, batch_size=max(1, len(images)))
        wall = (time.perf_counter() - t0) * 1000.0
        failed = next((r.error for r in results if r.error is not None), None)
        if failed:
            raise UnetDeployError(failed)
        stages = {k: float(sum(r.timings.get(k, 0.0) for r in results)) for k in STAGES[:3]}
        return {**stages, "end_to_end": wall}, [r.mask for r in results]


def tile_count(hw: Sequence[int], meta: ModelMeta, tiling: dict[str, float] | None) -> int:
    """Network inputs per ``hw`` frame: 1 for the letterbox, the grid's ``len(ys) * len(xs)`` when tiled."""
    if tiling is None:
        return 1
    ys, xs = tile_grid(scaled_size(hw, tiling["scale"]), meta.input_size, tiling["overlap"])
    return len(ys) * len(xs)


def stage_times(t0: float, t1: float, t2: float, t3: float) -> Stages:
    """Stage milliseconds from the four ``perf_counter`` marks around preprocess, inference and postprocess."""
    ms = 1000.0
    return {"preprocess": (t1 - t0) * ms, "inference": (t2 - t1) * ms, "postprocess": (t3 - t2) * ms,
            "end_to_end": (t3 - t0) * ms}  # fmt: skip


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean/min of ``samples_ms`` (linear interpolation between order statistics)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean()), "min": float(a.min())}


def measure(runner: Runner, images: list[np.ndarray], runs: int, deadline: float) -> tuple[dict, list]:
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


def throughput(runner: Runner, image: np.ndarray, batch: int, settings: BenchSettings, single: dict[str, Any],
               deadline: float) -> dict[str, Any]:  # fmt: skip
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
    latency, _ = measure(runner, images, runs, deadline)
    n = latency.pop("runs")
    p50 = latency["end_to_end"]["p50"]
    return {"batch": batch, "status": "ok", "runs": n, "images_per_s": 1000.0 * batch / p50,
            "ms_per_image": p50 / batch, "latency_ms": latency}  # fmt: skip


class PeakRSS:
    """Context manager for this process's peak resident memory; ``delta_mb`` = peak minus start.

    Exact where Linux lets the high-water mark be reset (``/proc/self/clear_refs`` 5, then
    ``VmHWM``: every page held at once counts, however briefly, native buffers included); a
    thread sampling the RSS every ``interval_s`` covers the rest.
    """

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s, self.start, self.peak, self.exact = interval_s, 0, 0, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> "PeakRSS":
        self.exact = _reset_peak_rss()
        self.start = self.peak = rss_bytes()
        if self.start:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.peak = max(self.peak, rss_bytes(), _status_bytes("VmHWM") if self.exact else 0)

    @property
    def delta_mb(self) -> float | None:
        return (self.peak - self.start) / 2**20 if self.start else None


def _reset_peak_rss() -> bool:
    """Set this process's ``VmHWM`` back to its current RSS (Linux >= 4.0); False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_bytes("VmHWM") > 0
    except OSError:
        return False


def _status_bytes(key: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` in bytes (0 if absent)."""
    try:
        with open("/proc/self/status") as f:
            line = next((x for x in f if x.startswith(key + ":")), "")
        return int(line.split()[1]) * 1024 if line else 0
    except (OSError, ValueError, IndexError):
        return 0


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so a case's RSS delta is its own."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def rss_bytes() -> int:
    """This process's resident set in bytes (0 where ``/proc`` is missing: memory is not reported)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def size_mb(path: Path | None) -> float | None:
    """Size of a model file in MiB (an OpenVINO ``.xml`` with its ``.bin`` weights)."""
    if path is None or not path.is_file():
        return None
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
    return sum(p.stat().st_size for p in files if p.is_file()) / 2**20
