"""int8 on every x86 CPU (``unet_deploy.formats.quantize``): the overflow fix for AVX2-only CPUs, the
accuracy-control fallback, ONNX QDQ int8, ``--precision auto`` and the ISA warning at run time.

The tiny random UNet of ``test_openvino`` (BatchNorm statistics from the real frames) keeps ~96%
of its pixels at int8, so a threshold above that makes plain PTQ miss the gate on purpose.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
pytest.importorskip("nncf", reason="the [openvino] extra is not installed")

from tests.conftest import TEST_MIN_AGREEMENT, openvino_meta  # noqa: E402
from unet_deploy import cpu  # noqa: E402
from unet_deploy.accuracy import GateRefused  # noqa: E402
from unet_deploy.errors import UnetDeployError  # noqa: E402
from unet_deploy.export import export_model  # noqa: E402
from unet_deploy.formats import quantize  # noqa: E402
from unet_deploy.export import export_openvino  # noqa: E402
from unet_deploy.formats.openvino import ir_path  # noqa: E402
from unet_deploy.runtime import Segmenter  # noqa: E402
from unet_deploy.runtime import openvino_backend as ovb  # noqa: E402


def _int8_weights(xml: Path) -> list[np.ndarray]:
    """The int8 weight constants NNCF wrote into an IR."""
    model = ovb.core().read_model(str(xml))
    return [op.get_data() for op in model.get_ordered_ops()
            if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "i8"]  # fmt: skip


def _export(model_meta, voc_dir, target: Path, lines: list[str], **kw) -> Path:
    model, meta = model_meta
    kw.setdefault("min_agreement", TEST_MIN_AGREEMENT)
    kw.setdefault("max_miou_drop", 100.0)
    return export_openvino(model, meta, target, precision="int8", calib=voc_dir, val=voc_dir, log=lines.append, **kw)


@pytest.mark.slow  # NNCF / ONNX Runtime int8 calibration
def test_avx2_target_gets_7_bit_weights_and_records_its_isa(model_meta, voc_dir, tmp_path):
    """--int8-isa avx2: NNCF's overflow fix halves every weight's range (no VPMADDUBSW saturation)."""
    lines: list[str] = []
    avx2 = _export(model_meta, voc_dir, ir_path(tmp_path / "avx2", "tiny", "int8"), lines, int8_isa="avx2")
    vnni = _export(model_meta, voc_dir, ir_path(tmp_path / "vnni", "tiny", "int8"), lines, int8_isa="vnni")
    assert max(int(np.abs(w).max()) for w in _int8_weights(avx2)) <= 64
    assert max(int(np.abs(w).max()) for w in _int8_weights(vnni)) > 64  # full 8-bit range where it is safe
    for xml, isa, fix in ((avx2, "avx2", "enable"), (vnni, "vnni", "first_layer_only")):
        record = openvino_meta(xml).extra["int8"]
        assert (record["isa"], record["overflow_fix"]) == (isa, fix)
        assert record["calibrated_on"] == cpu.features().summary()
        assert record["recipe"]["keep_fp32"] == ["first_conv"]
    assert any("for avx2 CPUs (overflow fix: enable)" in line for line in lines)


def test_int8_isa_auto_follows_this_cpu_and_bad_values_are_one_line(monkeypatch):
    monkeypatch.setattr(cpu, "int8_isa", lambda: "avx2")
    assert quantize.target_isa("auto") == "avx2"
    monkeypatch.setattr(cpu, "int8_isa", lambda: "amx")
    assert quantize.target_isa(None) == "vnni"
    with pytest.raises(UnetDeployError, match=r"^--int8-isa 'sse4' is not one of auto\|vnni\|avx2$"):
        quantize.target_isa("sse4")


def test_onednn_isa_cap_is_what_the_cpu_facts_report():
    """ONEDNN_MAX_CPU_ISA=AVX2 makes OpenVINO's and torch's oneDNN run AVX2 kernels; unet_deploy.cpu agrees."""
    import subprocess
    import sys

    code = "from unet_deploy import cpu; f = cpu.features(); print(cpu.int8_isa(), f.native_bf16, f.avx512, ' '.join(f.flags))"
    out = subprocess.run([sys.executable, "-c", code], env={"ONEDNN_MAX_CPU_ISA": "AVX2", "PATH": ""},
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert out[:3] == ["avx2", "False", "False"] and set(out[3:]) <= {"avx2", "fma"}


@pytest.mark.slow  # NNCF / ONNX Runtime int8 calibration
def test_vnni_model_on_an_avx2_cpu_warns_once(model_meta, voc_dir, tmp_path, monkeypatch):
    xml = _export(model_meta, voc_dir, ir_path(tmp_path, "tiny", "int8"), [], int8_isa="vnni")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Segmenter(xml)  # calibrated for what it runs on: quiet
    monkeypatch.setattr(cpu, "int8_isa", lambda: "avx2")
    with pytest.warns(RuntimeWarning, match=r"tiny\.int8\.xml: int8 calibrated for VNNI CPUs runs here on AVX2 only"):
        Segmenter(xml)


@pytest.mark.slow
def test_accuracy_control_rescues_a_missed_gate(model_meta, voc_dir, tmp_path):
    """Plain PTQ keeps ~96% here; at a 99% bar it misses, and accuracy control keeps layers in fp32 until it passes."""
    lines: list[str] = []
    xml = _export(model_meta, voc_dir, ir_path(tmp_path, "tiny", "int8"), lines, min_agreement=99.0)
    assert any(line.startswith("accuracy gate REFUSED") for line in lines)
    assert any("retrying with NNCF accuracy control" in line for line in lines)
    assert lines[-1].startswith("accuracy gate passed") or any(line.startswith("accuracy gate passed") for line in lines)
    meta = openvino_meta(xml)
    record = meta.extra["int8"]
    assert record["accuracy_control"]["metric"] == "gate headroom (agreement, mIoU drop)"  # the frames have masks
    assert 0 <= record["quantizers"] < record["accuracy_control"]["quantizers_before"]  # layers went back to fp32
    assert meta.extra["accuracy"]["passed"] and meta.extra["accuracy"]["agreement"] >= 99.0

    # Without the fallback the same bar refuses, in one line, and leaves nothing behind.
    out = tmp_path / "plain"
    with pytest.raises(GateRefused) as info:
        _export(model_meta, voc_dir, ir_path(out, "tiny", "int8"), [], min_agreement=99.0,
                int8=quantize.Int8Recipe(accuracy_control=False))  # fmt: skip
    assert "\n" not in info.value.message and "refused by the accuracy gate" in info.value.message
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow  # NNCF / ONNX Runtime int8 calibration
def test_onnx_int8_is_a_gated_qdq_graph_run_by_onnxruntime(checkpoint, voc_dir, tmp_path):
    import onnx

    lines: list[str] = []
    path = export_model(checkpoint, "onnx", out_dir=tmp_path, precision="int8", calib=voc_dir, val=voc_dir,
                        min_agreement=TEST_MIN_AGREEMENT, max_miou_drop=100.0, log=lines.append)["onnx"]  # fmt: skip
    assert path.name == "tiny.int8.onnx"
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert any(line.startswith("accuracy gate passed: int8 vs fp32 on 5 images") and "[onnxruntime int8]" in line
               for line in lines)  # fmt: skip
    seg = Segmenter(path)
    assert (seg.backend, seg.precision) == ("onnxruntime", "int8")
    assert seg.meta.extra["int8"]["isa"] == quantize.target_isa("auto")
    assert seg.meta.extra["int8"]["quantizer"] == "onnxruntime.quantization.quantize_static"  # the faster of the two
    assert seg.meta.extra["accuracy"]["agreement"] >= TEST_MIN_AGREEMENT
    # It segments as the gate measured: the gate's agreement on these frames, recomputed here.
    from unet_deploy import accuracy
    from unet_deploy.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    import torch

    samples = accuracy.load_samples(accuracy.dataset_images(voc_dir))
    with torch.inference_mode():
        ref = [accuracy.predict_class_map(lambda x: model(torch.from_numpy(x)).numpy(), s.image, meta) for s in samples]
    got = [seg(s.image).mask for s in samples]
    agree = 100.0 * sum(int((a == b).sum()) for a, b in zip(ref, got)) / sum(a.size for a in ref)
    assert agree == pytest.approx(seg.meta.extra["accuracy"]["agreement"], abs=0.01)


@pytest.mark.slow  # NNCF / ONNX Runtime int8 calibration
def test_precision_auto_takes_int8_when_it_passes_and_says_why(checkpoint, voc_dir, tmp_path):
    lines: list[str] = []
    paths = export_model(checkpoint, "openvino", out_dir=tmp_path, precision="auto", calib=voc_dir, val=voc_dir,
                         min_agreement=TEST_MIN_AGREEMENT, max_miou_drop=100.0, log=lines.append)  # fmt: skip
    assert paths["openvino"].name == "tiny.int8.xml"
    assert [line for line in lines if "--precision auto" in line] == ["OpenVINO --precision auto: int8 (passed the accuracy gate)"]


@pytest.mark.slow  # NNCF / ONNX Runtime int8 calibration
def test_precision_auto_falls_back_when_the_gate_refuses(checkpoint, voc_dir, tmp_path):
    """At a 100% bar int8 is refused; bf16 is next where this CPU has it, else fp32 (this test runs on both kinds)."""
    lines: list[str] = []
    paths = export_model(checkpoint, "onnx,openvino", out_dir=tmp_path, precision="auto", calib=voc_dir, val=voc_dir,
                         min_agreement=100.0, max_miou_drop=0.0, log=lines.append)  # fmt: skip
    auto = [line for line in lines if "--precision auto" in line]
    assert auto[0].startswith("ONNX --precision auto: fp32 (the full-precision fallback; int8 refused by the gate: "
                              "agreement ")  # ONNX has no bf16
    assert paths["onnx"].name == "tiny.onnx"
    ov_line = auto[1]
    assert "int8 refused by the gate: agreement" in ov_line and "(min 100%)" in ov_line
    if cpu.has_native_bf16():
        assert paths["openvino"].name in ("tiny.bf16.xml", "tiny.xml")
        assert ov_line.startswith(f"OpenVINO --precision auto: {'bf16' if 'bf16' in paths['openvino'].name else 'fp32'}")
    else:
        assert paths["openvino"].name == "tiny.xml" and "no native bf16 on this CPU" in ov_line
    assert not list(tmp_path.glob("*.int8.*"))  # the refused int8 left nothing behind


def test_precision_auto_without_calibration_and_on_other_formats(checkpoint, tmp_path):
    lines: list[str] = []
    paths = export_model(checkpoint, "onnx", out_dir=tmp_path, precision="auto", log=lines.append)
    assert paths["onnx"].name == "tiny.onnx"
    assert "ONNX --precision auto: fp32 (the full-precision fallback; no --calib for int8)" in lines
    with pytest.raises(UnetDeployError, match=r"^--precision auto applies to --format onnx\|openvino only"):
        export_model(checkpoint, "torchscript", out_dir=tmp_path, precision="auto")


@pytest.mark.slow  # NNCF / ONNX Runtime int8 calibration
def test_gate_refuses_black_calibration_even_with_accuracy_control(model_meta, voc_dir, tmp_path):
    """A deliberately broken calibration set (black frames): refused in one line, nothing written."""
    import cv2

    black = tmp_path / "black"
    black.mkdir()
    for i in range(4):
        cv2.imwrite(str(black / f"black_{i}.png"), np.zeros((563, 1000, 3), np.uint8))
    model, meta = model_meta
    out = tmp_path / "out"
    with pytest.raises(UnetDeployError) as info:  # refused before calibrating: flat images say nothing (#30)
        export_openvino(model, meta, ir_path(out, "tiny", "int8"), precision="int8", calib=black, val=voc_dir,
                        min_agreement=TEST_MIN_AGREEMENT, log=lambda line: None)  # fmt: skip
    assert info.value.message.startswith(f"{black}: 4 of 4 calibration images are flat")
    assert "\n" not in info.value.message
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []
