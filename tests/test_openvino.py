"""The CPU fast path: OpenVINO IR export (fp32/int8) with metadata, its backend, and the accuracy gate.

The model is the tiny UNet (base 8, 64x64) with BatchNorm statistics taken from the real
labelme frames it is tested on, so that its class map varies over the image (a randomly
initialised UNet with synthetic BatchNorm statistics predicts one class everywhere, which
any quantization would "keep"). Its weights are random, so it is not confident: int8 keeps
~88% of its pixels here, and the gate tests use a 70% threshold that separates a sound
calibration from a broken one (the defaults, 99% / 1 point, are for trained models).
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("openvino", reason="the [openvino] extra is not installed")

from unet_deploy import accuracy, cpu  # noqa: E402
from unet_deploy.errors import UnetDeployError  # noqa: E402
from unet_deploy.export import export_openvino  # noqa: E402
from unet_deploy.formats.openvino import ir_path  # noqa: E402
from unet_deploy.meta import ModelMeta  # noqa: E402
from unet_deploy.runtime import Segmenter  # noqa: E402
from unet_deploy.runtime import openvino_backend as ovb  # noqa: E402

from tests.conftest import TEST_MIN_AGREEMENT, VIDEO_CLASSES as CLASSES, openvino_meta  # noqa: E402


@pytest.fixture(scope="module")
def fp32_ir(checkpoint, tmp_path_factory) -> Path:
    """``unet-export tiny.pt --format openvino`` through the exporter's table (fp32, parity-checked)."""
    from unet_deploy.export import export_model

    return export_model(checkpoint, "openvino", out_dir=tmp_path_factory.mktemp("ov"), verbose=False)["openvino"]



def test_fp32_export_carries_metadata_and_reloads(fp32_ir, model_meta, voc_dir):
    import torch

    model, meta = model_meta
    assert sorted(p.name for p in fp32_ir.parent.iterdir()) == ["tiny.bin", "tiny.json", "tiny.xml"]
    inside, sidecar = openvino_meta(fp32_ir), ModelMeta.load(fp32_ir.with_suffix(".json"))
    assert inside == sidecar
    assert inside.classes == CLASSES and inside.input_size == (64, 64)
    assert inside.extra == {"precision": "fp32", "trained_letterbox": "top-left"}  # deployed rect

    seg = Segmenter(fp32_ir)  # device="auto": an .xml runs on OpenVINO's CPU plugin
    assert (seg.backend, seg.device) == ("openvino", "cpu")
    # Dynamic batch, height and width: logits equal torch's at two shapes and batch sizes.
    rng = np.random.default_rng(1)
    for shape in [(1, 3, 64, 64), (3, 3, 96, 160)]:
        x = rng.random(shape, dtype=np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(seg.infer(x), expected, atol=1e-4, rtol=1e-4)
    # End to end on a real frame: the same mask as the checkpoint path.
    image = cv2.imread(str(accuracy.dataset_images(voc_dir)[0]))
    with torch.inference_mode():
        eager = accuracy.predict_class_map(lambda b: model(torch.from_numpy(b)).numpy(), image, meta)
    result = seg(image)
    assert result.mask.shape == image.shape[:2]
    assert np.mean(result.mask == eager) >= 0.999
    assert len(np.unique(result.mask)) > 1  # the model's answer varies, so agreement means something


@pytest.mark.slow  # NNCF quantization
def test_int8_export_passes_the_gate_and_records_it(model_meta, voc_dir, fp32_ir, tmp_path):
    model, meta = model_meta
    lines: list[str] = []
    xml = export_openvino(
        model, meta, ir_path(tmp_path, "tiny", "int8"), precision="int8", calib=voc_dir, val=voc_dir,
        min_agreement=TEST_MIN_AGREEMENT, check=False, log=lines.append,
    )  # fmt: skip
    assert xml.name == "tiny.int8.xml"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.int8.bin", "tiny.int8.json", "tiny.int8.xml"]
    assert any(line.startswith("accuracy gate passed: int8 vs fp32 on 5 images") for line in lines)
    inside = openvino_meta(xml)
    assert inside == ModelMeta.load(xml.with_suffix(".json"))
    gate = inside.extra["accuracy"]
    assert inside.extra["precision"] == "int8" and gate["passed"] is True
    assert gate["images"] == 5 and gate["min_agreement"] == TEST_MIN_AGREEMENT
    assert TEST_MIN_AGREEMENT <= gate["agreement"] <= 100.0 and gate["miou"] is not None
    # Really int8: quantized weights, and a smaller file than fp32.
    types = {op.get_output_element_type(0).get_type_name() for op in ovb.core().read_model(str(xml)).get_ops()}
    assert {"i8", "u8"} & types
    assert xml.with_suffix(".bin").stat().st_size < 0.5 * fp32_ir.with_suffix(".bin").stat().st_size
    seg = Segmenter(xml)
    assert seg.backend == "openvino" and "int8" in seg.describe()
    assert seg(cv2.imread(str(accuracy.dataset_images(voc_dir)[1]))).mask.shape == (563, 1000)


@pytest.mark.slow  # NNCF quantization
def test_gate_refuses_int8_calibrated_on_black_images(model_meta, voc_dir, tmp_path):
    """Activation ranges learnt from black images would be a broken quantization: the flat calibration set is
    refused in one line before anything is calibrated (#30), and no file is written."""
    model, meta = model_meta
    black = tmp_path / "black"
    black.mkdir()
    for i in range(6):
        cv2.imwrite(str(black / f"black_{i}.png"), np.zeros((563, 1000, 3), np.uint8))
    out = tmp_path / "out"
    with pytest.raises(UnetDeployError) as err:
        export_openvino(
            model, meta, out / "tiny.int8.xml", precision="int8", calib=black, val=voc_dir,
            min_agreement=TEST_MIN_AGREEMENT, check=False, log=lambda line: None,
        )  # fmt: skip
    message = err.value.message
    assert "\n" not in message
    assert message.startswith(f"{black}: 6 of 6 calibration images are flat") and "representative images" in message
    assert not out.exists() or not any(out.iterdir())  # nothing written, no temporary left


def test_reduced_precision_needs_data_and_sane_thresholds(model_meta, tmp_path):
    model, meta = model_meta
    cases = [
        (dict(precision="int8"), "int8 needs calibration images: pass --calib DATA"),
        (dict(precision="bf16"), "bf16 must pass the accuracy gate: pass --val DATA"),
        (dict(precision="fp8"), "is not one of fp32|bf16|int8"),
        (dict(precision="int8", calib=tmp_path, min_agreement=101), "must be a percentage between 0 and 100"),
        (dict(precision="int8", calib=tmp_path / "nowhere"), "image folder not found"),
    ]
    for kwargs, expected in cases:
        with pytest.raises(UnetDeployError, match=expected.replace("|", r"\|")):
            export_openvino(model, meta, tmp_path / "m.xml", log=lambda line: None, **kwargs)
    assert not any(tmp_path.iterdir())


def test_cli_int8_without_calibration_is_one_line(checkpoint, tmp_path):
    from click.testing import CliRunner

    from unet_deploy.cli.export import command

    out = tmp_path / "out"
    result = CliRunner().invoke(command, [str(checkpoint), "-f", "openvino", "--precision", "int8", "--out", str(out)])
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last == f"Error: {out / 'tiny.int8.xml'}: int8 needs calibration images: pass --calib DATA (a few dozen training images)"
    assert not out.exists() or not any(out.iterdir())


def test_gate_arithmetic_on_known_maps():
    """Agreement and mIoU of hand-made class maps, through the real preprocess/unletterbox path."""
    meta = ModelMeta(classes=["bg", "a"], input_size=(32, 32), std=[1, 1, 1])
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 32:] = 255  # right half white (network input 1.0)
    truth = np.zeros((64, 64), np.uint8)
    truth[:, 32:] = 1

    def reference(x):  # class 1 where the pixel is bright
        return np.concatenate([0.5 - x[:, :1], x[:, :1] - 0.5], axis=1)

    def candidate(x):  # also calls the top quarter class 1
        logits = reference(x)
        logits[:, 1, :8] = 10.0
        return logits

    samples = [accuracy.Sample("half.png", image, truth)]
    result = accuracy.evaluate(reference, candidate, samples, meta, precision="int8", source="unit")
    assert result.agreement == pytest.approx(87.5)  # top-left quarter of the left half disagrees
    assert result.miou_fp32 == pytest.approx(100.0)
    # candidate: class 1 IoU = 2048 / 2560, background IoU = 1536 / 2048
    assert result.miou == pytest.approx(100 * (2048 / 2560 + 1536 / 2048) / 2)
    assert not result.passed and result.worst_image == "half.png"
    with pytest.raises(UnetDeployError, match=r"^unit.png: int8 export refused by the accuracy gate: int8 vs fp32"):
        accuracy.enforce(result, "unit.png")
    same = accuracy.evaluate(reference, reference, samples, meta, precision="bf16", source="unit")
    assert same.passed and same.agreement == 100.0 and same.miou_drop == 0.0
    no_masks = accuracy.evaluate(reference, candidate, [accuracy.Sample("x", image)], meta, precision="int8",
                                 min_agreement=80.0)  # fmt: skip
    assert no_masks.passed and no_masks.miou is None and "mIoU not measured" in no_masks.line()


def test_split_dataset_holds_back_every_fifth_image_or_uses_imagesets(voc_dir, tmp_path):
    train, val = accuracy.split_dataset(voc_dir)
    assert [p.name for p in val] == ["00000104.jpg"] and len(train) == 4
    root = tmp_path / "voc"
    shutil.copytree(voc_dir, root)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("00000100\n00000102\n")
    train, val = accuracy.split_dataset(root)
    assert [p.stem for p in val] == ["00000100", "00000102"]
    assert [p.stem for p in train] == ["00000101", "00000103", "00000104"]
    samples = accuracy.load_samples(val)
    assert samples[0].mask is not None and samples[0].mask.shape == samples[0].image.shape[:2]


def _conv_precisions(seg: Segmenter) -> set[str]:
    """The precisions OpenVINO's CPU plugin really runs the model's convolutions in (its runtime graph)."""
    request = seg._backend._request(tuple(seg.meta.input_size))
    ops = request.get_compiled_model().get_runtime_model().get_ops()
    info = [op.get_rt_info() for op in ops]
    return {i["runtimePrecision"].astype(str) for i in info if i["layerType"].astype(str) == "Convolution"}


def test_precision_is_what_the_cpu_plugin_runs(fp32_ir, tmp_path):
    """fp32 runs f32 convolutions; bf16 runs bf16 ones where the CPU has native bf16, else it is refused
    (asked) or falls back to f32 (a bf16 export), and ``seg.precision`` says which."""
    fp32 = Segmenter(fp32_ir)
    assert fp32.precision == "fp32" and _conv_precisions(fp32) == {"f32"}
    meta = ModelMeta.load(fp32_ir.with_suffix(".json"))
    bf16_ir = tmp_path / "tiny.bf16.xml"  # the fp32 IR with a bf16 export's metadata
    ov = ovb.core().read_model(str(fp32_ir))
    ov.set_rt_info(dataclasses.replace(meta, extra={"precision": "bf16"}).to_json(), "unet_deploy")
    ovb.require_openvino().save_model(ov, str(bf16_ir), compress_to_fp16=False)
    exported_bf16 = Segmenter(bf16_ir)
    if cpu.has_native_bf16():
        asked = Segmenter(fp32_ir, precision="bf16")
        assert asked.precision == "bf16" and _conv_precisions(asked) == {"bf16"}
        assert exported_bf16.precision == "bf16" and _conv_precisions(exported_bf16) == {"bf16"}
        assert Segmenter(bf16_ir, precision="fp32").precision == "fp32"
    else:
        with pytest.raises(UnetDeployError, match="bf16 was asked for but this CPU has no native bf16"):
            Segmenter(fp32_ir, precision="bf16")
        assert exported_bf16.precision == "fp32" and _conv_precisions(exported_bf16) == {"f32"}
        assert "runs fp32: no native bf16 here" in exported_bf16.describe()
    with pytest.raises(UnetDeployError, match=r"tiny\.xml: the openvino backend cannot run this model at int8"):
        Segmenter(fp32_ir, precision="int8")
    threaded = ovb.compile_config("fp32", threads=2)
    assert threaded["INFERENCE_NUM_THREADS"] == 2
    # int8's unquantized layers: bf16 only where it is native (what unet_deploy.cpu says, ISA cap included)
    assert ovb.compile_config("int8")["INFERENCE_PRECISION_HINT"] == ("bf16" if cpu.has_native_bf16() else "f32")
