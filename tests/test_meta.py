import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_deploy.errors import UnetDeployError
from unet_deploy.formats import sidecar_path
from unet_deploy.meta import ModelMeta, check_size


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
    ({"input_size": [64.7, 64.2]}, r"input size 64\.7 is not an integer; use e.g. 65"),
    ({"input_size": [65536, 65536]}, "exceeds 8192"),
    ({"input_size": [64, 64, 64]}, "not two integers"),
    ({"input_size": "64"}, "'64' is not an integer"),
    ({"classes": []}, "0 names, need 1 to 255"),
    ({"classes": "abc"}, "classes 'abc' is not a list"),
    ({"classes": 3}, "classes 3 is not a list"),
    ({"classes": ["bg", None]}, r"classes\[1\] None is not a string"),
    ({"classes": ["bg", "sc\nratch"]}, r"classes\[1\] 'sc\\nratch' must be non-empty, printable"),
    ({"classes": ["bg", " x "]}, "without newlines or edge spaces"),
    ({"classes": ["bg", ""]}, "must be non-empty"),
    ({"classes": ["bg", "x", "x"]}, r"classes\[2\] 'x' appears twice"),
    ({"classes": [f"c{i}" for i in range(256)]}, "256 names, need 1 to 255"),
    ({"letterbox": {"pad": "left"}}, "letterbox.pad 'left' must be one of"),
    ({"letterbox": ["top-left", 0]}, "letterbox .* is not a JSON object"),
    ({"letterbox": {"pad": "center", "fill": "x"}}, "letterbox.fill 'x' is not a number"),
    ({"letterbox": {"pad": "center", "fil": 0}}, "letterbox has unknown keys"),
    ({"color": "HSV"}, "color 'HSV' must be one of"),
    ({"color": "GRAY"}, "color GRAY does not fit arch.in_channels=3"),
    ({"mean": [0, 0]}, "mean has 2 values, the model has 3 input channels"),
    ({"mean": [float("nan"), 0, 0]}, r"mean\[0\] nan is not a finite number"),
    ({"std": [1, 0, 1]}, r"std\[1\] 0.0 is outside"),
    ({"scale": 1e-320}, "scale 1e-320 is outside"),
    ({"scale": "255"}, "scale '255' is not a number"),
    ({"scale": True}, "scale True is not a number"),
    ({"head": "sigmoid", "classes": ["bg", "a", "b"]}, "sigmoid needs exactly 2 classes"),
    ({"arch": "unet"}, "arch 'unet' is not a JSON object"),
    ({"arch": {"base_channels": "x"}}, "arch.base_channels 'x' is not an integer"),
    ({"arch": {"base_channels": 10**6}}, r"arch.base_channels 1000000 is outside \[1, 512\]"),
    ({"arch": {"in_channels": 2}}, "in_channels 2 must be 1"),
    ({"tiling": {"scale": 0}}, r"tiling.scale \(1.0 = native pixels\) 0.0 is outside"),
    ({"tiling": {"scale": 1.0, "overlap": 1.0}}, r"tiling.overlap \(a fraction of a tile\) 1.0 is outside \[0, 0.9\]"),
    ({"tiling": {"scale": 5}}, "is outside"),
    ({"tiling": [1.0, 0.25]}, "tiling .* is not a JSON object"),
    ({"extra": []}, "extra .* is not a JSON object"),
    ({"extra": {"agreement": float("nan")}}, "extra is not plain JSON"),
    ({"bogus": 1}, "unknown metadata keys"),
])
def test_invalid_metadata_is_a_clear_error(bad, match):
    doc = {"classes": ["bg", "a"], **bad}
    with pytest.raises(UnetDeployError, match=match) as info:
        ModelMeta.from_dict(doc, "model.json")
    assert info.value.message.startswith("model.json: ") and "\n" not in info.value.message


def test_tiling_is_optional_and_round_trips():
    old = ModelMeta(classes=["bg", "a"])
    assert old.tiling is None and "tiling" not in old.to_dict()  # old readers see what they always saw
    tiled = ModelMeta(classes=["bg", "a"], tiling={"scale": 0.5})
    assert tiled.tiling == {"scale": 0.5, "overlap": 0.25}
    assert ModelMeta.from_json(tiled.to_json()) == tiled
    assert ModelMeta.from_dict({"classes": ["bg", "a"], "tiling": None}).tiling is None
    gray = ModelMeta(classes=["bg", "a"], color="GRAY", mean=[0], std=[1], arch={"in_channels": 1},
                     letterbox={"pad": "rect", "fill": 114})
    assert ModelMeta.from_json(gray.to_json()) == gray and gray.pad == "rect"


_junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)
_VALID = ModelMeta(classes=["bg", "scratch", "spot"], input_size=(64, 96), tiling={"scale": 1.0}).to_dict()


@st.composite
def _documents(draw):
    """A valid ModelMeta document with up to 3 fields (or sub-fields) replaced by junk, or pure junk."""
    if draw(st.integers(0, 9)) == 0:
        return draw(_junk)
    doc = json.loads(json.dumps(_VALID))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(doc) + ["bogus"]))
        value = doc.get(key)
        if isinstance(value, dict) and value and draw(st.booleans()):
            value[draw(st.sampled_from(sorted(value)))] = draw(_junk | st.sampled_from([1e300, 2**70, -1]))
        elif isinstance(value, list) and value and draw(st.booleans()):
            value[draw(st.integers(0, len(value) - 1))] = draw(_junk)
        else:
            doc[key] = draw(_junk | st.sampled_from([float("nan"), 1e-320, 65536, [65536, 65536], "abc"]))
    return doc


@settings(max_examples=300, deadline=None)  # no wall-time bound: a busy machine is not a bug
@given(_documents())
def test_any_document_is_valid_or_one_clear_line(doc):
    text = json.dumps(doc)  # allow_nan: NaN and Infinity reach the parser as Python's json writes them
    try:
        meta = ModelMeta.from_json(text, "m.json")
    except UnetDeployError as e:
        assert e.message.startswith("m.json: ") and "\n" not in e.message and len(e.message) < 300
        return
    assert ModelMeta.from_json(meta.to_json()) == meta  # what loads also saves and loads again
    assert 1 <= meta.num_classes <= 255 and all(32 <= v <= 8192 and v % 16 == 0 for v in meta.input_size)


def test_huge_python_values_are_one_line():
    """What JSON cannot carry but Python callers can: ints beyond str()'s 4300 digits."""
    for bad in ({"scale": 10**5000}, {"input_size": 10**5000}, {"arch": {"base_channels": 10**5000}},
                {"classes": ["bg", 10**5000]}):
        with pytest.raises(UnetDeployError) as info:
            ModelMeta(**{"classes": ["bg", "a"], **bad})
        assert len(info.value.message) < 200


def test_deeply_nested_json_is_one_line():
    with pytest.raises(UnetDeployError, match="nested too deeply|not valid JSON"):
        ModelMeta.from_json("[" * 100_000 + "]" * 100_000, "m.json")


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
