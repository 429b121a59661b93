"""A 1x1-conv ONNX model built by hand that finds pure red, and images with red rectangles (the runtime tests').

Its class-1 logit is the red channel minus 0.5, so the expected mask of any image is known
without running a network.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from unet_deploy.meta import ModelMeta

# (H, W) -> red rectangle (y0, y1, x0, x1), end exclusive: odd sizes, extreme aspect ratios.
RECTS = {
    (1, 1): (0, 1, 0, 1),
    (3, 517): (1, 3, 100, 400),
    (1080, 1920): (200, 731, 333, 1500),
    (5000, 7): (1234, 3777, 2, 6),
}


def red_model(path, input_size=(64, 64), pad="top-left", head="softmax", meta=True, batch="N"):
    """A 1x1-conv ONNX model built by hand: the class-1 logit is the red channel minus 0.5.

    Softmax head: logits (0, R - 0.5); sigmoid head: the one logit R - 0.5. Input is RGB / 255.
    """
    k = 1 if head == "sigmoid" else 2
    weight = np.zeros((k, 3, 1, 1), np.float32)
    weight[k - 1, 0] = 1.0
    bias = np.zeros(k, np.float32)
    bias[k - 1] = -0.5
    node = helper.make_node("Conv", ["images", "W", "B"], ["logits"], kernel_shape=[1, 1])
    graph = helper.make_graph(
        [node], "red",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, k, "H", "W"])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    if meta:
        m = ModelMeta(classes=["background", "red"], input_size=input_size, letterbox={"pad": pad}, head=head)
        helper.set_model_props(model, {"unet_deploy": m.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def red_image(hw, rect=None):
    """Black BGR image of size ``hw`` with a pure red rectangle at RECTS[hw]."""
    y0, y1, x0, x1 = rect or RECTS[hw]
    img = np.zeros((*hw, 3), np.uint8)
    img[y0:y1, x0:x1, 2] = 255
    return img
