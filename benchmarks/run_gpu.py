"""The GPU benchmark in one call: the seed-size UNet trained and run on CUDA, what users run, stage by stage.

Everything goes through the package's own code: ``unet_deploy.train.train`` (bf16 AMP) makes a
seed-size checkpoint on synthetic inspection frames, ``Segmenter`` runs it (the device
pipeline: letterbox to mask on the GPU, CUDA graphs), ``bench.seed`` is the tutorial's
pipeline on the same GPU. Recorded: per-stage p50/p90/p99 at batch 1 from a 1080p frame,
images/s at batch 1/16/64/256, peak GPU memory, the network alone under CUDA graphs with its
effective TFLOP/s against the bf16 matrix rate measured in the same run, fp16/bf16 agreement
with fp32, and training images/s. Each section is saved as soon as it ends (a killed run keeps
what it measured). Works from a bare checkout with torch, numpy, OpenCV, Pillow, tqdm only.

    bash benchmarks/run_gpu.sh                 # pytest -m cuda, then this; results into $OUT or results/
    python benchmarks/run_gpu.py --device cpu --quick --base-channels 8   # a dry run without a GPU
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_report import to_markdown  # noqa: E402

from unet_deploy import Segmenter  # noqa: E402
from unet_deploy.bench.machine import hardware_info, model_gflops  # noqa: E402
from unet_deploy.bench.measure import summarize  # noqa: E402
from unet_deploy.fileio import atomic_write_text  # noqa: E402

PRECISIONS = ("fp32", "bf16", "fp16", "tf32")  # fp32 first (the reference; TF32 off); tf32: torch's default for convs
BATCHES = (1, 16, 64, 256)
FRAME = (1920, 1080)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Run:
    """The report being filled, its deadline, and the device."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.torch, self.args, self.device = torch, args, args.device
        self.deadline = time.perf_counter() + args.budget
        self.report: dict[str, Any] = {"machine": hardware_info(), "command": " ".join(sys.argv), "budget_s": args.budget,
                                       "base_channels": args.base_channels, "quick": args.quick, "sections": {}}  # fmt: skip
        self.out = args.out

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def tf32(self, on: bool) -> None:
        """The benchmark owns its process: TF32 is set per case and recorded with it."""
        self.torch.backends.cudnn.allow_tf32 = on
        self.torch.backends.cuda.matmul.allow_tf32 = on

    def peak_reset(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.reset_peak_memory_stats()

    def peak_mb(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 2**20 if self.device == "cuda" else None

    def section(self, name: str, fn: Callable[[], Any], needs_s: float = 0.0) -> Any:
        """Run one section, store its result (or its error) and save the report at once."""
        if self.left() < needs_s:
            self.report["sections"][name] = {"skipped": f"time budget: {self.left():.0f} s left, needs ~{needs_s:.0f}"}
            log(f"{name}: skipped (time)")
            return None
        t0 = time.perf_counter()
        log(f"{name} ...")
        try:
            value = fn()
            self.report["sections"][name] = value
        except Exception as e:  # a broken section must not lose the others
            import traceback

            error = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
            partial = self.report["sections"].get(name)  # rows a section kept as it went stay
            self.report["sections"][name] = {**partial, **error} if isinstance(partial, dict) else error
            log(f"{name}: ERROR {type(e).__name__}: {e}")
            value = None
        log(f"{name}: {time.perf_counter() - t0:.1f} s")
        self.save()
        return value

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        stem = self.args.name
        atomic_write_text(self.out / f"{stem}.json", json.dumps(self.report, indent=1, default=str) + "\n")
        atomic_write_text(self.out / f"{stem}.md", to_markdown(self.report))


# -- sections ----------------------------------------------------------------------------------
def matmul_rates(run: Run) -> dict[str, float]:
    """TFLOP/s of a square matrix product (8192 on CUDA) in bf16, fp16, TF32 and fp32, random data."""
    torch = run.torch
    n = 8192 if run.device == "cuda" else 1024
    out = {}
    for name, dtype, tf32 in (("bf16", torch.bfloat16, False), ("fp16", torch.float16, False),
                              ("tf32", torch.float32, True), ("fp32", torch.float32, False)):  # fmt: skip
        if run.device == "cpu" and name in ("fp16", "tf32"):
            continue
        run.tf32(tf32)
        a = torch.randn(n, n, device=run.device, dtype=dtype)
        b = torch.randn(n, n, device=run.device, dtype=dtype)
        for _ in range(3):
            a @ b
        run.sync()
        reps = 10
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        run.sync()
        out[name] = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12
    run.tf32(True)
    return out


def train_model(run: Run, work: Path) -> dict[str, Any]:
    """Synthetic 16:9 inspection frames -> VOC -> ``unet_deploy.train.train`` at bf16 AMP; its images/s."""
    from unet_deploy.data.labelme import convert_folder
    from unet_deploy.data.synthetic import generate
    from unet_deploy.train import train

    count, epochs = (48, 2) if run.args.quick else (run.args.train_images, run.args.epochs)
    generate(work / "raw", count, size=(480, 270), seed=1)
    convert_folder(work / "raw", work / "voc")
    t0 = time.perf_counter()
    best = train(work / "voc", work / "run", epochs=epochs, base_channels=run.args.base_channels, batch_size=32,
                 device=run.device, amp=run.device == "cuda", amp_dtype="bf16", workers=min(8, os.cpu_count() or 1), progress=False,
                 deterministic=False, dropout=0.0)  # fmt: skip
    wall = time.perf_counter() - t0
    rows = [line.split(",") for line in (work / "run" / "metrics.csv").read_text().splitlines()]
    head, last = rows[0], dict(zip(rows[0], rows[-1]))
    seconds = sum(float(dict(zip(head, r))["seconds"]) for r in rows[1:])
    train_images = int(round(count * 0.8)) * epochs
    return {"checkpoint": str(best), "images": count, "epochs": epochs, "wall_s": wall, "epoch_seconds": seconds,
            "images_per_s_with_validation": train_images / seconds, "val_miou": float(last.get("miou", "nan"))}  # fmt: skip


def train_steps(run: Run) -> dict[str, Any]:
    """The training step alone: Adam, cross-entropy, bf16 autocast, batch 32 of 256x256, data already on the GPU."""
    torch = run.torch
    from unet_deploy.model import UNet

    model = UNet(4, base_channels=run.args.base_channels).to(run.device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    n = 32 if run.device == "cuda" else 2  # the CPU dry run only checks the code
    x = torch.rand(n, 3, 256, 256, device=run.device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (n, 256, 256), device=run.device)
    run.peak_reset()

    def step() -> None:
        with torch.autocast(run.device, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    run.sync()
    steps = 3 if run.args.quick else 20
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    run.sync()
    return {"batch": n, "steps": steps, "images_per_s": n * steps / (time.perf_counter() - t0), "peak_mb": run.peak_mb()}


def frames(count: int) -> list[np.ndarray]:
    from unet_deploy.data.synthetic import sample

    return [sample(100 + i, 0, FRAME).image for i in range(count)]


def segmenter(run: Run, ckpt: str, precision: str, pipeline: str = "device") -> Segmenter:
    run.tf32(precision == "tf32")
    return Segmenter(ckpt, device=run.device, precision=None if precision in ("fp32", "tf32") else precision,
                     pipeline=pipeline)  # fmt: skip


def latency(run: Run, seg: Segmenter, frame: np.ndarray, runs: int) -> dict[str, Any]:
    """Batch 1 from a 1080p frame in host memory to the Result: per-stage and end-to-end percentiles."""
    for _ in range(10):
        seg(frame)
    stages: dict[str, list[float]] = {"preprocess": [], "inference": [], "postprocess": [], "end_to_end": []}
    for _ in range(runs):
        t0 = time.perf_counter()
        res = seg(frame)
        stages["end_to_end"].append((time.perf_counter() - t0) * 1000.0)
        for k in ("preprocess", "inference", "postprocess"):
            stages[k].append(res.timings[k])
    return {k: summarize(v) for k, v in stages.items()}


def throughput(run: Run, seg: Segmenter, frame: np.ndarray, batches: Sequence[int]) -> dict[str, Any]:
    """Images/s of ``predict_batch`` at each batch size (1080p frames in, Results with regions out)."""
    out = {}
    for b in batches:
        if run.left() < 20:
            out[str(b)] = {"skipped": "time budget"}
            continue
        images = [frame] * b
        run.peak_reset()
        try:
            seg.predict_batch(images, batch_size=b)  # warm-up (captures this shape's graph)
            reps = max(2, min(10, 256 // b)) if not run.args.quick else 1
            t0 = time.perf_counter()
            for _ in range(reps):
                seg.predict_batch(images, batch_size=b)
            dt = time.perf_counter() - t0
        except Exception as e:  # one batch size failing keeps the others
            out[str(b)] = {"error": f"{type(e).__name__}: {e}"}
            continue
        out[str(b)] = {"images_per_s": b * reps / dt, "ms_per_batch": 1000 * dt / reps, "peak_mb": run.peak_mb()}
    return out


def inference(run: Run, ckpt: str) -> dict[str, Any]:
    """Per precision: agreement with fp32 on held-back frames, batch-1 latency, throughput."""
    test = frames(4 if run.args.quick else 16)
    runs = 20 if run.args.quick else 200
    out: dict[str, Any] = run.report["sections"].setdefault("inference", {})  # rows kept as they finish
    reference = None
    for precision in PRECISIONS:
        if run.device == "cpu" and precision in ("fp16", "tf32"):
            continue
        if run.left() < 30:
            out[precision] = {"skipped": "time budget"}
            continue
        seg = segmenter(run, ckpt, precision)
        masks = [r.mask for r in seg.predict_batch(test, batch_size=4)]
        reference = reference or masks
        agree = [float((a == b).mean()) for a, b in zip(masks, reference)]
        row = {"pipeline": seg.pipeline, "precision": seg.precision, "agreement_with_fp32": float(np.mean(agree)),
               "worst_image_agreement": float(min(agree)), "batch1_ms": latency(run, seg, test[0], runs)}  # fmt: skip
        out[precision] = row
        if run.left() > 60:
            row["throughput"] = throughput(run, seg, test[0], BATCHES if not run.args.quick else (1, 4))
        run.save()
        run.tf32(True)
    return out


def network_alone(run: Run, ckpt: str) -> dict[str, Any]:
    """The network under CUDA graphs (no pre/post): ms per batch, images/s and effective TFLOP/s."""
    torch = run.torch
    from unet_deploy.checkpoint import load_checkpoint
    from unet_deploy.formats._torch import reduced_precision

    model, meta = load_checkpoint(ckpt, run.device)
    shapes = {"rect 1080p (144x256)": (144, 256), "square (256x256)": (256, 256)}
    out: dict[str, Any] = {}
    for name, hw in shapes.items():
        gflop = model_gflops(meta, hw)
        for precision in PRECISIONS:
            if run.device == "cpu" and precision in ("fp16", "tf32"):
                continue
            run.tf32(precision == "tf32")
            net = reduced_precision(model, "fp32" if precision == "tf32" else precision)
            for b in BATCHES if not run.args.quick else (1, 4):
                if run.left() < 15:
                    break
                x = torch.zeros(b, 3, *hw, device=run.device)
                run.peak_reset()
                try:
                    replay = _graphed(run, net, x)
                except Exception as e:  # e.g. a tensor past 32-bit index math: the row says so
                    out[f"{name} {precision} b{b}"] = {"shape": name, "precision": precision, "batch": b,
                                                       "error": f"{type(e).__name__}: {e}"}  # fmt: skip
                    continue
                reps = max(3, min(200, 2000 // b)) if not run.args.quick else 2
                run.sync()
                t0 = time.perf_counter()
                for _ in range(reps):
                    replay()
                run.sync()
                ms = 1000 * (time.perf_counter() - t0) / reps
                ips = b * 1000 / ms
                out[f"{name} {precision} b{b}"] = {"shape": name, "precision": precision, "batch": b, "ms": ms,
                                                   "images_per_s": ips, "tflops": gflop * ips / 1000,
                                                   "gflop_per_image": gflop, "peak_mb": run.peak_mb()}  # fmt: skip
            run.tf32(True)
    return out


def _graphed(run: Run, net: Any, x: Any) -> Callable[[], Any]:
    """``net(x)`` as a replayable CUDA graph (on the CPU: a plain call)."""
    torch = run.torch
    with torch.inference_mode():
        if run.device != "cuda":
            return lambda: net(x)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                net(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            net(x)
    return graph.replay


def seed_pipeline(run: Run, ckpt: str) -> dict[str, Any]:
    """The tutorial's own prediction (``bench.seed``) on the same GPU and weights, batch 1, 1080p."""
    from unet_deploy.bench.seed import load_seed
    from unet_deploy.meta import ModelMeta

    run.tf32(True)
    meta = Segmenter(ckpt, device="cpu").meta
    meta = ModelMeta(**{**meta.to_dict(), "letterbox": {**meta.letterbox, "pad": "top-left"}})
    seed = load_seed(Path(ckpt), meta, run.device)
    frame = frames(1)[0]
    for _ in range(5):
        seed([frame])
    samples = []
    for _ in range(10 if run.args.quick else 100):
        t0 = time.perf_counter()
        seed([frame])
        samples.append((time.perf_counter() - t0) * 1000.0)
    return {"end_to_end": summarize(samples)}


def host_pipeline(run: Run, ckpt: str) -> dict[str, Any]:
    """Our host pipeline (numpy/Pillow letterbox, numpy argmax) around the same network on the GPU."""
    seg = segmenter(run, ckpt, "bf16" if run.device == "cuda" else "fp32", pipeline="host")
    return latency(run, seg, frames(1)[0], 20 if run.args.quick else 100)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=330.0, help="seconds for the whole benchmark")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="gpu-h200", help="file stem of the .md/.json")
    parser.add_argument("--device", default="cuda", help="cuda; cpu for a dry run")
    parser.add_argument("--quick", action="store_true", help="small everything: checks the script in ~2 minutes")
    parser.add_argument("--base-channels", type=int, default=64, help="64: the seed-size UNet")
    parser.add_argument("--train-images", type=int, default=640)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        log("no CUDA device: use --device cpu for a dry run")
        return 1
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN picks its fastest kernels (recorded)
    if args.work is None:
        import tempfile

        args.work = Path(tempfile.mkdtemp(prefix="unet-gpu-bench-"))
    run = Run(args)
    run.report["cudnn_benchmark"] = args.device == "cuda"
    run.section("matmul_tflops", lambda: matmul_rates(run))
    trained = run.section("training", lambda: train_model(run, args.work), needs_s=60)
    run.section("training_step", lambda: train_steps(run), needs_s=20)
    if not trained:
        log("no checkpoint: nothing to run")
        return 1
    ckpt = trained["checkpoint"]
    # the short comparisons first: on 2026-12-04 the long inference section left them no time
    run.section("seed_pipeline", lambda: seed_pipeline(run, ckpt), needs_s=15)
    run.section("host_pipeline", lambda: host_pipeline(run, ckpt), needs_s=15)
    run.section("inference", lambda: inference(run, ckpt), needs_s=60)
    run.section("network_alone", lambda: network_alone(run, ckpt), needs_s=30)
    log(f"wrote {args.out / args.name}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
