"""`unet-train --init` from a model with fewer classes: the head grows, known rows and the body are kept."""
from __future__ import annotations

import torch

from unet_deploy.checkpoint import load_checkpoint, transfer_weights
from unet_deploy.model import UNet


def test_head_grows_by_class_name(tiny_checkpoint):
    old, meta = load_checkpoint(tiny_checkpoint)  # background, scratch, spot
    assert meta.classes == ["background", "scratch", "spot"]
    torch.manual_seed(1)
    new = UNet(4, base_channels=8)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    classes = ["background", "dent", "scratch", "spot"]  # a new class sorted in between: rows move
    line = transfer_weights(new, old.state_dict(), meta.classes, classes)
    got, was = new.state_dict(), old.state_dict()
    for k, v in got.items():
        if k not in ("out.weight", "out.bias"):
            assert torch.equal(v, was[k]), k  # the body as trained
    for k in ("out.weight", "out.bias"):
        assert torch.equal(got[k][0], was[k][0]) and torch.equal(got[k][2], was[k][1]) and torch.equal(got[k][3], was[k][2])
        assert torch.equal(got[k][1], fresh[k][1])  # dent: the fresh initialisation, not zeros or a copy
    assert line == ("initialised 150/150 tensors; head 3 -> 4 classes: kept background, scratch, spot; "
                    "new (fresh rows): dent")
    # the grown model answers as the old one on the old classes wherever dent's fresh row stays below them
    x = torch.rand(1, 3, 32, 32)
    old.eval(), new.eval()
    with torch.no_grad():
        a, b = old(x), new(x)
    assert torch.allclose(b[:, [0, 2, 3]], a, atol=1e-5)


def test_same_classes_copy_everything_and_dropped_classes_are_named(tiny_checkpoint):
    old, meta = load_checkpoint(tiny_checkpoint)
    same = UNet(3, base_channels=8)
    assert transfer_weights(same, old.state_dict(), meta.classes, meta.classes) == "initialised 150/150 tensors"
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in same.state_dict().items())
    fewer = UNet(2, base_channels=8)
    line = transfer_weights(fewer, old.state_dict(), meta.classes, ["_background_", "spot"])
    assert line.endswith("head 3 -> 2 classes: kept _background_, spot; dropped: scratch")
    assert torch.equal(fewer.state_dict()["out.weight"][1], old.state_dict()["out.weight"][2])
