"""Send a folder of images to a Triton server running a unet-deploy model; write masks, overlays and report.json.

The output is what ``unet-predict`` writes (``OUT/masks/<stem>.png`` palette PNGs, pixel = class
id at the original size; ``OUT/overlays/<stem>.jpg``; ``OUT/report.json``), but the model runs in
the server: start one with ``unet-deploy serve model.onnx`` or on a Triton container. Needs
``tritonclient[http]`` (the [serve] extra) and the lean runtime for the file writing.

    unet-deploy serve best.onnx --port 8000 &
    python examples/triton_client.py parts/ --url 127.0.0.1:8000 --out served/ --concurrency 4

Each image is one request (Triton's dynamic batcher groups concurrent requests into batches);
``--concurrency`` requests are in flight at once. An image the server rejects is recorded in the
report with its error, as unet-predict does; the exit code is 1 when any image failed.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from unet_deploy import UnetDeployError
from unet_deploy.data.palette import save_palette_png
from unet_deploy.fileio import atomic_write_text, read_image, write_image
from unet_deploy.postprocess import Region, overlay
from unet_deploy.predict import collect_images, output_stems


def segment(client: http.InferenceServerClient, model: str, path: Path) -> tuple[np.ndarray | None, dict]:
    """One image file's bytes to the server -> (mask or None, its report.json entry)."""
    x = http.InferInput("image", [1, 1], "BYTES")
    x.set_data_from_numpy(np.array([[path.read_bytes()]], dtype=object))
    t0 = time.perf_counter()
    try:
        r = client.infer(model, [x])
    except InferenceServerException as e:
        return None, {"file": str(path), "error": f"{path}: {e.message()}"}
    record = json.loads(r.as_numpy("regions")[0, 0])
    record["file"] = str(path)
    record["timings"]["request"] = round((time.perf_counter() - t0) * 1000, 3)  # client round trip, ms
    return r.as_numpy("mask")[0], record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="+", help="image files, folders or quoted globs")
    ap.add_argument("--url", default="127.0.0.1:8000", help="the server's HTTP host:port")
    ap.add_argument("--model", default="unet", help="model name in the repository")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    ap.add_argument("--no-overlays", action="store_true", help="write masks and report.json only")
    args = ap.parse_args(argv)
    try:
        images = collect_images(args.sources)
    except UnetDeployError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    probe = http.InferenceServerClient(args.url)
    try:
        if not probe.is_model_ready(args.model):
            print(f"Error: {args.url}: model {args.model!r} is not ready; check --model and the server log", file=sys.stderr)
            return 1
    except Exception as e:  # noqa: BLE001  (connection refused and the like: one line)
        print(f"Error: {args.url}: no Triton server answers ({e}); start one with unet-deploy serve MODEL", file=sys.stderr)
        return 1
    with ThreadPoolExecutor(args.concurrency, initializer=_connect, initargs=(args.url,)) as pool:
        answers = pool.map(lambda p: segment(_local.client, args.model, p), images)
        records, failed = [], 0
        for stem, path, (mask, record) in zip(output_stems(images), images, answers):
            records.append(record)
            if mask is None:
                failed += 1
                print(f"error: {record['error']}", file=sys.stderr)
                continue
            save_palette_png(args.out / "masks" / f"{stem}.png", mask)
            if not args.no_overlays:
                regions = [Region(**{**r, "contour": np.array(r["contour"], np.int32).reshape(-1, 2)}) for r in record["regions"]]
                write_image(args.out / "overlays" / f"{stem}.jpg", overlay(read_image(path), mask, regions))
    report = {"model": f"triton://{args.url}/{args.model}", "backend": "triton", "device": "server", "images": records}
    atomic_write_text(args.out / "report.json", json.dumps(report) + "\n")
    print(f"{len(images) - failed}/{len(images)} images segmented by {args.url}; wrote {args.out}", file=sys.stderr)
    return 1 if failed else 0


_local = threading.local()  # one client per worker thread: a tritonclient.http client is not thread-safe


def _connect(url: str) -> None:
    _local.client = http.InferenceServerClient(url)


if __name__ == "__main__":
    sys.exit(main())
