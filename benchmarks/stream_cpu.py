"""Video stream on the CPU: the pipelined ``Segmenter.stream`` against the sequential read-then-segment loop.

Same model, same video, same process, rounds interleaved (sequential, pipelined, sequential, ...),
so the ratio of the medians compares the two under the same machine load. The sequential loop is
what a script writes without the stream API::

    while True:
        ok, frame = capture.read()
        if not ok: break
        seg(frame)

Each stage's share is its busy time over the wall time: in the sequential loop the shares add
up to about 100%; in the pipeline each stage has its own thread, so they add up to more when
the stages overlap. Writes ``benchmarks/results/stream_cpu.md`` (``--out``).

    python benchmarks/stream_cpu.py --model deploy/b64_int8.xml          # + a small ONNX model it builds
    python benchmarks/stream_cpu.py --quick                                # a minute, to check it works
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unet_deploy import Segmenter  # noqa: E402
from unet_deploy.stream import STAGES  # noqa: E402


def make_video(path: Path, frames: int, size: tuple[int, int], distinct: int = 12) -> Path:
    """An MJPG .avi of ``frames`` synthetic inspection frames (``distinct`` different ones, cycled)."""
    from unet_deploy.data.synthetic import sample

    images = [sample(11, i, size).image for i in range(min(distinct, frames))]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, size)
    for i in range(frames):
        writer.write(images[i % len(images)])
    writer.release()
    return path


def small_model(work: Path, base: int, size: int) -> Path:
    """A base-``base`` UNet (random weights, BatchNorm warmed on synthetic inputs) exported to ONNX."""
    import torch

    from unet_deploy.checkpoint import save_checkpoint
    from unet_deploy.data.synthetic import CLASSES
    from unet_deploy.export import export_model
    from unet_deploy.meta import ModelMeta
    from unet_deploy.model import UNet

    torch.manual_seed(0)
    model = UNet(len(CLASSES), base_channels=base)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, 3, 64, 64) * 2 + 0.2)
    model.eval()
    meta = ModelMeta(classes=list(CLASSES), input_size=(size, size), arch={"base_channels": base})
    ckpt = save_checkpoint(work / f"small_b{base}.pt", model, meta, epoch=0)
    return Path(export_model(ckpt, "onnx", out_dir=work, verbose=False)["onnx"])


def sequential(seg: Segmenter, video: Path) -> tuple[float, dict[str, float]]:
    """Frames/s and per-stage busy share of the plain loop: read a frame, then ``seg(frame)``."""
    capture = cv2.VideoCapture(str(video))
    busy = dict.fromkeys(STAGES, 0.0)
    n, t0 = 0, time.perf_counter()
    while True:
        t = time.perf_counter()
        ok, frame = capture.read()
        if not ok:
            break
        busy["decode"] += time.perf_counter() - t
        result = seg(frame)
        for stage in STAGES[1:]:
            busy[stage] += result.timings[stage] / 1000.0
        n += 1
    wall = time.perf_counter() - t0
    capture.release()
    return n / wall, {k: v / wall for k, v in busy.items()}


def pipelined(seg: Segmenter, video: Path) -> tuple[float, dict[str, float]]:
    """Frames/s and per-stage busy share of ``seg.stream(video)`` (each stage on its own thread)."""
    with seg.stream(video) as stream:
        n = sum(1 for _ in stream)
    assert not stream.end.broken, stream.end.message
    return n / stream.wall_seconds, {k: v / stream.wall_seconds for k, v in stream.stage_seconds.items()}


def wait_for_quiet(limit: float, seconds: float) -> float:
    """Wait (up to ``seconds``) for the 1-minute load average to fall below ``limit``; return it."""
    deadline = time.monotonic() + seconds
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        print(f"load {os.getloadavg()[0]:.2f} >= {limit}: waiting", file=sys.stderr, flush=True)
        time.sleep(15)
    return os.getloadavg()[0]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def measure(model: Path, video: Path, rounds: int) -> dict:
    """Warm up both modes once, then ``rounds`` interleaved rounds; medians and the ratio."""
    seg = Segmenter(model, device="cpu")
    sequential(seg, video), pipelined(seg, video)  # warm-up: compiled shapes, thread pools, caches
    seq, pipe = [], []
    load_before = os.getloadavg()
    for _ in range(rounds):
        seq.append(sequential(seg, video))
        pipe.append(pipelined(seg, video))
    seq_fps, pipe_fps = statistics.median(f for f, _ in seq), statistics.median(f for f, _ in pipe)
    share = lambda runs: {k: statistics.median(s[k] for _, s in runs) for k in STAGES}  # noqa: E731
    return {"model": model.name, "backend": seg.backend, "precision": seg.precision, "describe": seg.describe(),
            "seq": [round(f, 2) for f, _ in seq], "pipe": [round(f, 2) for f, _ in pipe],
            "seq_fps": seq_fps, "pipe_fps": pipe_fps, "ratio": pipe_fps / seq_fps,
            "seq_share": share(seq), "pipe_share": share(pipe), "load": (load_before, os.getloadavg())}  # fmt: skip


def markdown(rows: list[dict], args: argparse.Namespace, frames: int, info: dict, loads: list[str]) -> str:
    from unet_deploy import cpu

    pct = lambda shares: " / ".join(f"{100 * shares[k]:.0f}" for k in STAGES)  # noqa: E731
    lines = [
        "# Video stream on the CPU: pipelined `Segmenter.stream` vs the sequential loop",
        "",
        f"`python benchmarks/stream_cpu.py {_command_line()}` on {info['date']}.",
        "",
        f"- CPU: {cpu.features().summary()}",
        f"- libraries: {', '.join(f'{k} {v}' for k, v in info['versions'].items())}",
        f"- video: {frames} frames of {args.size[0]}x{args.size[1]} synthetic inspection images, MJPG `.avi`; "
        f"network input {args.img_size}x{args.img_size} (top-left letterbox)",
        f"- {args.rounds} interleaved rounds per model after one warm-up of each mode; frames/s are medians; "
        "the ratio is pipelined/sequential of those medians, from this one run",
        *[f"- `uptime` {when}: {text}" for when, text in loads],
        *[f"- {note}" for note in args.note],
        "",
        "| model | backend | precision | sequential frames/s | pipelined frames/s | ratio | CPU ceiling frames/s "
        "| sequential shares % (decode / preprocess / inference / postprocess) | pipelined shares % (same) "
        "| load 1-min before → after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['backend']} | {r['precision']} | {r['seq_fps']:.1f} "
                     f"({', '.join(map(str, r['seq']))}) | {r['pipe_fps']:.1f} ({', '.join(map(str, r['pipe']))}) | "
                     f"**{r['ratio']:.2f}x** | {ceiling(r, info['cores']):.1f} | {pct(r['seq_share'])} | {pct(r['pipe_share'])} | "
                     f"{r['load'][0][0]:.2f} → {r['load'][1][0]:.2f} |")  # fmt: skip
    lines += [
        "",
        "A share is the stage's busy time over the wall time of the whole video. Sequentially the stages take "
        "turns on one thread (the shares add up to about 100%, the rest is the loop itself); in the pipeline "
        "the reader, preprocess, inference and postprocess threads run at once, so their shares add up to more "
        "than 100% where they overlap, and the busiest stage (inference, near 100%) bounds the frame rate. "
        "The CPU ceiling is what the sequential loop's work allows when nothing waits: the cores over the "
        "core-time of one frame, counting the backend's inference on every core and each other stage on one "
        "(an estimate from the sequential shares). Inference takes longer per frame in the pipeline than alone "
        "because decode, letterbox and regions take cores from the backend's threads.",
        "",
        *[f"- `{r['model']}`: {r['describe']}" for r in rows],
        "",
    ]
    return "\n".join(lines)


def ceiling(row: dict, cores: int) -> float:
    """Frames/s if every core were busy: ``cores`` over one frame's core-time, from the sequential shares."""
    per_frame = 1.0 / row["seq_fps"]
    shares = row["seq_share"]
    core_time = per_frame * (shares["inference"] * cores + sum(shares[k] for k in STAGES if k != "inference"))
    return cores / core_time


def _command_line() -> str:
    """This script's arguments, the ``--note`` texts left out (they are listed on the page)."""
    args, out, skip = sys.argv[1:], [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        else:
            out.append(a)
    return " ".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], help="An exported model (repeatable): e.g. the "
                   "seed-size int8 OpenVINO IR. A small ONNX model is added unless --no-small.")  # fmt: skip
    p.add_argument("--no-small", action="store_true", help="Leave out the small ONNX model.")
    p.add_argument("--small-base", type=int, default=16, help="base_channels of the small model [16].")
    p.add_argument("--img-size", type=int, default=256, help="Network input of the small model [256].")
    p.add_argument("--size", type=int, nargs=2, default=(1280, 720), metavar=("W", "H"), help="Video frame size.")
    p.add_argument("--frames", type=int, default=120, help="Frames in the video [120].")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds per model [3].")
    p.add_argument("--max-load", type=float, default=1.3, help="Wait for the 1-minute load to drop below this.")
    p.add_argument("--wait", type=float, default=600, help="Longest wait for that, seconds [600].")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stream_cpu.md")
    p.add_argument("--note", action="append", default=[], help="A line for the page (e.g. how a model was exported).")
    p.add_argument("--quick", action="store_true", help="Tiny: 64x48 frames, 20 frames, base 8, 1 round.")
    args = p.parse_args()
    if args.quick:
        args.size, args.frames, args.small_base, args.img_size, args.rounds = (160, 96), 20, 8, 64, 1
    from unet_deploy.bench import hardware_info

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        video = make_video(work / "stream.avi", args.frames, tuple(args.size))
        models = [Path(m) for m in args.model]
        if not args.no_small:
            models.append(small_model(work, args.small_base, args.img_size))
        loads = [("before waiting", uptime())]
        wait_for_quiet(args.max_load, 0 if args.quick else args.wait)
        loads.append(("at the start", uptime()))
        rows = []
        for model in models:
            rows.append(measure(model, video, args.rounds))
            r = rows[-1]
            print(f"{r['model']}: sequential {r['seq_fps']:.1f} frames/s, pipelined {r['pipe_fps']:.1f}, "
                  f"ratio {r['ratio']:.2f}x", flush=True)  # fmt: skip
        loads.append(("at the end", uptime()))
    text = markdown(rows, args, args.frames, hardware_info(), loads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
