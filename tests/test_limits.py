"""Memory and hangs (issue #30): video frames obey the pixel limit, declared sizes are bounded before
anything is allocated, tiling cannot explode, and a huge non-image is not read whole."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tests.test_runtime import red_image, red_model
from tests.test_wrong_answers import mjpeg_avi
from unet_deploy import Segmenter, UnetDeployError, fileio
from unet_deploy.cli.predict import command as predict_command
from unet_deploy.meta import MAX_MEMORY_ENV, ModelMeta, check_tiling

# ---------------------------------------------------------------------------- video frames


def test_the_pixel_limit_applies_to_a_video_s_frames(tmp_path, monkeypatch):
    seg = Segmenter(red_model(tmp_path / "red.onnx"))
    video = mjpeg_avi(tmp_path / "v.avi", [red_image((48, 64), (5, 20, 5, 30))] * 3)
    monkeypatch.setattr(fileio, "MAX_IMAGE_PIXELS", 64 * 48 - 1)
    with pytest.raises(UnetDeployError, match=r"v\.avi \(video frames\): image of 64x48 \(3,072 pixels\) exceeds"):
        seg.stream(video)
    res = CliRunner().invoke(predict_command, [str(tmp_path / "red.onnx"), str(video), "--out", str(tmp_path / "p")])
    assert res.exit_code == 1 and "exceeds the limit" in res.output and "UNET_DEPLOY_MAX_IMAGE_PIXELS" in res.output


def test_a_huge_frame_later_in_the_file_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    seg = Segmenter(red_model(tmp_path / "red.onnx"))
    frames = [red_image((32, 32), (5, 20, 5, 20))] * 2 + [red_image((480, 640), (5, 20, 5, 20))]
    video = mjpeg_avi(tmp_path / "bomb.avi", frames)
    monkeypatch.setattr(fileio, "MAX_IMAGE_PIXELS", 10_000)
    decoded = []
    with seg.stream(video) as stream:
        decoded = [r.size for r in stream]
    assert decoded == [(32, 32)] * 2 and stream.end.broken
    assert "bomb.avi frame 2: image of 640x480 (307,200 pixels) exceeds the limit of 10,000" in stream.end.message


# ---------------------------------------------------------------------------- declared sizes


def test_a_model_file_whose_input_size_cannot_fit_memory_is_refused_at_load(tmp_path, monkeypatch):
    """input_size 4096 of a base-64 model: 4096 * 4096 px * (3 + 2 + 6 * 64) floats * 4 B = 26 GB."""
    monkeypatch.setenv(MAX_MEMORY_ENV, "1024")
    with pytest.raises(UnetDeployError, match=r"big\.onnx: a 4096x4096 input .* needs about 24\.3 GB, over the 1\.0 GB "
                                              r"allowed; .*UNET_DEPLOY_MAX_MEMORY_MB"):
        Segmenter(red_model(tmp_path / "big.onnx", input_size=(4096, 4096)))
    assert Segmenter(red_model(tmp_path / "small.onnx", input_size=(256, 256))).max_batch == 2**30 // (256 * 256 * 389 * 4)


def test_batches_are_capped_by_memory_tiles_included(tmp_path, monkeypatch):
    """--batch-size 100000 with tiles once sent every tile in one call."""
    monkeypatch.setenv(MAX_MEMORY_ENV, "64")
    per_input = 64 * 64 * (3 + 2 + 6 * 64) * 4  # the default arch (base 64) of a file that does not say
    cap = 64 * 2**20 // per_input
    assert cap == 10
    seg = Segmenter(red_model(tmp_path / "red.onnx"), tiling={"scale": 1.0, "overlap": 0.25}, tile_batch=100_000)
    assert seg.tile_batch == cap
    calls: list[int] = []
    forward = seg._backend.forward
    seg._backend.forward = lambda x: calls.append(x.shape[0]) or forward(x)
    image = red_image((1080, 1920))
    seg(image)
    rows, cols = -(-(1080 - 64) // 48) + 1, -(-(1920 - 64) // 48) + 1  # stride 64 - 16: 23 x 40 tiles
    assert max(calls) == cap and sum(calls) == rows * cols == 920
    calls.clear()
    letterboxed = Segmenter(red_model(tmp_path / "red.onnx"))
    letterboxed._backend.forward = lambda x: calls.append(x.shape[0]) or forward(x)
    letterboxed.predict_batch([image] * 25, batch_size=100_000)
    assert calls == [10, 10, 5]


def test_export_refuses_a_size_that_cannot_fit_and_checks_parity_at_a_bounded_size(tmp_path, monkeypatch):
    import torch

    from unet_deploy.export import export_model, reference_logits

    net = torch.nn.Conv2d(3, 2, 1)
    meta = ModelMeta(classes=["background", "spot"], input_size=(2048, 2048), arch={"base_channels": 8})
    shapes = [x.shape for x, _ in reference_logits(net, meta, dynamic=True, device="cpu")]
    assert shapes == [(1, 3, 256, 256), (3, 3, 256, 256), (1, 3, 272, 288), (3, 3, 272, 288)]
    monkeypatch.setenv(MAX_MEMORY_ENV, "400")  # 2048 * 2048 * (3 + 2 + 48) * 4 B = 848 MiB per image
    with pytest.raises(UnetDeployError, match=r"the parity check: a 2048x2048 input .* needs about 0\.8 GB"):
        reference_logits(net, meta, dynamic=False, device="cpu")
    monkeypatch.setenv(MAX_MEMORY_ENV, "1000")  # one fits, three do not: batch 1 only
    assert [x.shape[0] for x, _ in reference_logits(net, meta, dynamic=False, device="cpu")] == [1]
    from unet_deploy.model import UNet

    monkeypatch.setenv(MAX_MEMORY_ENV, "64")
    with pytest.raises(UnetDeployError, match=r"2 inputs of 1024x1024 of this model \(base 8 channels\)"):
        export_model((UNet(2, base_channels=8), ModelMeta(classes=["background", "spot"], arch={"base_channels": 8})),
                     "onnx", out_dir=tmp_path / "out", img_size=1024, verbose=False)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- tiling


@pytest.mark.parametrize("overlap", [0.99, 0.999999, 0.95])
def test_an_overlap_that_would_make_millions_of_tiles_is_refused(tmp_path, overlap):
    with pytest.raises(UnetDeployError, match=r"tiling\.overlap .* is outside \[0, 0\.9\]"):
        check_tiling({"scale": 1.0, "overlap": overlap})
    model = red_model(tmp_path / "red.onnx")
    with pytest.raises(UnetDeployError, match="outside"):
        Segmenter(model, tiling={"scale": 1.0, "overlap": overlap})
    meta = ModelMeta(classes=["background", "red"], input_size=(64, 64)).to_dict()
    with pytest.raises(UnetDeployError, match="model.json: tiling.overlap"):
        ModelMeta.from_json(json.dumps({**meta, "tiling": {"scale": 1.0, "overlap": overlap}}), "model.json")
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), red_image((3, 517)))
    res = CliRunner().invoke(predict_command, [str(model), str(image), "--out", str(tmp_path / "p"),
                                               "--tile-scale", "1", "--overlap", str(overlap)])  # fmt: skip
    assert res.exit_code == 1 and "outside [0, 0.9]" in res.output and "Traceback" not in res.output


def test_tiling_up_scale_obeys_the_pixel_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "MAX_IMAGE_PIXELS", 200_000)
    seg = Segmenter(red_model(tmp_path / "red.onnx"), tiling={"scale": 4.0, "overlap": 0.25})
    result = seg.predict_batch([red_image((150, 200), (10, 20, 10, 30))])[0]  # 600x800 after scaling: 480,000 pixels
    assert not result.ok and "scaled by 4 for tiling: image of 800x600 (480,000 pixels) exceeds" in result.error


# ---------------------------------------------------------------------------- huge non-images


def test_a_huge_non_image_is_refused_from_its_header(tmp_path, monkeypatch):
    fake = tmp_path / "huge.png"
    with open(fake, "wb") as f:  # sparse: 100 MB of zeros that take no disk
        f.truncate(100 * 2**20)
    reads: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n=-1):
            data = self.f.read(n)
            reads.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr("builtins.open", lambda p, *a, **k: Spy(real_open(p, *a, **k)) if str(p) == str(fake)
                        else real_open(p, *a, **k))
    with pytest.raises(UnetDeployError, match=r"huge\.png: 100 MB whose header is no image"):
        fileio.read_image(fake)
    assert sum(reads) < 2**20  # the header only
    monkeypatch.undo()
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((4, 5, 3), np.uint8))
    with open(big, "ab") as f:  # a real PNG with 70 MB of trailing bytes: its header says 5x4
        f.truncate(70 * 2**20)
    assert fileio.read_image(big).shape == (4, 5, 3)
