"""`unet-train --preset fast|balanced|seed`: each preset trains, exports and passes the int8 gate.

Trained at a tiny size (64x64, two epochs) on labelme's five real video frames with labelme's own
masks (the ``voc_dir`` fixture), exported to OpenVINO int8 through the accuracy gate; the int8
model's masks are then compared with the checkpoint's in the test itself.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.conftest import TEST_MIN_AGREEMENT, VIDEO_CLASSES, openvino_meta
from tests.seed_net import UNet as SeedUNet
from unet_deploy.checkpoint import load_checkpoint, read_checkpoint
from unet_deploy.cli.train import command as train_command
from unet_deploy.train.options import PRESETS

WIDTHS = {"seed": 64, "balanced": 16, "fast": 8}  # what the README's table promises


@pytest.fixture(scope="module")
def voc(voc_dir, tmp_path_factory) -> Path:
    """``voc_dir`` with its class names, as `unet-deploy labelme` writes them: a dataset `unet-train` reads."""
    root = tmp_path_factory.mktemp("voc_named") / "voc"
    shutil.copytree(voc_dir, root)
    (root / "class_names.txt").write_text("\n".join(VIDEO_CLASSES) + "\n")
    return root


def _train(voc: Path, out: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(train_command, [str(voc), "--out", str(out), "--epochs", "2", "--img-size", "64",
                                                "--batch-size", "5", "--val-split", "0", "--no-augment",
                                                "--workers", "0", *args])  # fmt: skip
    return result.exit_code, result.output


@pytest.mark.slow  # training + NNCF int8 calibration (the seed rung is the 37.7 M-parameter network)
@pytest.mark.parametrize("preset", ["fast", "balanced", "seed"])
def test_each_preset_trains_exports_and_passes_the_int8_gate(preset, voc, voc_dir, tmp_path):
    pytest.importorskip("nncf", reason="the [openvino] extra is not installed")
    from unet_deploy.export import export_model
    from unet_deploy.fileio import read_image
    from unet_deploy.runtime import Segmenter

    code, output = _train(voc, tmp_path / "run", "--preset", preset)
    assert code == 0, output
    ckpt = tmp_path / "run" / "best.pt"
    model, meta = load_checkpoint(ckpt)
    assert meta.arch["base_channels"] == WIDTHS[preset] == model.c1.layer[0].out_channels
    assert read_checkpoint(ckpt)["config"]["preset"] == preset

    lines: list[str] = []
    xml = export_model(ckpt, "openvino", out_dir=tmp_path, precision="int8", calib=voc_dir, val=voc_dir,
                       min_agreement=TEST_MIN_AGREEMENT, log=lines.append)["openvino"]  # fmt: skip
    assert openvino_meta(xml).extra["precision"] == "int8", lines
    frames = [read_image(p) for p in sorted((voc_dir / "JPEGImages").glob("*.jpg"))]
    ref = [r.mask for r in Segmenter(ckpt, device="cpu").predict_batch(frames)]
    got = [r.mask for r in Segmenter(xml, device="cpu").predict_batch(frames)]
    agree = 100.0 * sum(int((a == b).sum()) for a, b in zip(ref, got)) / sum(a.size for a in ref)
    assert agree >= TEST_MIN_AGREEMENT

    if preset == "seed":  # the tutorial's own class runs these weights: seed compatibility kept
        seed = SeedUNet(len(meta.classes))
        seed.load_state_dict(model.state_dict(), strict=True)
        x = torch.rand(1, 3, 64, 64)
        with torch.no_grad():
            assert torch.equal(seed.eval()(x), model(x))


def test_preset_and_a_different_width_is_one_line_and_writes_nothing(voc_dir, tmp_path):
    code, output = _train(voc_dir, tmp_path / "run", "--preset", "fast", "--base-channels", "16")
    assert code == 1
    assert output.strip().splitlines() == [f"Error: --preset fast means --base-channels {PRESETS['fast']['base_channels']}, "
                                           "not 16; give one of the two"]  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_init_from_other_weights_with_a_preset_is_refused(voc, tmp_path, checkpoint):
    """The tiny base-8 transpose checkpoint cannot start a ``balanced`` (base 16) run."""
    code, output = _train(voc, tmp_path / "run", "--preset", "balanced", "--init", str(checkpoint))
    assert code == 1
    assert "its weights fix the network" in output and len(output.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "best.pt").exists()


def test_default_network_is_the_seeds(voc, tmp_path):
    """No preset and no width: the seed's UNet, whose state_dict the tutorial's class loads."""
    code, output = _train(voc, tmp_path / "run", "--epochs", "1", "--img-size", "32")
    assert code == 0, output
    model, meta = load_checkpoint(tmp_path / "run" / "best.pt")
    assert (meta.arch["base_channels"], meta.arch["upsample"]) == (64, "transpose")
    SeedUNet(len(meta.classes)).load_state_dict(model.state_dict(), strict=True)
    assert len(meta.classes) == 3 and sum(p.numel() for p in model.parameters()) == 37_658_179  # the tutorial's count
