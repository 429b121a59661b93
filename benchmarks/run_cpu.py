"""The standard CPU benchmark: the seed-size UNet at 256 and 512 px and a base-16 UNet -> results/<machine>.md/.json.

Self-contained: it makes the checkpoints it needs (a trained one when ``--checkpoint`` is given
or one of the right width sits in ``benchmarks/`` or ``runs/*/best.pt``; else random weights with warmed BatchNorm, and the report says
so), exports them to every format, measures each backend against the seed's pipeline on a
1920x1080 source image, and records the machine, the hardware limit (model GFLOPs over the
measured matmul GFLOP/s, fp32 and bf16) and the acceptance check (pre+postprocess < 10% of the
end-to-end time of the seed-size model). It keeps to a total time budget (``--budget``, 600 s)
and prints progress. The matrix is data (``CPU_MATRIX``); ``run_gpu.py`` reuses this driver.

    python benchmarks/run_cpu.py                  # the recorded run (on a quiet machine, ~10 min)
    python benchmarks/run_cpu.py --quick --out /tmp/bench   # smoke run of the whole script, ~1 min
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from unet_deploy import bench  # noqa: E402
from unet_deploy.bench import Case  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PRE_POST_TARGET = 0.10  # acceptance: pre+postprocess under 10% of end to end (seed-size model, 1080p)


@dataclass
class Config:
    """One model of the matrix and how to measure it; ``share`` is its part of the total time budget."""

    name: str
    base_channels: int
    input_size: int
    cases: list[Case]
    batches: tuple[int, ...] = (1,)
    runs: int = 10
    warmup: int = 2
    share: float = 0.3
    classes: tuple[str, ...] = ("background", "scratch", "spot")
    acceptance: bool = False  # the seed-size model on which pre+post must stay under 10%
    notes: list[str] = field(default_factory=list)


def _cpu(*rows: tuple[str, str]) -> list[Case]:
    return [Case(backend, precision, "cpu") for backend, precision in rows]


_MAIN_CPU = _cpu(("eager", "fp32"), ("seed", "fp32"), ("eager", "bf16"), ("torchscript", "fp32"),
                 ("onnxruntime", "fp32"), ("openvino", "fp32"))  # fmt: skip
_ALL_CPU = _MAIN_CPU + _cpu(("aoti", "fp32"))

# The standard CPU matrix. The seed-size model at 512 px costs 4x the 256 px one per image, so
# it runs the baseline and the backends that matter most, at batch 1. AOTInductor compiles
# for minutes on 2 cores: it runs on the seed-size model at 256 px, last, so that an overrun
# costs the other rows nothing.
CPU_MATRIX: list[Config] = [
    Config("seed-size UNet, 256x256", 64, 256, _ALL_CPU, batches=(1, 4), runs=8, warmup=2, share=0.55, acceptance=True),
    Config("seed-size UNet, 512x512", 64, 512, _cpu(("eager", "fp32"), ("seed", "fp32"),
           ("onnxruntime", "fp32"), ("openvino", "fp32")), batches=(1,), runs=5, warmup=1,
           share=0.3),  # fmt: skip
    Config("base-16 UNet, 256x256", 16, 256, _MAIN_CPU, batches=(1, 4, 16), runs=20, warmup=3, share=0.15),
]

# --quick: the same script on a tiny model, to check it end to end in about a minute.
QUICK_MATRIX: list[Config] = [
    Config("tiny UNet (base 8), 64x64", 8, 64, _MAIN_CPU, batches=(1, 4), runs=3, warmup=1, share=1.0, acceptance=True),
]


def log(msg: str, t0: list[float] = [time.perf_counter()]) -> None:  # noqa: B006 - the start time, once
    print(f"[{time.perf_counter() - t0[0]:6.0f} s] {msg}", flush=True)


# ----------------------------------------------------------------------------- checkpoints
def find_trained(base_channels: int, given: Path | None) -> Path | None:
    """A trained checkpoint of this width: ``given``, else the newest in ``benchmarks/`` or ``runs/*/best.pt``."""
    from unet_deploy.checkpoint import read_checkpoint

    if given:
        candidates = [given]
    else:
        found = [*ROOT.joinpath("benchmarks").rglob("*.pt"), *ROOT.joinpath("runs").rglob("best.pt")]
        candidates = sorted(found, key=lambda p: -p.stat().st_mtime)
    for path in candidates:
        try:
            meta = read_checkpoint(path).get("meta") or {}
        except Exception:  # not ours, unreadable: not a candidate
            continue
        arch = meta.get("arch", {})
        if arch.get("base_channels") == base_channels:
            return path
    return None


def random_checkpoint(path: Path, base_channels: int, classes: Sequence[str], size: int) -> Path:
    """Random weights (seed 0) with BatchNorm statistics warmed on letterboxed synthetic images."""
    import numpy as np
    import torch

    from unet_deploy.checkpoint import save_checkpoint
    from unet_deploy.meta import ModelMeta
    from unet_deploy.model import UNet
    from unet_deploy.preprocess import preprocess_batch

    torch.manual_seed(0)
    meta = ModelMeta(classes=list(classes), input_size=(size, size), arch={"base_channels": base_channels})
    model = UNet(len(classes), base_channels=base_channels)
    images = [bench.source_image(640, 360, seed=s) for s in range(4)]
    x, _ = preprocess_batch(images, meta)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.from_numpy(np.ascontiguousarray(x)))
    return save_checkpoint(path, model.eval(), meta)


def checkpoint_for(config: Config, workdir: Path, given: Path | None) -> tuple[Path, str]:
    """The checkpoint to measure and a sentence saying what its weights are."""
    trained = find_trained(config.base_channels, given)
    if trained is not None:
        return trained, f"trained checkpoint `{trained.relative_to(ROOT) if trained.is_relative_to(ROOT) else trained}`"
    path = workdir / f"random-b{config.base_channels}-{config.input_size}.pt"
    random_checkpoint(path, config.base_channels, config.classes, config.input_size)
    return path, "random weights (seed 0) with BatchNorm warmed on synthetic images: no trained checkpoint was found"


# ----------------------------------------------------------------------------- the run
def machine_slug(info: dict[str, Any], gpu: bool = False) -> str:
    """A file name for this machine: ``cpu-amd-epyc-2c`` or ``gpu-nvidia-h100-80gb-hbm3``."""
    text = (info.get("gpu") or "gpu").split(" (")[0] if gpu else f"{info['cpu']} {info['cores']}c"
    slug = re.sub(r"\((r|tm)\)|cpu @.*|processor|\d+-core", " ", text.lower())
    return ("gpu-" if gpu else "cpu-") + "-".join(re.findall(r"[a-z0-9]+", slug))


def run_matrix(configs: Sequence[Config], budget_s: float, devices: Sequence[str], given: Path | None = None,
               source_size: tuple[int, int] = bench.DEFAULT_SOURCE_SIZE) -> dict[str, Any]:  # fmt: skip
    """Run every config within ``budget_s`` seconds; return ``{"machine", "matmul_gflops", "runs": [...]}``."""
    start = time.perf_counter()
    info = bench.hardware_info()
    log(f"machine: {info['cpu']}, {info['cores']} cores, flags {' '.join(info['cpu_flags'])}, GPU {info['gpu']}")
    rates = bench.matmul_rates(devices, log)
    image = bench.source_image(*source_size)
    runs = []
    with tempfile.TemporaryDirectory(prefix="unet-bench-matrix-") as tmp:
        for i, config in enumerate(configs):
            left = budget_s - (time.perf_counter() - start)
            share = sum(c.share for c in configs[i:])
            config_budget = left * config.share / share if share else left
            log(f"{config.name}: {len(config.cases)} cases, budget {config_budget:.0f} s")
            ckpt, weights = checkpoint_for(config, Path(tmp), given)
            # One case may take up to twice its even share, so that a slow one does not starve the rest.
            settings = bench.BenchSettings(runs=config.runs, warmup=config.warmup, batches=config.batches,
                                           case_budget_s=2 * config_budget / len(config.cases),
                                           deadline=time.perf_counter() + config_budget)  # fmt: skip
            report = bench.benchmark(ckpt, config.cases, settings, image, (config.input_size,) * 2,
                                     log=lambda s: log("  " + s.strip()))  # fmt: skip
            report["source"]["description"] = f"synthetic {source_size[0]}x{source_size[1]}"
            report["config"] = config.name
            report["weights"] = weights
            report["acceptance_config"] = config.acceptance
            if report["model"].get("gflops"):
                report["hardware_limit"] = bench.hardware_limit(report["model"]["gflops"], rates)
            runs.append(report)
            for line in bench.format_table(report).splitlines():
                print(line)
    log(f"done in {time.perf_counter() - start:.0f} s")
    return {"machine": info, "matmul_gflops": rates, "budget_s": budget_s,
            "seconds": time.perf_counter() - start, "runs": runs}  # fmt: skip


# ----------------------------------------------------------------------------- the record
def acceptance(matrix: dict[str, Any], device: str = "cpu") -> list[str]:
    """The acceptance lines: pre+postprocess share of the end-to-end time on the seed-size model."""
    out = []
    for report in matrix["runs"]:
        s = report.get("summary", {}).get(device)
        if not report.get("acceptance_config") or not s:
            continue
        share = s["best_pre_post_share"]
        verdict = "PASS" if share < PRE_POST_TARGET else "FAIL"
        out.append(f"- **{verdict}**: pre+postprocess of a {report['source']['size'][1]}x{report['source']['size'][0]} "
                   f"image = {100 * share:.1f}% of end to end ({s['best']}, {s['best_end_to_end_ms']:.0f} ms) on "
                   f"the {report['config']} (target < {100 * PRE_POST_TARGET:.0f}%).")  # fmt: skip
    return out


def to_markdown(matrix: dict[str, Any], title: str, command: str, devices: Sequence[str] = ("cpu",)) -> str:
    """The results page: machine, summary with the seed ratio, acceptance, hardware limit, then each config."""
    m = matrix["machine"]
    v = m.get("versions", {})
    lines = [f"# {title}", "",
             f"- Date: {m['date']}; command: `{command}` ({matrix['seconds']:.0f} s, budget {matrix['budget_s']:.0f} s)",
             f"- CPU: {m['cpu']}, {m['cores']} cores, {m.get('memory_gb')} GiB; SIMD flags: "
             f"{' '.join(m['cpu_flags']) or 'none'}; native bf16: {'yes' if m['native_bf16'] else 'no (emulated)'}; "
             f"torch CPU kernels: {m.get('torch_cpu_capability')}, {m.get('torch_threads')} threads",
             f"- GPU: {m['gpu'] or 'none'}",
             f"- Software: Python {m['python']}, " + ", ".join(f"{k} {val}" for k, val in v.items()),
             "", "## Summary", "",
             "| model | device | best backend | end to end ms | pre+post | seed pipeline ms | speed-up vs seed | "
             "limit fp32 ms | limit bf16 ms |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for report in matrix["runs"]:
        hw = report.get("hardware_limit", {})
        for device in devices:
            s = report.get("summary", {}).get(device)
            if not s:
                continue
            lim = [hw.get(f"{device}_{p}", {}).get("min_inference_ms") for p in ("fp32", "bf16")]
            lines.append(
                f"| {report['config']} | {device} | {s['best']} | {s['best_end_to_end_ms']:.1f} | "
                f"{100 * s['best_pre_post_share']:.1f}% | {s.get('seed_end_to_end_ms', float('nan')):.1f} | "
                f"**{s.get('speedup_vs_seed', float('nan')):.2f}x** | "
                + " | ".join(f"{x:.1f}" if x else "-" for x in lim) + " |"
            )
    acc = [line for device in devices for line in acceptance(matrix, device)]
    if acc:
        lines += ["", "## Acceptance", "", *acc]
    lines += ["", "## Hardware limit", "",
              "Model GFLOPs (FlopCounterMode, multiply-add = 2) over torch's measured matrix-product rate: "
              f"{bench.LIMIT_CAVEAT} (efficiency > 100%). Measured matmul GFLOP/s: "
              + "; ".join(f"{d} {p} {r:.3g}" for d, per in matrix["matmul_gflops"].items() for p, r in per.items())
              + ". `efficiency` = fp32 limit / measured inference of the fastest fp32 backend.", "",
              "| model | GFLOPs/image | device | limit fp32 ms | limit bf16 ms | fastest inference ms | efficiency |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for report in matrix["runs"]:
        hw = report.get("hardware_limit", {})
        for device in devices:
            ok = [r for r in report["results"] if r["device"] == device and r.get("status") == "ok"
                  and r["precision"] == "fp32" and r["backend"] != "seed"]  # fmt: skip
            if not ok or f"{device}_fp32" not in hw:
                continue
            best = min(ok, key=lambda r: r["latency_ms"]["inference"]["p50"])
            inf = best["latency_ms"]["inference"]["p50"]
            lim32, lim16 = (hw.get(f"{device}_{p}", {}).get("min_inference_ms") for p in ("fp32", "bf16"))
            lines.append(f"| {report['config']} | {hw['model_gflops']:.2f} | {device} | {lim32:.1f} | "
                         f"{lim16 or float('nan'):.1f} | {inf:.1f} ({best['backend']}) | {100 * lim32 / inf:.0f}% |")
    lines.append("")
    for report in matrix["runs"]:
        exports = ", ".join(f"{k} {v / 1000:.0f} s" for k, v in report.get("export_ms", {}).items())
        lines += [bench.to_markdown(report, title=report["config"], level=2).rstrip(), "",
                  f"Weights: {report['weights']}." + (f" Export times (not in the table): {exports}." if exports else ""),
                  ""]  # fmt: skip
    lines += ["## How to read", "",
              "Times are milliseconds, p50 over the timed runs unless named; `first ms` = load + first call; "
              "`img/s bN` = images per second at batch N (the seed pipeline predicts one image at a time); "
              "`peak MB` = resident-memory growth during the case (CUDA: max allocated); `agree` = share of the "
              "original-size pixels whose class equals the fp32 eager model's. Each run times the decoded "
              "image to the regions (letterbox, inference, argmax, mapping back, contours); decoding is not "
              "timed. See benchmarks/README.md.", ""]  # fmt: skip
    return "\n".join(lines)


def write(matrix: dict[str, Any], out_dir: Path, slug: str, title: str, command: str,
          devices: Sequence[str] = ("cpu",)) -> tuple[Path, Path]:  # fmt: skip
    """Write ``<slug>.md`` and ``<slug>.json`` into ``out_dir`` (atomically)."""
    from unet_deploy.fileio import atomic_write_text

    md = atomic_write_text(out_dir / f"{slug}.md", to_markdown(matrix, title, command, devices))
    js = atomic_write_text(out_dir / f"{slug}.json", json.dumps(matrix, indent=1, default=str) + "\n")
    return md, js


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600.0, help="total seconds (default 600)")
    parser.add_argument("--checkpoint", type=Path, help="trained seed-size checkpoint (default: found in benchmarks/, runs/)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    parser.add_argument("--name", help="file name stem (default: from the CPU model and cores)")
    parser.add_argument("--quick", action="store_true", help="a tiny model, to check the script in about a minute")
    args = parser.parse_args(argv)
    configs = QUICK_MATRIX if args.quick else CPU_MATRIX
    size = (640, 360) if args.quick else bench.DEFAULT_SOURCE_SIZE
    matrix = run_matrix(configs, args.budget, ["cpu"], args.checkpoint, size)
    slug = args.name or machine_slug(matrix["machine"]) + ("-quick" if args.quick else "")
    command = "python benchmarks/run_cpu.py" + (" " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else "")
    m = matrix["machine"]
    for path in write(matrix, args.out, slug, f"CPU benchmark: {m['cpu']}, {m['cores']} cores", command):
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
