import os
import pickle

import pytest
import torch

from unet_deploy.checkpoint import load_checkpoint, save_checkpoint
from unet_deploy.meta import ModelMeta
from unet_deploy.errors import UnetDeployError
from unet_deploy.model import UNet
from tests.conftest import warm_batchnorm
from tests.seed_net import UNet as SeedUNet


def test_seed_unet_pth_loads_with_same_logits(tmp_path):
    torch.manual_seed(0)
    seed = SeedUNet(3, width=8)
    warm_batchnorm(seed)
    torch.save(seed.state_dict(), tmp_path / "unet.pth")  # exactly what the seed's train.py does
    model, meta = load_checkpoint(tmp_path / "unet.pth")
    assert meta.classes == ["class_0", "class_1", "class_2"]
    assert meta.arch == {"base_channels": 8, "upsample": "transpose", "in_channels": 3}
    x = torch.rand(2, 3, 64, 96)
    torch.testing.assert_close(model(x), seed.eval()(x), atol=1e-5, rtol=0)


def test_seed_pth_with_class_names(tmp_path):
    torch.save(UNet(3, base_channels=8).state_dict(), tmp_path / "unet.pth")
    _, meta = load_checkpoint(tmp_path / "unet.pth", classes=["bg", "scratch", "spot"])
    assert meta.classes == ["bg", "scratch", "spot"]
    with pytest.raises(UnetDeployError, match="3 output channels but the metadata lists 2"):
        load_checkpoint(tmp_path / "unet.pth", classes=["bg", "scratch"])


def test_round_trip_keeps_meta_and_extra(tiny_checkpoint):
    model, meta = load_checkpoint(tiny_checkpoint)
    assert meta.classes == ["background", "scratch", "spot"] and meta.input_size == (64, 64)
    assert not model.training
    raw = torch.load(tiny_checkpoint, weights_only=True)
    assert raw["format"] == "unet-deploy/1" and raw["epoch"] == 1


def test_save_is_atomic(tmp_path, tiny_checkpoint):
    model, meta = load_checkpoint(tiny_checkpoint)
    target = tmp_path / "best.pt"
    save_checkpoint(target, model, meta, epoch=1)
    before = target.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError), match="lambda"):
        save_checkpoint(target, model, meta, epoch=2, bad=lambda: 0)  # not serialisable
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UnetDeployError) as info:
        load_checkpoint(tmp_path / "evil.pt")
    msg = str(info.value)
    assert "evil.pt" in msg and "refused" in msg and "system" in msg and "\n" not in msg
    assert not marker.exists()


@pytest.mark.parametrize("content, match", [
    (None, "file not found"),
    (b"not a zip at all", "not a readable checkpoint"),
])
def test_bad_files_are_clear_errors(tmp_path, content, match):
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UnetDeployError, match=match):
        load_checkpoint(path)


def test_save_takes_the_architecture_from_the_model(tmp_path):
    """Metadata that says base 64 (the default) beside a base-8 model: the file still loads."""
    torch.manual_seed(0)
    model = UNet(3, base_channels=8, upsample="bilinear").eval()
    path = save_checkpoint(tmp_path / "m.pt", model, ModelMeta(classes=["bg", "a", "b"], input_size=64))
    loaded, meta = load_checkpoint(path)
    assert meta.arch == {"base_channels": 8, "upsample": "bilinear", "in_channels": 3}
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize("model, meta, match", [
    (UNet(3, base_channels=8), ModelMeta(classes=["bg", "a"]), "not saved, the model's weights have 3 output"),
    (UNet(2, in_channels=1, base_channels=8), ModelMeta(classes=["bg", "a"]),
     "not saved, color RGB does not fit arch.in_channels=1"),
    (torch.nn.Conv2d(3, 2, 1), ModelMeta(classes=["bg", "a"]), "not saved, state_dict has no 'c1.layer.0.weight'"),
])
def test_save_refuses_what_would_never_load(tmp_path, model, meta, match):
    with pytest.raises(UnetDeployError, match=match) as info:
        save_checkpoint(tmp_path / "m.pt", model, meta)
    assert "\n" not in info.value.message and not (tmp_path / "m.pt").exists()


def _crafted(tmp_path, edit):
    """A valid tiny checkpoint dict changed by ``edit``, saved as crafted.pt."""
    model = UNet(2, base_channels=4)
    obj = {"format": "unet-deploy/1", "meta": ModelMeta(classes=["bg", "a"], arch={"base_channels": 4}).to_dict(),
           "state_dict": model.state_dict()}
    edit(obj)
    torch.save(obj, tmp_path / "crafted.pt")
    return tmp_path / "crafted.pt"


@pytest.mark.parametrize("edit, match", [
    (lambda o: o.update(format=3), "checkpoint format 3 is not unet-deploy/1"),
    (lambda o: o.update(meta="x"), "metadata is not a JSON object"),
    (lambda o: o["meta"].update(classes="ab"), "classes 'ab' is not a list"),
    (lambda o: o["meta"]["arch"].update(base_channels="x"), "arch.base_channels 'x' is not an integer"),
    (lambda o: o["meta"]["arch"].update(base_channels=10**6), "arch.base_channels 1000000 is outside"),
    (lambda o: o["meta"].update(input_size=[65536, 65536]), "exceeds 8192"),
    (lambda o: o["meta"].update(color="GRAY", mean=[0], std=[1]), "color GRAY does not fit arch.in_channels=3"),
    (lambda o: o.update(state_dict=[1, 2]), "'state_dict' is a list, not a dict of tensors"),
    (lambda o: o["state_dict"].pop("c5.layer.1.running_var"), "has no 'c5.layer.1.running_var'"),
    (lambda o: o["state_dict"].update(extra=torch.zeros(1)), "unexpected key extra"),
    (lambda o: o["state_dict"].update({"out.weight": torch.zeros(3, 4, 3, 3)}),
     r"'out.weight' has shape \[3, 4, 3, 3\], the UNet of its metadata needs \[2, 4, 3, 3\]"),
    (lambda o: o["state_dict"].update({"c1.layer.0.weight": torch.zeros(4)}),
     r"'c1.layer.0.weight' has shape \[4\], the UNet of its metadata needs \[4, 3, 3, 3\]"),
])
def test_crafted_checkpoints_are_one_line_naming_the_first_bad_field(tmp_path, edit, match):
    with pytest.raises(UnetDeployError, match=match) as info:
        load_checkpoint(_crafted(tmp_path, edit))
    assert info.value.message.startswith(str(tmp_path / "crafted.pt")) and "\n" not in info.value.message


@pytest.mark.parametrize("state_edit, match", [
    (lambda s: s.update({"c1.layer.0.weight": torch.zeros(8)}), r"'c1.layer.0.weight' is \[8\], not a 4-D conv"),
    (lambda s: s.pop("out.weight"), "has no 'out.weight': it is not the seed's UNet"),
    (lambda s: s.pop("c9.layer.0.weight"), "has no 'c9.layer.0.weight'"),
])
def test_crafted_bare_state_dicts_are_one_line(tmp_path, state_edit, match):
    state = UNet(3, base_channels=4).state_dict()
    state_edit(state)
    torch.save(state, tmp_path / "unet.pth")
    with pytest.raises(UnetDeployError, match=match) as info:
        load_checkpoint(tmp_path / "unet.pth")
    assert "\n" not in info.value.message
