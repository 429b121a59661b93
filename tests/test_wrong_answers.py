"""No wrong answer at exit 0 (issue #30): NaN/inf models, flat calibration sets, unusable ports,
mixed multi-file artefacts and videos whose frame size changes."""
from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from tests.test_runtime import red_image, red_model
from unet_deploy import Segmenter, UnetDeployError
from unet_deploy.cli.predict import command as predict_command
from unet_deploy.meta import ModelMeta

# ---------------------------------------------------------------------------- NaN / inf


def _tiny(poison: str | None = None):
    import torch

    from tests.conftest import warm_batchnorm
    from unet_deploy.model import UNet

    torch.manual_seed(0)
    model = UNet(2, base_channels=8)
    warm_batchnorm(model)
    meta = ModelMeta(classes=["background", "spot"], input_size=(32, 32), arch={"base_channels": 8})
    with torch.no_grad():
        if poison == "weight":
            next(model.parameters()).view(-1)[3] = float("nan")
        elif poison == "bn":
            bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var[0] = float("inf")
    return model, meta


@pytest.mark.parametrize("poison, what", [("weight", "weight"), ("bn", "BatchNorm statistic")])
def test_nan_or_inf_weights_are_refused_at_export_and_nothing_is_written(tmp_path, poison, what):
    from unet_deploy.export import export_model

    with pytest.raises(UnetDeployError, match=f"model.onnx: {what} '.+' holds 1 NaN/inf value"):
        export_model(_tiny(poison), "onnx", out_dir=tmp_path, verbose=False)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_parity_fails_on_nan_logits():
    from unet_deploy.parity import parity

    x = np.zeros((1, 3, 32, 32), np.float32)
    ref = np.zeros((1, 2, 32, 32), np.float32)
    ok, line = parity([(x, ref)], lambda _: np.full_like(ref, np.nan), "fp32")
    assert not ok and "NaN/inf" in line  # max(0, nan) is 0: NaN once slipped through as "parity ok"


def _poisoned_red(path: Path) -> Path:
    red_model(path)
    model = onnx.load(str(path))
    w = next(i for i in model.graph.initializer if i.name == "W")
    array = numpy_helper.to_array(w).copy()
    array[1, 0] = np.nan
    w.CopyFrom(numpy_helper.from_array(array, "W"))
    onnx.save(model, str(path))
    return path


def test_nan_logits_are_reported_at_inference_not_answered(tmp_path):
    model = _poisoned_red(tmp_path / "nan.onnx")
    seg = Segmenter(model)
    results = seg.predict_batch([red_image((3, 517)), red_image((1, 1))], batch_size=2)
    assert all(not r.ok and "NaN/inf logit" in r.error and "nan.onnx" in r.error for r in results)
    with pytest.raises(UnetDeployError, match="NaN/inf logit"):
        seg(red_image((3, 517)))
    tiled = Segmenter(model, tiling={"scale": 1.0, "overlap": 0.25})
    assert "NaN/inf logit" in tiled.predict_batch([red_image((3, 517))])[0].error
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), red_image((3, 517)))
    res = CliRunner().invoke(predict_command, [str(model), str(image), "--out", str(tmp_path / "pred")])
    assert res.exit_code == 1, res.output
    report = json.loads((tmp_path / "pred" / "report.json").read_text())
    assert "NaN/inf logit" in report["images"][0]["error"]


# ---------------------------------------------------------------------------- flat calibration / validation


def _folder(path: Path, images: list[np.ndarray]) -> list[Path]:
    path.mkdir(parents=True, exist_ok=True)
    files = []
    for i, image in enumerate(images):
        files.append(path / f"{i:02d}.png")
        cv2.imwrite(str(files[-1]), image)
    return files


FLAT = {
    "black": lambda i: np.zeros((40, 50, 3), np.uint8),
    "one colour": lambda i: np.full((40, 50, 3), (10 * i, 200, 30), np.uint8),
    "noise of 3 levels": lambda i: np.random.default_rng(i).integers(100, 103, (40, 50, 3)).astype(np.uint8),
    "16-bit gray": lambda i: np.full((40, 50), 1000 * i, np.uint16),
}


@pytest.mark.parametrize("kind", sorted(FLAT))
def test_a_flat_calibration_or_validation_set_is_refused(tmp_path, kind):
    from unet_deploy import accuracy
    from unet_deploy.formats.quantize import calibration_inputs

    files = _folder(tmp_path / "flat", [FLAT[kind](i) for i in range(6)])
    meta = ModelMeta(classes=["background", "spot"], input_size=(32, 32),
                     **({"color": "GRAY", "mean": [0.0], "std": [1.0], "arch": {"in_channels": 1}}
                        if kind == "16-bit gray" else {}))  # fmt: skip
    with pytest.raises(UnetDeployError, match=r"flat: 6 of 6 calibration images are flat"):
        calibration_inputs(files, meta)
    with pytest.raises(UnetDeployError, match=r"flat: 6 of 6 validation images are flat"):
        accuracy.load_samples(files)


def test_real_images_pass_and_a_few_flat_ones_are_allowed(tmp_path):
    from unet_deploy import accuracy

    from tests.test_runtime import photos

    files = _folder(tmp_path / "mixed", photos(4) + [np.zeros((40, 50, 3), np.uint8)] * 3)
    assert len(accuracy.load_samples(files)) == 7  # 3 of 7 flat: not most of them


def test_the_gate_says_how_much_non_background_it_measured():
    """Foreground share from a reference that calls the left 10 of 40 columns class 1: 25%."""
    from unet_deploy import accuracy

    meta = ModelMeta(classes=["background", "spot"], input_size=(32, 32))

    def reference(x):
        logits = np.zeros((x.shape[0], 2, *x.shape[2:]), np.float32)
        logits[:, 1, :, : x.shape[3] // 4] = 1.0
        return logits

    samples = [accuracy.Sample(f"{i}.png", np.full((32, 32, 3), 60 + i, np.uint8)) for i in range(2)]
    result = accuracy.evaluate(reference, reference, samples, meta, precision="int8", source="val")
    assert result.foreground == pytest.approx(25.0)
    assert "fp32 finds non-background in 25.00% of the pixels" in result.line()


# ---------------------------------------------------------------------------- ports


@pytest.mark.parametrize("ports, message", [
    ({"http": 99999, "grpc": 0, "metrics": 0}, "--http-port 99999 is not a TCP port"),
    ({"http": -1, "grpc": 0, "metrics": 0}, "--http-port -1 is not a TCP port"),
    ({"http": 9000, "grpc": 9000, "metrics": 0}, "port 9000 is given for http and grpc"),
])  # fmt: skip
def test_impossible_ports_are_one_line(ports, message):
    from unet_deploy.serve.server import check_address

    with pytest.raises(UnetDeployError, match=message):
        check_address("127.0.0.1", ports)


def test_a_port_in_use_and_a_host_that_is_no_address_are_one_line():
    from unet_deploy.serve.server import check_address

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(UnetDeployError, match=f"127.0.0.1:{port} \\(grpc\\) cannot be bound: in use"):
            check_address("127.0.0.1", {"http": 0, "grpc": port, "metrics": 0})
    check_address("127.0.0.1", {"http": 0, "grpc": port, "metrics": 0})  # released: fine
    with pytest.raises(UnetDeployError, match="--host 'not-an-address' is not an address"):
        check_address("not-an-address", {"http": 0})


@pytest.mark.parametrize("args", [["--port", "99999"], ["--host", "not-an-address"], ["--metrics-port", "70000"]])
def test_serve_refuses_bad_addresses_before_anything_runs(tmp_path, args):
    from unet_deploy.cli.serve import command as serve_command

    model = red_model(tmp_path / "red.onnx")
    res = CliRunner().invoke(serve_command, [str(model), *args])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1, res.output


# ---------------------------------------------------------------------------- OpenVINO .xml + .bin


def _ov_model(weight: float):
    ov = pytest.importorskip("openvino")
    import openvino.opset13 as ops

    images = ops.parameter([-1, 3, -1, -1], np.float32, name="images")
    w = np.zeros((2, 3, 1, 1), np.float32)
    w[1, 0] = weight
    conv = ops.convolution(images, ops.constant(w), [1, 1], [0, 0], [0, 0], [1, 1])
    conv.output(0).get_tensor().set_names({"logits"})
    return ov.Model([conv], [images], "red")


def test_an_xml_with_the_bin_of_another_export_is_refused(tmp_path):
    """The kill between moving the new .bin and the new .xml: old .xml + new .bin once ran as a model
    nobody trained. The .xml now carries the digest of its .bin."""
    from unet_deploy.formats.openvino import save

    meta = ModelMeta(classes=["background", "red"], input_size=(32, 32))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save(_ov_model(1.0), meta, tmp_path / "a" / "m.xml")
    save(_ov_model(-3.0), meta, tmp_path / "b" / "m.xml")
    x = np.random.default_rng(0).random((1, 3, 32, 32), np.float32)
    for folder, weight in (("a", 1.0), ("b", -3.0)):  # each loads whole: logit 1 = weight * channel 0
        logits = Segmenter(tmp_path / folder / "m.xml").infer(x)
        np.testing.assert_allclose(logits[0, 1], weight * x[0, 0], rtol=1e-6)
    (tmp_path / "a" / "m.bin").write_bytes((tmp_path / "b" / "m.bin").read_bytes())
    with pytest.raises(UnetDeployError, match=r"m\.xml: m\.bin is not the weights this \.xml was exported with"):
        Segmenter(tmp_path / "a" / "m.xml")


# ---------------------------------------------------------------------------- video frame size


def _chunk(tag: bytes, data: bytes) -> bytes:
    return tag + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")


def _list(kind: bytes, body: bytes) -> bytes:
    return b"LIST" + struct.pack("<I", len(body) + 4) + kind + body


def mjpeg_avi(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """An MJPEG AVI written by hand, so that frames may differ in size (cv2.VideoWriter refuses that)."""
    jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]
    h, w = frames[0].shape[:2] if frames else (48, 64)
    n = len(frames)
    avih = struct.pack("<14I", 1_000_000 // fps, 0, 0, 0x10, n, 0, 1, 0, w, h, 0, 0, 0, 0)
    strh = struct.pack("<4s4sIHHIIIIIIIIhhhh", b"vids", b"MJPG", 0, 0, 0, 0, 1, fps, 0, n, 0, 0xFFFFFFFF, 0, 0, 0, w, h)
    strf = struct.pack("<IiiHH4sIiiII", 40, w, h, 1, 24, b"MJPG", w * h * 3, 0, 0, 0, 0)
    header = _list(b"hdrl", _chunk(b"avih", avih) + _list(b"strl", _chunk(b"strh", strh) + _chunk(b"strf", strf)))
    movi, index, offset = b"", b"", 4
    for jpeg in jpegs:
        piece = _chunk(b"00dc", jpeg)
        index += struct.pack("<4sIII", b"00dc", 0x10, offset, len(jpeg))
        movi += piece
        offset += len(piece)
    body = b"AVI " + header + _list(b"movi", movi) + _chunk(b"idx1", index)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def test_a_video_whose_frame_size_changes_is_stopped_there_and_said(tmp_path):
    small = [red_image((48, 64), (10, 20, 10, 30)) for _ in range(3)]
    large = [red_image((72, 96), (10, 60, 10, 90)) for _ in range(2)]
    video = mjpeg_avi(tmp_path / "change.avi", small + large)
    seg = Segmenter(red_model(tmp_path / "red.onnx"))
    with seg.stream(video) as frames:
        sizes = [r.size for r in frames]
    assert sizes == [(48, 64)] * 3 and frames.end.broken
    assert "frame 3 is 96x72 but the video started at 64x48" in frames.end.message
    res = CliRunner().invoke(predict_command, [str(tmp_path / "red.onnx"), str(video), "--out", str(tmp_path / "p")])
    assert res.exit_code == 1 and "frame 3 is 96x72" in res.output
    assert len((tmp_path / "p" / "report.jsonl").read_text().splitlines()) == 3
    same = mjpeg_avi(tmp_path / "same.avi", small + small)
    with seg.stream(same) as frames:
        assert len(list(frames)) == 6 and not frames.end.broken
