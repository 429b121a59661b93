import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_deploy.fileio import read_image
from unet_deploy.meta import ModelMeta
from unet_deploy.preprocess import (letterbox, letterbox_geometry, preprocess, to_model_color,
                                    unletterbox_mask)
from tests.seed_net import seed_letterbox


def _images(labelme_dir):
    return sorted(labelme_dir.glob("*/*.jpg"))


def test_agrees_with_seed_pil_letterbox_on_real_images(labelme_dir):
    paths = _images(labelme_dir)
    assert len(paths) >= 10
    for path in paths:
        ours, t = letterbox(read_image(path), 256)
        seed = np.asarray(seed_letterbox(path))
        mad = np.abs(ours[:, :, ::-1].astype(np.float64) - seed).mean()
        assert mad < 1.0, f"{path.name}: mean abs diff {mad:.3f} grey levels"
        assert t.offset == (0, 0) and max(t.new_hw) == 256


def test_center_pad_splits_padding():
    img = np.full((50, 100, 3), 200, np.uint8)
    out, t = letterbox(img, 64, pad="center", fill=7)
    assert t.new_hw == (32, 64) and t.offset == (16, 0)
    assert (out[:16] == 7).all() and (out[48:] == 7).all() and (out[16:48] == 200).all()


def test_preprocess_channel_orders_and_depths():
    meta = ModelMeta(classes=["bg", "a"], input_size=(32, 32))
    bgr = np.zeros((20, 20, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's order
    x, _ = preprocess(bgr, meta)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    assert x[0, :20, :20].min() == pytest.approx(1.0) and x[2].max() == 0.0  # RGB: red first
    bgra = np.dstack([bgr, np.full((20, 20), 9, np.uint8)])
    np.testing.assert_array_equal(preprocess(bgra, meta)[0], x)
    x16, _ = preprocess(bgr.astype(np.uint16) * 257, meta)
    np.testing.assert_allclose(x16, x, atol=1e-6)
    gray, _ = preprocess(np.full((20, 20), 255, np.uint8), meta)
    assert gray.shape == (3, 32, 32) and gray[:, :20, :20].min() == pytest.approx(1.0)
    assert to_model_color(bgr, "GRAY").shape == (20, 20, 1)


def test_float_images_are_refused_with_a_hint():
    from unet_deploy.errors import UnetDeployError

    with pytest.raises(UnetDeployError, match="8- or 16-bit"):
        to_model_color(np.zeros((4, 4, 3), np.float32))


def _reference_unletterbox(mask, t):
    """Pixel-centre nearest neighbour written out with numpy indices."""
    (h, w), (nh, nw), (top, left) = t.src_hw, t.new_hw, t.offset
    rows = top + np.minimum(((np.arange(h) + 0.5) * nh / h).astype(int), nh - 1)
    cols = left + np.minimum(((np.arange(w) + 0.5) * nw / w).astype(int), nw - 1)
    return mask[rows[:, None], cols[None, :]]


sizes = st.one_of(st.integers(1, 40), st.integers(1, 5000))


@settings(max_examples=60, deadline=None)
@given(h=sizes, w=sizes, pad=st.sampled_from(["top-left", "center"]), net=st.sampled_from([32, 64, (32, 48)]))
def test_unletterbox_inverts_letterbox(h, w, pad, net):
    t = letterbox_geometry((h, w), net, pad)
    dh, dw = t.dst_hw
    assert 1 <= t.new_hw[0] <= dh and 1 <= t.new_hw[1] <= dw
    assert max(t.new_hw[0] == dh, t.new_hw[1] == dw)  # the long side fills the input
    rng = np.random.default_rng(h * 7919 + w)
    net_mask = rng.integers(0, 5, (dh, dw), dtype=np.uint8)
    back = unletterbox_mask(net_mask, t)
    assert back.shape == (h, w)
    np.testing.assert_array_equal(back, _reference_unletterbox(net_mask, t))
    # A mask letterboxed with nearest and mapped back returns where the content was.
    if h * w <= 40_000:
        orig = rng.integers(0, 5, (h, w), dtype=np.uint8)
        import cv2

        boxed, t2 = letterbox(orig, net, pad, interpolation=cv2.INTER_NEAREST_EXACT)
        if t2.new_hw == (h, w):
            np.testing.assert_array_equal(unletterbox_mask(boxed, t2), orig)


@pytest.mark.parametrize("hw", [(1, 1), (1, 5000), (5000, 1), (3, 517)])
def test_extreme_aspect_ratios(hw):
    img = np.full((*hw, 3), 128, np.uint8)
    out, t = letterbox(img, 256)
    assert out.shape == (256, 256, 3)
    assert unletterbox_mask(np.ones((256, 256), np.uint8), t).shape == hw


def test_read_image_names_the_file(tmp_path):
    from unet_deploy.errors import UnetDeployError

    bad = tmp_path / "bad image.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(UnetDeployError, match="bad image.png: not a readable image"):
        read_image(bad)
    with pytest.raises(UnetDeployError, match="missing.png"):
        read_image(tmp_path / "missing.png")
