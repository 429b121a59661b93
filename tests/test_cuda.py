"""The CUDA path on a real GPU (marker ``cuda``; skipped with the reason where torch sees no GPU).

Run on a GPU machine by ``bash benchmarks/run_gpu.sh`` (first thing it does). Imports only what
that machine has: torch, onnx, onnxruntime (CPU build), OpenCV, Pillow, numpy, click.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from unet_deploy import Segmenter
from unet_deploy.errors import UnetDeployError

from .models import color_image

pytestmark = pytest.mark.cuda

IMAGES = [color_image(i, size) for i, size in enumerate([(640, 360), (300, 200), (1920, 1080), (97, 131)])]


def _agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.mean(np.concatenate([(x == y).ravel() for x, y in zip(a, b)])))


@pytest.fixture(scope="module")
def cpu_masks(color_checkpoint) -> list[np.ndarray]:
    return [r.mask for r in Segmenter(color_checkpoint, device="cpu").predict_batch(IMAGES)]


@pytest.fixture(scope="module")
def cuda_exports(color_checkpoint, tmp_path_factory) -> dict:
    """TorchScript fp32/fp16 and AOTInductor fp32 exported on CUDA, parity-checked there (`unet-export --device cuda`)."""
    from click.testing import CliRunner

    from unet_deploy.cli.export import command

    out = tmp_path_factory.mktemp("cuda_exports")
    made = {}
    for fmt, precision in (("torchscript", "fp32"), ("torchscript", "fp16"), ("aoti", "fp32"), ("onnx", "fp32")):
        target = out / f"{fmt}_{precision}"
        result = CliRunner().invoke(command, [str(color_checkpoint), "--format", fmt, "--precision", precision,
                                              "--device", "cuda", "--out", str(target)])  # fmt: skip
        ok = result.exit_code == 0 and "Error" not in result.output and "Traceback" not in result.output
        made[(fmt, precision)] = next(p for p in target.iterdir() if p.suffix != ".json") if ok else result.output
    return made  # a failed export is its output: the test reports every format, not only the first failure


@pytest.mark.parametrize("precision", [None, "fp16", "bf16"])
@pytest.mark.parametrize("pipeline", ["device", "host"])
def test_checkpoint_on_cuda_matches_cpu_fp32(color_checkpoint, cpu_masks, precision, pipeline):
    seg = Segmenter(color_checkpoint, device="cuda", precision=precision, pipeline=pipeline)
    assert (seg.device, seg.pipeline) == ("cuda", pipeline)
    masks = [r.mask for r in seg.predict_batch(IMAGES, batch_size=3)]
    assert _agreement(masks, cpu_masks) >= (0.999 if precision is None else 0.99), (precision, pipeline)


def test_every_torch_export_on_cuda_matches_cpu_fp32(cuda_exports, cpu_masks):
    failed = {key: out[-800:] for key, out in cuda_exports.items() if isinstance(out, str)}
    for (fmt, precision), path in cuda_exports.items():
        if (fmt, precision) in failed:
            continue
        if fmt == "onnx":  # this machine's ONNX Runtime is the CPU build: the file is checked on the CPU
            seg = Segmenter(path, device="auto")
            assert seg.device == "cpu"
        else:
            seg = Segmenter(path, device="cuda")
            assert (seg.device, seg.precision) == ("cuda", precision), fmt
        masks = [r.mask for r in seg.predict_batch(IMAGES, batch_size=2)]
        assert _agreement(masks, cpu_masks) >= (0.999 if precision == "fp32" else 0.99), (fmt, precision)
        single = seg(IMAGES[2])
        assert np.array_equal(single.mask, masks[2]), fmt  # batch 1 (AOTI pads it) = the batched answer
    assert not failed, failed


def test_device_pipeline_on_cuda_gives_the_host_masks(color_checkpoint):
    """Same network on the GPU; the letterbox and mapping back on the device vs numpy/Pillow."""
    device = Segmenter(color_checkpoint, device="cuda", pipeline="device")
    host = Segmenter(color_checkpoint, device="cuda", pipeline="host")
    for _ in range(2):  # the second call replays the captured CUDA graphs
        got = [r.mask for r in device.predict_batch(IMAGES, batch_size=4)]
        want = [r.mask for r in host.predict_batch(IMAGES, batch_size=4)]
        assert _agreement(got, want) >= 0.999


def test_cuda_index_past_the_last_gpu_is_one_line(color_checkpoint):
    import torch

    n = torch.cuda.device_count()
    with pytest.raises(UnetDeployError, match=rf"cuda:{n} was asked for but this machine has {n} CUDA device"):
        Segmenter(color_checkpoint, device=f"cuda:{n}")
    assert Segmenter(color_checkpoint, device=f"cuda:{n - 1}").device == "cuda"


def test_stream_on_cuda(color_checkpoint, tmp_path):
    video = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 180))
    frames = [color_image(10 + i, (320, 180)) for i in range(6)]
    for f in frames:
        writer.write(f)
    writer.release()
    seg = Segmenter(color_checkpoint, device="cuda")
    with seg.stream(video) as stream:
        results = list(stream)
    assert [r.frame for r in results] == list(range(6)) and stream.end.broken is False
    decoded = []
    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    while ok:
        decoded.append(frame)
        ok, frame = cap.read()
    for res, frame in zip(results, decoded):  # the stream's answer is the single-image answer
        assert np.array_equal(res.mask, seg(frame).mask)


@pytest.mark.parametrize("amp_dtype", ["bf16", "fp16"])
def test_two_epochs_of_training_on_cuda_load_on_the_cpu(tmp_path, amp_dtype):
    from click.testing import CliRunner

    from unet_deploy.checkpoint import load_checkpoint
    from unet_deploy.cli.labelme import command as labelme
    from unet_deploy.cli.synth import command as synth
    from unet_deploy.cli.train import command as train

    runner = CliRunner()
    assert runner.invoke(synth, [str(tmp_path / "raw"), "--count", "12", "--size", "128", "96"]).exit_code == 0
    assert runner.invoke(labelme, [str(tmp_path / "raw"), str(tmp_path / "voc")]).exit_code == 0
    result = runner.invoke(train, [str(tmp_path / "voc"), "--out", str(tmp_path / "run"), "--epochs", "2",
                                   "--base-channels", "8", "--img-size", "64", "--device", "cuda", "--amp",
                                   "--amp-dtype", amp_dtype])  # fmt: skip
    assert result.exit_code == 0, result.output
    model, meta = load_checkpoint(tmp_path / "run" / "best.pt", "cpu")
    assert next(model.parameters()).device.type == "cpu"
    res = Segmenter(tmp_path / "run" / "best.pt", device="cpu")(IMAGES[1])
    assert res.mask.shape == IMAGES[1].shape[:2]
