import os

import pytest
import torch

from unet_deploy.checkpoint import load_checkpoint, save_checkpoint
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
    with pytest.raises(Exception):
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
