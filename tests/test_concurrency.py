"""One Segmenter called from 4 threads at once gives exactly the sequential masks, for each backend."""
import importlib.util
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.conftest import per_format
from tests.models import color_image
from unet_deploy import Segmenter, formats

BACKENDS = per_format([f for f in formats.FORMATS.values() if f.backend_class is not None], lambda f: f.backend)


@pytest.fixture(scope="module")
def color_models(color_checkpoint, exported_color, tmp_path_factory):
    """``get(backend)``: the colour model as that backend's file, exported on first use."""
    from unet_deploy.export import export_model

    out = tmp_path_factory.mktemp("conc")
    made = {"onnx": exported_color["onnx"]}

    def get(backend: str):
        fmt = formats.get(backend)
        if fmt.exporter is None:
            return color_checkpoint
        missing = [m for m in fmt.requires if importlib.util.find_spec(m) is None]
        if missing:
            pytest.skip(f"{fmt.name} needs {', '.join(missing)}, which is not installed")
        if fmt.name not in made:
            made[fmt.name] = export_model(color_checkpoint, fmt.name, out_dir=out, verbose=False)[fmt.name]
        return made[fmt.name]

    return get


@pytest.mark.parametrize("backend", BACKENDS)
def test_four_threads_on_one_segmenter_match_sequential(backend, color_models):
    seg = Segmenter(color_models(backend), letterbox="rect", trust_code=True)  # several shapes at once; a .pt2 we made
    images = [color_image(i, size) for i, size in enumerate([(160, 90), (120, 120), (90, 160), (200, 100)] * 4)]
    sequential = [seg(im).mask for im in images]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda im: seg(im).mask, images))
    assert seg.backend == backend
    assert all(np.array_equal(a, b) for a, b in zip(sequential, parallel))
