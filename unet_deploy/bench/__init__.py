"""Latency benchmarks: per-stage timings of the whole pipeline per backend and precision, against the seed's.

One run measures, for each ``Case`` of the matrix (a registered format's backend at one of its
precisions on a device, see ``cases``) that applies to the model and machine: preprocess /
inference / postprocess / end-to-end latency percentiles on a real-size source image,
throughput at several batch sizes, first-call latency (load + first prediction), peak memory,
and pixel agreement with the fp32 eager model; with ``tiling`` (or a model whose metadata
tiles) each case also runs tiled (the Segmenter's own tiling), with its tile count and ms per
megapixel. The seed article's own way of predicting runs as one more case on the same weights
(``seed``), so the report states our best backend's speed-up over it. Every other case is
``Segmenter`` itself (``measure.Runner``): the benchmark times exactly what users run.

Modules: ``cases`` (the matrix, from ``unet_deploy.formats``), ``machine`` (the machine and the
matmul-rate reference), ``seed`` (the baseline), ``measure`` (runners, statistics, memory),
``source`` (the source image and the model under test), ``report`` (tables, JSON) and ``run``
(``run_benchmark``). The ``unet-bench`` command is ``unet_deploy.cli.bench``.
"""
from .cases import DEVICES, Case, backend_names, cases, precisions, select_cases
from .machine import LIMIT_CAVEAT, hardware_info, hardware_limit, matmul_gflops, matmul_rates, model_gflops
from .measure import DEFAULT_BATCHES, STAGES, BenchSettings, Runner, summarize, tile_count
from .report import format_table, summary, to_markdown, write_json
from .run import benchmark, run_benchmark, run_case
from .seed import SeedRunner, seed_predict
from .source import DEFAULT_SOURCE_SIZE, load_source, source_image

__all__ = [
    "DEFAULT_BATCHES", "DEFAULT_SOURCE_SIZE", "DEVICES", "LIMIT_CAVEAT", "STAGES", "BenchSettings", "Case", "Runner",
    "SeedRunner", "backend_names", "benchmark", "cases", "format_table", "hardware_info", "hardware_limit",
    "load_source", "matmul_gflops", "matmul_rates", "model_gflops", "precisions", "run_benchmark", "run_case",
    "seed_predict", "select_cases", "source_image", "summarize", "summary", "tile_count", "to_markdown", "write_json",
]  # fmt: skip
