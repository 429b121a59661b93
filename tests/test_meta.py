import json

import pytest

from unet_deploy.errors import UnetDeployError
from unet_deploy.meta import ModelMeta, check_size, sidecar_path


def test_design_example_round_trips():
    doc = {"format": "unet-deploy/1", "classes": ["background", "scratch", "spot"],
           "input_size": [256, 256], "letterbox": {"pad": "top-left", "fill": 0},
           "color": "RGB", "mean": [0, 0, 0], "std": [1, 1, 1], "scale": 255.0,
           "head": "softmax", "arch": {"base_channels": 64, "upsample": "transpose", "in_channels": 3}}
    meta = ModelMeta.from_json(json.dumps(doc))
    assert meta.num_classes == 3 and meta.input_size == (256, 256) and meta.pad == "top-left"
    again = json.loads(meta.to_json())
    assert again == {**doc, "mean": [0.0] * 3, "std": [1.0] * 3}
    assert ModelMeta.from_json(meta.to_json()) == meta


def test_save_and_load_sidecar(tmp_path):
    meta = ModelMeta(classes=["bg", "a"], input_size=(64, 128), extra={"note": "x"})
    meta.save(tmp_path / "m.json")
    assert ModelMeta.load(tmp_path / "m.json") == meta


@pytest.mark.parametrize("bad, match", [
    ({"format": "unet-deploy/9"}, "not supported"),
    ({"input_size": [250, 256]}, "multiple of 16"),
    ({"classes": []}, "non-empty"),
    ({"letterbox": {"pad": "left"}}, "pad"),
    ({"color": "HSV"}, "color"),
    ({"mean": [0, 0]}, "mean/std"),
    ({"bogus": 1}, "unknown metadata keys"),
])
def test_invalid_metadata_is_a_clear_error(bad, match):
    doc = {"classes": ["bg", "a"], **bad}
    with pytest.raises(UnetDeployError, match=match):
        ModelMeta.from_dict(doc, "model.json")


def test_class_count_disagreeing_with_weights():
    meta = ModelMeta(classes=["bg", "a", "b"])
    meta.check_num_outputs(3)
    with pytest.raises(UnetDeployError, match="4 output channels but the metadata lists 3"):
        meta.check_num_outputs(4)


def test_check_size_suggests_a_fix():
    assert check_size(256) == (256, 256)
    with pytest.raises(UnetDeployError, match="use e.g. 96x256"):
        check_size((100, 250))


def test_sidecar_path():
    assert sidecar_path("out/model.torchscript.pt").name == "model.json"
    assert sidecar_path("out/model.onnx").name == "model.json"


def test_runtime_modules_import_without_torch():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; "
            "import unet_deploy, unet_deploy.runtime, unet_deploy.preprocess, unet_deploy.meta, "
            "unet_deploy.postprocess")
    subprocess.run([sys.executable, "-c", code], check=True)
