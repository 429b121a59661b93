import json

import pytest
import torch

from unet_deploy.model import UNet, count_parameters
from tests.seed_net import UNet as SeedUNet


def test_state_dict_matches_seed_key_for_key(data_dir):
    ref = json.loads((data_dir / "seed_unet_state_dict.json").read_text())
    sd = UNet(3).state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == [(k, s) for k, s in ref["keys"]]
    assert len(sd) == 150
    assert count_parameters(UNet(3)) == ref["num_parameters"] == 37_658_179


def test_seed_network_weights_load_and_give_same_logits():
    torch.manual_seed(1)
    seed = SeedUNet(3, width=8)
    seed.train()
    with torch.no_grad():
        seed(torch.rand(2, 3, 32, 32))  # non-trivial BatchNorm statistics
    seed.eval()
    ours = UNet(3, base_channels=8)
    ours.load_state_dict(seed.state_dict())
    ours.eval()
    x = torch.rand(2, 3, 48, 80)
    torch.testing.assert_close(ours(x), seed(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
@pytest.mark.parametrize("hw", [(32, 32), (64, 96)])
def test_output_shape(upsample, hw):
    m = UNet(4, base_channels=8, upsample=upsample).eval()
    assert m(torch.rand(2, 3, *hw)).shape == (2, 4, *hw)


def test_bilinear_variant_has_no_transposed_conv():
    keys = UNet(3, base_channels=8, upsample="bilinear").state_dict()
    assert not any(".up." in k for k in keys)


@pytest.mark.parametrize("hw", [(65, 64), (64, 40), (16, 16)])
def test_non_multiple_of_16_is_a_clear_error(hw):
    with pytest.raises(ValueError, match="multiples of 16"):
        UNet(2, base_channels=8).eval()(torch.rand(1, 3, *hw))


def test_predict_is_eval_and_no_grad():
    m = UNet(3, base_channels=8)
    out = m.predict(torch.rand(1, 3, 32, 32))
    assert not m.training and out.dtype == torch.uint8 and out.shape == (1, 32, 32)
    assert int(out.max()) < 3
