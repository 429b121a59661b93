import json

import numpy as np
import pytest
import torch

from unet_deploy.data.synthetic import sample
from unet_deploy.model import UNet, count_parameters
from tests.models import color_classes, color_image, color_logits, color_unet
from tests.seed_net import UNet as SeedUNet


def _input(image_bgr: np.ndarray) -> torch.Tensor:
    """The color model's input for a BGR uint8 image: RGB, ``pixel / 255``, 1x3xHxW."""
    return torch.from_numpy(np.ascontiguousarray(image_bgr[..., ::-1].transpose(2, 0, 1))).float()[None] / 255


def _assert_matches_reference(pred: np.ndarray, image_bgr: np.ndarray, num_classes: int) -> None:
    """``pred`` equals ``color_classes`` except where the reference's integer logits tie exactly."""
    logits = color_logits(image_bgr, num_classes)
    ref = color_classes(image_bgr, num_classes)
    off = pred != ref
    picked = np.take_along_axis(logits, pred[None].astype(np.int64), 0)[0]
    assert (picked[off] == logits.max(0)[off]).all(), "differs from the reference where it is not a tie"
    assert off.mean() < 0.01


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


@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
def test_color_unet_argmax_equals_the_numpy_reference(upsample):
    model = color_unet(4, upsample=upsample)
    image = color_image(0, (96, 64))
    counts = np.bincount(color_classes(image).ravel(), minlength=4) / (64 * 96)
    assert (counts > 0.1).all(), f"every class should cover a large area, got {counts}"
    for img in (image, sample(0, 2, (64, 64)).image):
        with torch.no_grad():
            pred = model(_input(img))[0].argmax(0).numpy().astype(np.uint8)
        _assert_matches_reference(pred, img, 4)


def test_predict_is_eval_and_no_grad():
    m = color_unet(3).train()  # Dropout2d in train mode would zero whole channels
    seen = []
    m.out.register_forward_hook(lambda mod, inp, out: seen.append(out.requires_grad))
    image = color_image(1, (64, 48))
    out = m.predict(_input(image))
    assert not m.training and seen == [False]
    assert out.dtype == torch.uint8 and out.shape == (1, 48, 64)
    _assert_matches_reference(out[0].numpy(), image, 3)


def test_predict_with_one_output_thresholds_the_logit_at_zero():
    two = color_unet(2)  # background vs dark
    sd = two.state_dict()
    sd["out.weight"] = sd["out.weight"][1:] - sd["out.weight"][:1]
    sd["out.bias"] = sd["out.bias"][1:] - sd["out.bias"][:1]
    one = UNet(1, base_channels=8)
    one.load_state_dict(sd)
    image = color_image(2, (64, 64))
    out = one.predict(_input(image))[0].numpy()
    assert 0.1 < out.mean() < 0.9
    _assert_matches_reference(out, image, 2)


@pytest.mark.parametrize("fmt", ["checkpoint", "onnx"])
def test_color_fixtures_segment_as_the_reference(fmt, request):
    from unet_deploy import Segmenter

    path = request.getfixturevalue("color_checkpoint" if fmt == "checkpoint" else "exported_color")
    seg = Segmenter(path if fmt == "checkpoint" else path["onnx"])
    assert seg.classes == ["background", "dark", "bright", "warm"]
    image = color_image(3, (64, 64))  # the network's input size: no resize
    _assert_matches_reference(seg(image).mask, image, 4)
