"""Triton serving on the CPU against in-process ``predict_batch`` on the same model: throughput, p50/p99, batches formed.

A small UNet (base 8, 128x128 input, random weights: speed does not depend on them) exported
to ONNX and to a Triton repository (``unet_deploy.serve.export_triton``: one CPU instance,
max batch 8, the default 2 ms queue delay). The same 320x240 synthetic PNGs go to
  * in-process: decode + ``Segmenter.predict_batch`` at batch 1 and batch 8 (one process, no network);
  * Triton over HTTP on 127.0.0.1 with 1, 4 and 16 concurrent clients, one image per request
    (``tritonclient.http``); the dynamic batcher groups them, and the batch sizes it formed are
    read from the server's statistics after each run.
Latency is per image (in-process batch 8: the batch's time, which every image in it waits).
Writes ``benchmarks/results/serve_cpu.md`` with the CPU, its ISA flags and the load average.

    nice python benchmarks/serve_cpu.py                 # the recorded run, ~2 min
    python benchmarks/serve_cpu.py --seconds 2 --out /tmp/serve.md   # smoke run
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from unet_deploy import cpu  # noqa: E402

CLIENTS = (1, 4, 16)
IMAGE_WH = (320, 240)
N_IMAGES = 32


def _model(tmp: Path) -> Path:
    import torch

    from unet_deploy.export import export_model
    from unet_deploy.meta import ModelMeta
    from unet_deploy.model import UNet

    torch.manual_seed(0)
    meta = ModelMeta(classes=["background", "scratch", "spot"], input_size=(128, 128), arch={"base_channels": 8})
    return export_model((UNet(3, base_channels=8).eval(), meta), "onnx", out_dir=tmp, verbose=False)["onnx"]


def _stats(p: list[float], n: int, seconds: float) -> dict:
    ms = np.array(p) * 1000
    return {"img/s": n / seconds, "p50 ms": float(np.percentile(ms, 50)), "p99 ms": float(np.percentile(ms, 99)), "images": n}


def in_process(onnx: Path, encoded: list[bytes], batch: int, seconds: float) -> dict:
    """Decode + predict_batch, ``batch`` images per call, for about ``seconds``."""
    from unet_deploy import Segmenter
    from unet_deploy.fileio import decode_image

    seg = Segmenter(onnx, device="cpu")
    seg.predict_batch([decode_image(b, "png") for b in encoded[:batch]], batch)  # warm-up
    lat, n, i, t0 = [], 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        chunk = [encoded[(i + k) % len(encoded)] for k in range(batch)]
        s = time.perf_counter()
        seg.predict_batch([decode_image(b, "png") for b in chunk], batch)
        lat += [time.perf_counter() - s] * batch
        n, i = n + batch, i + batch
    return _stats(lat, n, time.perf_counter() - t0)


def served(url: str, model: str, encoded: list[bytes], clients: int, seconds: float) -> dict:
    """``clients`` threads, each its own HTTP client, one image per request, for about ``seconds``."""
    import tritonclient.http as http

    before = _batches(url, model)
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def run(k: int) -> None:
        c = http.InferenceServerClient(url)
        mine, i = [], k
        while time.perf_counter() < stop:
            x = http.InferInput("image", [1, 1], "BYTES")
            x.set_data_from_numpy(np.array([[encoded[i % len(encoded)]]], dtype=object))
            s = time.perf_counter()
            c.infer(model, [x]).as_numpy("mask")
            mine.append(time.perf_counter() - s)
            i += clients
        c.close()
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = _stats(lat, len(lat), time.perf_counter() - t0)
    after = _batches(url, model)
    result["batches"] = {b: after[b] - before.get(b, 0) for b in sorted(after) if after[b] - before.get(b, 0)}
    return result


def _batches(url: str, model: str) -> dict[int, int]:
    import tritonclient.http as http

    c = http.InferenceServerClient(url)
    stats = c.get_inference_statistics(model)["model_stats"][0]["batch_stats"]
    c.close()
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="time per row")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_cpu.md")
    args = ap.parse_args()

    import cv2
    from tabulate import tabulate

    from unet_deploy.data.synthetic import sample
    from unet_deploy.serve import DEFAULT_QUEUE_DELAY_US, TritonServer, export_triton

    load_before = os.getloadavg()
    encoded = [cv2.imencode(".png", sample(7, i, IMAGE_WH).image)[1].tobytes() for i in range(N_IMAGES)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx = _model(Path(tmp))
        for batch in (1, 8):
            r = in_process(onnx, encoded, batch, args.seconds)
            rows.append([f"in-process predict_batch, batch {batch}", 1, *_cells(r), "-"])
            print(rows[-1], flush=True)
        repo = export_triton(onnx, Path(tmp) / "repo", name="unet", instances=1, max_batch=8)
        with TritonServer(repo.parent, http_port=0, grpc_port=0, metrics_port=0) as server:
            served(server.url, "unet", encoded, 4, 2.0)  # warm-up
            for clients in CLIENTS:
                r = served(server.url, "unet", encoded, clients, args.seconds)
                formed = ", ".join(f"{b}: {n}" for b, n in r["batches"].items())
                rows.append([f"Triton HTTP, 1 instance, max batch 8", clients, *_cells(r), formed])
                print(rows[-1], flush=True)
    load_after = os.getloadavg()
    table = tabulate(rows, ["path", "clients", "img/s", "p50 ms", "p99 ms", "images", "batches formed (size: count)"],
                     tablefmt="github", floatfmt=".1f")
    page = f"""# Serving on the CPU: Triton against in-process predict_batch

Written by `benchmarks/serve_cpu.py` (`nice`, {args.seconds:.0f} s per row) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.

- CPU: {cpu.features().summary()}
- Load average (1/5/15 min) before: {' / '.join(f'{x:.2f}' for x in load_before)}; after: {' / '.join(f'{x:.2f}' for x in load_after)}
  (a shared machine: other sessions ran beside this one, so the absolute numbers are noisy; the
  rows ran one after another in the same minutes).
- Model: UNet base 8, 3 classes, 128x128 input, ONNX Runtime on the CPU (default threads), the same
  `.onnx` in both paths. Images: {N_IMAGES} synthetic {IMAGE_WH[0]}x{IMAGE_WH[1]} PNGs, decoded in both paths.
- Server: `tritonserver` 2.51 from nvidia-pytriton 0.7.0, Python-backend model (`export_triton`,
  layout `python`), 1 CPU instance, max batch 8, dynamic batching with a {DEFAULT_QUEUE_DELAY_US} us
  queue delay; clients are `tritonclient.http` threads on 127.0.0.1, one image per request.

{table}

Latency is per image: for in-process batch 8 it is the time of the batch, which every image in it
waits. "batches formed" counts the model executions by the batch size Triton's dynamic batcher
gave them during that row (from the server's statistics).
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    print(page)


def _cells(r: dict) -> list:
    return [r["img/s"], r["p50 ms"], r["p99 ms"], r["images"]]


if __name__ == "__main__":
    main()
