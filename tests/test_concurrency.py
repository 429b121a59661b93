"""One Segmenter called from 4 threads at once gives exactly the sequential masks, for each backend."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.models import color_image
from unet_deploy import Segmenter


@pytest.fixture(scope="module")
def color_models(color_checkpoint, exported_color, tmp_path_factory):
    from unet_deploy.export import export_model

    out = tmp_path_factory.mktemp("conc")
    paths = {"checkpoint": color_checkpoint, "onnxruntime": exported_color["onnx"]}
    made = export_model(color_checkpoint, "torchscript,openvino", out_dir=out, verbose=False)
    paths["torchscript"], paths["openvino"] = made["torchscript"], made["openvino"]
    return paths


@pytest.mark.parametrize("backend", ["checkpoint", "onnxruntime", "torchscript", "openvino"])
def test_four_threads_on_one_segmenter_match_sequential(backend, color_models):
    seg = Segmenter(color_models[backend], letterbox="rect")  # several network shapes at once
    images = [color_image(i, size) for i, size in enumerate([(160, 90), (120, 120), (90, 160), (200, 100)] * 4)]
    sequential = [seg(im).mask for im in images]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda im: seg(im).mask, images))
    assert seg.backend == backend
    assert all(np.array_equal(a, b) for a, b in zip(sequential, parallel))
