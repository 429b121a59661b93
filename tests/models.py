"""A hand-built UNet that classifies each pixel by its colour, and its numpy reference.

The random ``tiny_checkpoint`` predicts background almost everywhere, so format or runtime
agreement checks on it are nearly vacuous. ``color_unet`` is a real ``unet_deploy.model.UNet``
whose weights make it a per-pixel colour classifier with four classes that each cover large
areas of ordinary images (``color_image`` makes one where each covers at least a tenth):

* centre-tap identity convs carry R, G, B (the model's input, ``pixel / 255``, RGB order)
  through ``c1`` and, via the last skip concatenation, through ``c9``; every BatchNorm is the
  identity in eval mode and LeakyReLU is the identity on these non-negative values;
* every deeper path (``d1`` .. ``c8``, ``u1`` .. ``u4``'s own convs) is zeroed, so it adds exactly 0;
* the head's centre tap computes ``(w_k . (R, G, B) + b_k) / 255`` per class with the integer
  ``WEIGHTS`` below, so the reference ``color_logits`` is exact integer arithmetic: two classes
  either tie exactly or differ by at least 1/255 of a logit, far above float32 error.

Only centre taps are used, so the model is exactly translation-equivariant: a tiled
prediction equals the per-pixel answer. In train mode (Dropout) it is not the classifier.
"""
from __future__ import annotations

import numpy as np
import torch

from unet_deploy.meta import ModelMeta
from unet_deploy.model import UNet

COLOR_CLASSES = ["background", "dark", "bright", "warm"]
#: per class: integer weights on (R, G, B) in 0..255 and an integer bias (logit = (w . rgb + b) / 255)
WEIGHTS = np.array(
    [
        [0, 0, 0, 0],  # background: everything mid-grey and not warm
        [-1, -1, -1, 330],  # dark: R + G + B < 330
        [1, 1, 1, -500],  # bright: R + G + B > 500
        [2, 0, -2, -60],  # warm: R - B > 30 (and more so than dark / bright)
    ],
    dtype=np.int64,
)


def color_logits(image_bgr: np.ndarray, num_classes: int = 4) -> np.ndarray:
    """Integer logits ``K x H x W`` (255 times the model's) of a BGR uint8 image."""
    bgr = image_bgr.astype(np.int64)
    rgb1 = np.stack([bgr[..., 2], bgr[..., 1], bgr[..., 0], np.ones_like(bgr[..., 0])])
    return np.einsum("kc,chw->khw", WEIGHTS[:num_classes], rgb1)


def color_classes(image_bgr: np.ndarray, num_classes: int = 4) -> np.ndarray:
    """The class map ``H x W`` uint8 that ``color_unet(num_classes)`` predicts (ties: lowest id)."""
    return color_logits(image_bgr, num_classes).argmax(0).astype(np.uint8)


def color_unet(num_classes: int = 4, base_channels: int = 8, upsample: str = "transpose") -> UNet:
    """A ``UNet(num_classes, base_channels=...)`` in eval mode computing ``color_logits / 255``."""
    if not 2 <= num_classes <= len(WEIGHTS):
        raise ValueError(f"num_classes must be 2..{len(WEIGHTS)}, not {num_classes}")
    model = UNet(num_classes, base_channels=base_channels, upsample=upsample)
    b = base_channels
    with torch.no_grad():
        for t in model.state_dict().values():
            t.zero_()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # identity: (x - 0) / sqrt((1 - eps) + eps) * 1 + 0
                m.weight.fill_(1.0)
                m.running_var.fill_(1.0 - m.eps)
        for i in range(3):
            model.c1.layer[0].weight[i, i, 1, 1] = 1.0  # input RGB -> channels 0..2
            model.c1.layer[4].weight[i, i, 1, 1] = 1.0
            model.c9.layer[0].weight[i, b + i, 1, 1] = 1.0  # the skip r1 sits after u4's b channels
            model.c9.layer[4].weight[i, i, 1, 1] = 1.0
        w = torch.from_numpy(WEIGHTS[:num_classes].astype(np.float32))
        model.out.weight[:, :3, 1, 1] = w[:, :3]
        model.out.bias[:] = w[:, 3] / 255.0
    return model.eval()


def color_meta(num_classes: int = 4, input_size: tuple[int, int] = (64, 64), base_channels: int = 8) -> ModelMeta:
    """The ``ModelMeta`` for ``color_unet``: RGB, ``pixel / 255``, no mean or std."""
    return ModelMeta(classes=COLOR_CLASSES[:num_classes], input_size=input_size,
                     arch={"base_channels": base_channels})


def color_image(seed: int, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """A BGR uint8 image ``size = (W, H)`` of smooth colour patches plus noise, all four classes large."""
    w, h = size
    rng = np.random.default_rng(seed)
    # one patch colour per class (BGR): mid-grey, dark, bright, warm; jittered, in a 4x4 grid
    centres = np.array([[120, 125, 130], [60, 70, 75], [200, 210, 215], [70, 120, 190]], dtype=np.float64)
    grid = np.repeat(np.arange(4), 4)
    rng.shuffle(grid)
    cells = centres[grid].reshape(4, 4, 3) + rng.normal(0, 8, (4, 4, 3))
    ys = np.minimum(np.arange(h) * 4 // h, 3)
    xs = np.minimum(np.arange(w) * 4 // w, 3)
    image = cells[ys][:, xs] + rng.normal(0, 12, (h, w, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def redness_onnx(path, gain: float = 40.0, input_size: tuple[int, int] = (32, 32)):
    """A hand-built two-class ONNX model (one 1x1 convolution, no torch): per pixel the logit of
    class 1 ("red") minus that of class 0 is ``gain * (R - G)`` of the model input (RGB, ``pixel / 255``).

    So a pixel with R == G has probabilities (0.5, 0.5), and ``redness_uncertainty`` gives every
    image's uncertainty by hand. ModelMeta travels in ``metadata_props`` as exports write it.
    """
    import onnx
    from onnx import TensorProto, helper

    weight = np.zeros((2, 3, 1, 1), np.float32)
    weight[1, 0], weight[1, 1] = gain, -gain  # class 0's logit is 0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["logits"])], "redness",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2, "H", "W"])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.ravel().tolist())],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = ModelMeta(classes=["background", "red"], input_size=input_size, arch={"base_channels": 8})
    model.metadata_props.add(key="unet_deploy", value=meta.to_json())
    onnx.save(model, str(path))
    return path


def redness_uncertainty(image_bgr: np.ndarray, gain: float = 40.0) -> float:
    """The mean normalised (base-2) entropy of ``redness_onnx``'s pixels, by hand, for an image of the
    network's size or of one colour (the letterbox then changes no pixel's value)."""
    rgb = image_bgr[..., ::-1].astype(np.float64) / 255.0
    p = 1.0 / (1.0 + np.exp(-gain * (rgb[..., 0] - rgb[..., 1])))
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return float(np.nan_to_num(h).mean())
