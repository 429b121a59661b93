"""Tracebacks that became one line (issue #30): camera indices and stream arguments, export targets
that cannot be written, a static network with the rect letterbox, model files at odds with themselves."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from tests.test_runtime import red_image, red_model
from unet_deploy import Segmenter, UnetDeployError
from unet_deploy.cli.predict import command as predict_command
from unet_deploy.meta import ModelMeta
from unet_deploy.stream_source import is_stream_source, parse_source

# ---------------------------------------------------------------------------- streams


@pytest.fixture(scope="module")
def red(tmp_path_factory) -> Path:
    return red_model(tmp_path_factory.mktemp("red") / "red.onnx")


@pytest.mark.parametrize("source", [-1, 100, 99999999999, True, "camera:99999999999", "camera:100", 10**40])
def test_impossible_camera_indices_are_one_line(red, source):
    """``stream(-1)`` once segfaulted inside OpenCV, ``camera:99999999999`` gave a traceback."""
    with pytest.raises(UnetDeployError, match="camera index .* is not 0..99|is not a video file, camera index"):
        Segmenter(red).stream(source)


@pytest.mark.parametrize("every", ["abc", None, 2.7, 0, -3, float("nan")])
def test_stream_arguments_are_checked_not_truncated(red, every, tmp_path):
    from tests.test_lost_work import _video

    video = _video(tmp_path / "v.avi")
    with pytest.raises(UnetDeployError, match="every"):
        Segmenter(red).stream(video, every=every)
    with pytest.raises(UnetDeployError, match="queue_size"):
        Segmenter(red).stream(video, queue_size=10**9)
    with Segmenter(red).stream(video, every=2.0) as frames:  # an integral float is the integer
        assert [r.frame for r in frames] == [0, 2, 4]


def test_a_folder_named_like_a_camera_is_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "2024").mkdir()
    cv2.imwrite(str(tmp_path / "2024" / "a.png"), red_image((3, 517)))
    assert not is_stream_source("2024") and parse_source("2024") == "2024"
    assert is_stream_source("25") and parse_source("25") == 25 and parse_source("camera:2") == 2
    with pytest.raises(UnetDeployError, match="camera index 2025 is not 0..99"):  # no such folder: a camera
        parse_source("2025")
    model = red_model(tmp_path / "red.onnx")
    res = CliRunner().invoke(predict_command, [str(model), "2024", "--out", "pred"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pred" / "masks" / "a.png").is_file()
    with pytest.raises(UnetDeployError, match="2024: a folder, not a video"):
        Segmenter(model).stream(tmp_path / "2024")


# ---------------------------------------------------------------------------- export targets


def _tiny():
    from unet_deploy.model import UNet

    meta = ModelMeta(classes=["background", "spot"], input_size=(32, 32), arch={"base_channels": 8})
    return UNet(2, base_channels=8).eval(), meta


@pytest.mark.parametrize("out, message", [
    ("/proc/unet-x", "cannot write there"),
    ("/dev/full/x", r"cannot write there \(Not a directory\)"),
])  # fmt: skip
def test_export_to_a_place_that_cannot_be_written_is_one_line(out, message):
    from unet_deploy.export import export_model

    with pytest.raises(UnetDeployError, match=message):
        export_model(_tiny(), "onnx", out_dir=out, verbose=False)


def test_export_with_a_folder_where_the_sidecar_goes_is_refused_before_exporting(tmp_path, monkeypatch):
    from unet_deploy import export
    from unet_deploy.formats import onnx as onnx_format

    calls = []
    monkeypatch.setattr(onnx_format, "export", lambda *a: calls.append(a))
    (tmp_path / "model.json").mkdir()
    with pytest.raises(UnetDeployError, match=r"model\.json: is a folder where a file is to be written"):
        export.export_model(_tiny(), "onnx", out_dir=tmp_path, verbose=False)
    assert calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]


def test_a_target_that_cannot_be_replaced_leaves_the_old_model_whole(tmp_path, monkeypatch):
    """An immutable model.onnx: the new sidecar once stayed beside the old model, after a traceback."""
    from unet_deploy import export

    export.export_model(_tiny(), "onnx", out_dir=tmp_path, verbose=False, check=False)
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(old) == ["model.json", "model.onnx"]
    model, meta = _tiny()
    real_replace = os.replace

    def immutable(src, dst):
        if Path(dst) == tmp_path / "model.onnx":
            raise PermissionError(1, "Operation not permitted")
        return real_replace(src, dst)

    monkeypatch.setattr(export.os, "replace", immutable)
    with pytest.raises(UnetDeployError, match=r"model\.onnx: cannot be replaced: Operation not permitted; nothing was"):
        export.export_model((model, ModelMeta(classes=["background", "dent"], input_size=(32, 32),
                                              arch={"base_channels": 8})), "onnx", out_dir=tmp_path, verbose=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old


# ---------------------------------------------------------------------------- static network, rect letterbox


def _static(path: Path, pad: str) -> Path:
    red_model(path, pad=pad)
    model = onnx.load(str(path))
    for value in (model.graph.input[0], model.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        dims[2].dim_value, dims[3].dim_value = 64, 64
    onnx.save(model, str(path))
    return path


def test_a_static_network_with_the_rect_letterbox_is_one_line_at_load(tmp_path):
    model = _static(tmp_path / "static.onnx", "rect")
    with pytest.raises(UnetDeployError, match=r"static\.onnx: the network's input is fixed at 64x64 but its letterbox "
                                              r"is rect.*--letterbox top-left"):
        Segmenter(model)
    seg = Segmenter(model, letterbox="top-left")
    assert seg(red_image((3, 517))).size == (3, 517)
    image = tmp_path / "wide.png"
    cv2.imwrite(str(image), red_image((3, 517)))
    res = CliRunner().invoke(predict_command, [str(model), str(image), "--out", str(tmp_path / "p")])
    assert res.exit_code == 1 and "letterbox is rect" in res.output and "Traceback" not in res.output


def test_static_export_does_not_write_rect(tmp_path):
    from unet_deploy.export import export_model

    model, meta = _tiny()
    with pytest.raises(UnetDeployError, match="--static fixes the input's H and W but the rect letterbox"):
        export_model((model, meta), "onnx", out_dir=tmp_path, dynamic=False, letterbox="rect", verbose=False)
    path = export_model((model, meta), "onnx", out_dir=tmp_path, dynamic=False, verbose=False)["onnx"]
    seg = Segmenter(path)
    assert seg.meta.pad == "top-left" and seg.predict_batch([red_image((3, 517))])[0].size == (3, 517)


def _reshaping(path: Path) -> Path:
    """A dynamic-input ONNX model that reshapes its logits to 64x64: any other input size fails inside
    onnxruntime at run time, as a file at odds with its metadata does."""
    from onnx import TensorProto, helper, numpy_helper

    conv = helper.make_node("Conv", ["images", "W"], ["c"], kernel_shape=[1, 1])
    shape = numpy_helper.from_array(np.array([-1, 2, 64, 64], np.int64), "S")
    reshape = helper.make_node("Reshape", ["c", "S"], ["logits"])
    graph = helper.make_graph(
        [conv, reshape], "fixed-inside",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2, 64, 64])],
        initializer=[numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "W"), shape],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    meta = ModelMeta(classes=["background", "red"], input_size=(64, 64), letterbox={"pad": "rect"})
    helper.set_model_props(model, {"unet_deploy": meta.to_json()})
    onnx.save(model, str(path))
    return path


def test_a_backend_that_fails_at_run_time_fails_those_images_and_report_json_is_written(tmp_path):
    model = _reshaping(tmp_path / "odd.onnx")
    square, wide = tmp_path / "square.png", tmp_path / "wide.png"
    cv2.imwrite(str(square), red_image((64, 64), (5, 20, 5, 30)))
    cv2.imwrite(str(wide), red_image((3, 517)))  # rect letterbox: a 32x64 input the graph cannot take
    results = Segmenter(model).predict_batch([square, wide], batch_size=2)
    assert results[0].ok and not results[1].ok
    assert "odd.onnx: onnxruntime cannot run a 1x3x32x64 input" in results[1].error  # 3x517 -> 32x64 (rect)
    res = CliRunner().invoke(predict_command, [str(model), str(square), str(wide), "--out", str(tmp_path / "p")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert [("error" in r) for r in report["images"]] == [False, True]


# ---------------------------------------------------------------------------- inconsistent model files


def test_gray_metadata_on_a_three_channel_network_is_one_line(tmp_path):
    path = red_model(tmp_path / "red.onnx", meta=False)
    ModelMeta(classes=["background", "red"], input_size=(64, 64), color="GRAY", mean=[0.0], std=[1.0],
              arch={"in_channels": 1}).save(tmp_path / "red.json")
    with pytest.raises(UnetDeployError, match=r"red\.onnx: the network takes 3 input channels but the metadata says "
                                              r"GRAY \(1\)"):
        Segmenter(path)


def test_an_openvino_bin_of_zeros_is_one_line(tmp_path):
    pytest.importorskip("openvino")
    from tests.test_wrong_answers import _ov_model
    from unet_deploy.formats.openvino import save

    xml = tmp_path / "m.xml"
    save(_ov_model(1.0), ModelMeta(classes=["background", "red"], input_size=(32, 32)), xml)
    bin_ = xml.with_suffix(".bin")
    bin_.write_bytes(bytes(bin_.stat().st_size))
    with pytest.raises(UnetDeployError, match=r"m\.bin is not the weights this \.xml was exported with"):
        Segmenter(xml)
    bin_.write_bytes(bytes(7))  # and of the wrong length
    with pytest.raises(UnetDeployError, match=r"m\.xml: "):
        Segmenter(xml)
