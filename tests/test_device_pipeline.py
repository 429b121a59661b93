"""The device pipeline (``runtime.torch_pipeline``) on the CPU: the same pixels and masks as the host pipeline.

On CUDA the letterbox, normalisation, network, argmax and mapping back run on the GPU; here the
same torch code runs on the CPU so that CI checks its arithmetic against the numpy/Pillow path.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from unet_deploy import Segmenter
from unet_deploy.errors import UnetDeployError
from unet_deploy.meta import ModelMeta
from unet_deploy.preprocess import letterbox_geometry, preprocess

from .models import color_image


def _device_input(image: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """The device pipeline's float32 CHW network input for one image."""
    import torch

    from unet_deploy.runtime.torch_pipeline import TorchPipeline, _Shape

    pipe = TorchPipeline(lambda x: x, meta, "cpu")
    frame = image if image.ndim == 3 else image[:, :, None]
    key = (1, *frame.shape)
    shape = _Shape(torch, torch.device("cpu"), key, letterbox_geometry(frame.shape[:2], meta.input_size, meta.pad), meta, False)
    shape.dev_in.copy_(torch.from_numpy(np.ascontiguousarray(frame))[None])
    return pipe._network_input(shape)[0].numpy()


# Sizes that take each of Pillow's paths: its 2x2 box reduce (1080p, odd sizes), a 3x3 and 5x5
# reduce, enlarging, one side unchanged, tiny and extreme aspect ratios.
SIZES = [(1080, 1920), (1081, 1919), (2048, 2448), (3000, 4000), (480, 640), (100, 37), (255, 257),
         (77, 1000), (1000, 3), (256, 256)]  # fmt: skip


def test_device_letterbox_reproduces_pillow_bicubic():
    """Random pixels (the hardest case for rounding) through both letterboxes: the network inputs agree
    to the grey level almost everywhere; 1080p (Pillow's 2x2 reduce, then bicubic) is bit for bit."""
    rng = np.random.default_rng(0)
    worst, differing, total = 0.0, 0, 0
    for pad in ("rect", "top-left", "center"):
        meta = ModelMeta(classes=["bg", "a"], input_size=(256, 256), letterbox={"pad": pad, "fill": 114})
        for h, w in SIZES if pad == "rect" else SIZES[:1]:
            for shape in ((h, w, 3), (h, w), (h, w, 4)):
                image = rng.integers(0, 256, shape, dtype=np.uint8)
                host = preprocess(image, meta)[0]
                device = _device_input(image, meta)
                assert device.shape == host.shape, (pad, shape)
                levels = np.abs(device - host) * 255.0
                worst = max(worst, float(levels.max()))
                differing += int((levels > 0.01).sum())
                total += levels.size
                if (h, w) == (1080, 1920):
                    assert levels.max() < 1e-3, (pad, shape)  # the common camera frame: exact
    assert worst <= 1.0 + 1e-3  # never more than one grey level (Pillow's 3x3 reduce and 1-px outputs)
    assert differing / total < 1e-4


def test_device_normalisation_matches_the_host():
    """mean/std, BGR order and a 16:9 frame: float32 arithmetic in the same order gives the same input."""
    meta = ModelMeta(classes=["bg", "a"], input_size=(128, 128), color="BGR", mean=[0.4, 0.5, 0.6],
                     std=[0.2, 0.25, 0.3], letterbox={"pad": "center", "fill": 0})  # fmt: skip
    image = color_image(5, (640, 360))
    np.testing.assert_allclose(_device_input(image, meta), preprocess(image, meta)[0], rtol=0, atol=1e-6)


def test_device_pipeline_gives_the_host_masks_on_photos(color_checkpoint, labelme_dir):
    """The colour classifier (large classes on ordinary photos) on labelme's real photos and video
    frames, gray and BGRA copies too: masks and regions of the two pipelines agree."""
    files = sorted(labelme_dir.rglob("*.jpg"))[:8]
    images = [cv2.imread(str(f)) for f in files]
    images += [cv2.cvtColor(images[0], cv2.COLOR_BGR2GRAY), cv2.cvtColor(images[1], cv2.COLOR_BGR2BGRA)]
    for letterbox in ("rect", "top-left"):
        host = Segmenter(color_checkpoint, device="cpu", pipeline="host", letterbox=letterbox)
        device = Segmenter(color_checkpoint, device="cpu", pipeline="device", letterbox=letterbox)
        assert (host.pipeline, device.pipeline) == ("host", "device")
        same = total = 0
        for a, b in zip(host.predict_batch(images, batch_size=4), device.predict_batch(images, batch_size=4)):
            same += int((a.mask == b.mask).sum())
            total += a.mask.size
            assert a.mask.shape == b.mask.shape
            assert abs(len(a.regions) - len(b.regions)) <= max(1, len(a.regions) // 100)
        assert same / total >= 0.999, (letterbox, same / total)


def test_device_pipeline_batches_frames_of_several_sizes(color_checkpoint):
    """A batch of mixed sizes (one device call per frame shape) gives each image its own answer, in order;
    a bad image gets its error and the others go on."""
    images = [color_image(i, size) for i, size in enumerate([(300, 200), (640, 360), (300, 200), (90, 160)])]
    host = Segmenter(color_checkpoint, device="cpu", pipeline="host")
    device = Segmenter(color_checkpoint, device="cpu", pipeline="device")
    batch = images[:2] + [np.zeros((0, 5, 3), np.uint8)] + images[2:]
    results = device.predict_batch(batch, batch_size=5)
    assert results[2].error is not None and "empty" in results[2].error
    for want, got in zip(host.predict_batch(images), results[:2] + results[3:]):
        assert got.ok and np.array_equal(want.mask, got.mask)
        assert [r.to_dict() for r in want.regions] == [r.to_dict() for r in got.regions]
    assert set(results[0].timings) == {"preprocess", "inference", "postprocess"}


def test_sixteen_bit_frames_take_the_host_path_on_a_device_segmenter(color_checkpoint):
    image = (color_image(1, (200, 120)).astype(np.uint16) * 257)
    host = Segmenter(color_checkpoint, device="cpu", pipeline="host")
    device = Segmenter(color_checkpoint, device="cpu", pipeline="device")
    assert np.array_equal(host(image).mask, device(image).mask)


def test_pipeline_choice_is_checked(color_checkpoint, exported_color):
    assert Segmenter(color_checkpoint, device="cpu").pipeline == "host"  # auto: the device path is for CUDA
    assert Segmenter(color_checkpoint, device="cpu", tiling={"scale": 1.0, "overlap": 0.25}, pipeline="device").pipeline == "host"
    with pytest.raises(UnetDeployError, match="pipeline='device' needs a torch backend, not onnxruntime"):
        Segmenter(exported_color["onnx"], pipeline="device")
    with pytest.raises(UnetDeployError, match="pipeline 'gpu' is not one of auto, host, device"):
        Segmenter(color_checkpoint, pipeline="gpu")


def test_stages_are_the_pipeline(color_checkpoint):
    """``preprocess`` -> ``infer`` -> ``postprocess`` by hand is what ``seg(image)`` does."""
    from unet_deploy.runtime.result import Inferred

    seg = Segmenter(color_checkpoint, device="cpu")
    image = color_image(3, (320, 180))
    item = seg.preprocess(image)
    logits = seg.infer(item.x[None])[0]
    by_hand = seg.postprocess(item, Inferred(logits))
    whole = seg(image)
    assert np.array_equal(by_hand.mask, whole.mask)
    assert [r.to_dict() for r in by_hand.regions] == [r.to_dict() for r in whole.regions]
    assert dataclasses.asdict(item)["file"] == "<array>"
