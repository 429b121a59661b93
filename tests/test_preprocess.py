"""preprocess: the letterbox against the seed's PIL letterbox, its exact inverse, rect padding, bit depths."""
import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_deploy import preprocess as preprocess_module
from unet_deploy.data.synthetic import sample
from unet_deploy.errors import UnetDeployError
from unet_deploy.fileio import read_image
from unet_deploy.meta import ModelMeta
from unet_deploy.preprocess import (check_image, letterbox, letterbox_geometry, preprocess, resize_image,
                                    to_model_color, unletterbox_mask)
from tests.seed_net import seed_letterbox


def _seed_compare(path, ours, t):
    seed = np.asarray(seed_letterbox(path))
    mad = np.abs(ours[:, :, ::-1].astype(np.float64) - seed).mean()
    assert mad < 1.0, f"{path.name}: mean abs diff {mad:.3f} grey levels"
    assert t.offset == (0, 0) and max(t.new_hw) == 256


def test_agrees_with_seed_pil_letterbox_on_real_images(labelme_dir):
    paths = sorted(labelme_dir.glob("*/*.jpg"))
    assert len(paths) >= 10
    for path in paths:
        _seed_compare(path, *letterbox(read_image(path), 256))


@pytest.mark.parametrize("wh", [(300, 200), (200, 300), (256, 256), (650, 480), (97, 33), (1366, 768)])
def test_agrees_with_seed_pil_letterbox_on_generated_images(tmp_path, wh):
    """The seed pads to a square and resizes it: where its white content ends (>= half white) is
    where our resized image ends, and the pixels agree to under one grey level on average (on a
    camera-smooth image: the two grids differ by up to half a pixel, which aliased noise magnifies)."""
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), cv2.GaussianBlur(sample(3, 0, wh).image, (0, 0), 2))
    ours, t = letterbox(read_image(path), 256)
    _seed_compare(path, ours, t)
    white = tmp_path / "white.png"
    cv2.imwrite(str(white), np.full((wh[1], wh[0], 3), 255, np.uint8))
    seed = np.asarray(seed_letterbox(white))[:, :, 0]
    assert (int((seed[:, 0] >= 128).sum()), int((seed[0] >= 128).sum())) == t.new_hw


def test_center_pad_splits_padding():
    img = np.full((50, 100, 3), 200, np.uint8)
    out, t = letterbox(img, 64, pad="center", fill=7)
    assert t.new_hw == (32, 64) and t.offset == (16, 0)
    assert (out[:16] == 7).all() and (out[48:] == 7).all() and (out[16:48] == 200).all()


@pytest.mark.parametrize("hw, net_hw, new_hw", [
    ((1080, 1920), (144, 256), (144, 256)),  # 16:9: 56% of the square's pixels
    ((1920, 1080), (256, 144), (256, 144)),  # 9:16
    ((500, 500), (256, 256), (256, 256)),
    ((480, 650), (192, 256), (189, 256)),    # 480 * 256 / 650 = 189.05: 3 rows of padding
    ((10, 3), (256, 80), (256, 77)),         # tiny, enlarged: 3 * 25.6 = 76.8 -> 77 -> 80
    ((1, 5000), (32, 256), (1, 256)),        # never below MIN_SIZE
])
def test_rect_pads_only_to_a_multiple_of_16(hw, net_hw, new_hw):
    img = np.full((*hw, 3), 200, np.uint8)
    out, t = letterbox(img, 256, pad="rect", fill=7)
    assert out.shape == (*net_hw, 3) and t.dst_hw == net_hw and t.new_hw == new_hw and t.offset == (0, 0)
    assert (out[: new_hw[0], : new_hw[1]] == 200).all()
    assert (out[new_hw[0]:] == 7).all() and (out[:, new_hw[1]:] == 7).all()
    x, t2 = preprocess(img, ModelMeta(classes=["bg", "a"], letterbox={"pad": "rect", "fill": 0}))
    assert x.shape == (3, *net_hw) and t2 == t
    assert unletterbox_mask(np.ones(net_hw, np.uint8), t).shape == hw


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


@pytest.mark.parametrize("wh, net", [((600, 400), 256), ((1920, 1080), 256), ((90, 60), 128)])
@pytest.mark.parametrize("gray", [False, True])
def test_16_bit_and_8_bit_of_one_scene_agree(tmp_path, wh, net, gray):
    """One scene saved as 8-bit and as 16-bit PNG gives network inputs within 1.1 8-bit levels
    (the 8-bit resize rounds between its two passes, the 16-bit one does not), 0.3 on average."""
    image = sample(5, 0, wh).image
    if gray:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "8.png"), image)
    cv2.imwrite(str(tmp_path / "16.png"), image.astype(np.uint16) * 257)
    im8, im16 = read_image(tmp_path / "8.png"), read_image(tmp_path / "16.png")
    assert im8.dtype == np.uint8 and im16.dtype == np.uint16
    meta = ModelMeta(classes=["bg", "a"], input_size=net, letterbox={"pad": "center", "fill": 114})
    x8, x16 = preprocess(im8, meta)[0], preprocess(im16, meta)[0]
    diff = np.abs(x8.astype(np.float64) - x16) * 255
    assert diff.max() <= 1.1 and diff.mean() <= 0.3, (diff.max(), diff.mean())


@pytest.mark.parametrize("image, match", [
    (np.zeros((4, 4, 3), np.float32), "dtype float32 is not supported; pass 8- or 16-bit"),
    (np.zeros((4, 4), np.int32), "dtype int32"),
    (np.zeros((4, 4), bool), "dtype bool"),
    (np.zeros((4, 4), object), "dtype object"),
    (np.zeros((4,), np.uint8), "shape"),
    (np.zeros((1, 4, 4, 3), np.uint8), "shape"),
    (np.zeros((4, 4, 2), np.uint8), "not gray, BGR or BGRA"),
    (np.zeros((0, 4, 3), np.uint8), "is empty"),
    ([[1, 2]], "not a numpy array"),
])
def test_unusable_images_are_one_line(image, match):
    meta = ModelMeta(classes=["bg", "a"], input_size=32)
    with pytest.raises(UnetDeployError, match=match) as info:
        preprocess(image, meta)
    assert "\n" not in info.value.message
    assert check_image(np.zeros((2, 2, 1), np.uint16)).shape == (2, 2, 1)


sizes = st.one_of(st.integers(1, 40), st.integers(1, 3000))
pads = st.sampled_from(["top-left", "center", "rect"])
nets = st.sampled_from([32, 64, (32, 48), (64, 32)])


@settings(max_examples=80, deadline=None)
@given(h=sizes, w=sizes, pad=pads, net=nets)
def test_unletterbox_takes_the_network_pixel_under_each_pixel_centre(h, w, pad, net):
    """The inverse, from its definition: original pixel y (centre y + 0.5) lies in the original
    span [(r - top) * H / new_h, (r + 1 - top) * H / new_h) of the network row r it takes;
    checked in exact integers (times 2 * new_h), columns alike; padding is never taken."""
    t = letterbox_geometry((h, w), net, pad)
    (dh, dw), (nh, nw), (top, left) = t.dst_hw, t.new_hw, t.offset
    assert 1 <= nh <= dh and 1 <= nw <= dw and 0 <= top <= dh - nh and 0 <= left <= dw - nw
    if pad == "rect":
        assert all(v % 16 == 0 and v >= 32 and (v - n < 16 or v == 32) for v, n in zip(t.dst_hw, t.new_hw))
        assert t.offset == (0, 0)
    else:
        assert t.dst_hw == ((net, net) if isinstance(net, int) else net)
    full = (dh, dw) if pad != "rect" else ((net, net) if isinstance(net, int) else net)
    assert nh == full[0] or nw == full[1]  # the long side fills the requested input
    rows_net = np.repeat(np.arange(dh, dtype=np.int64)[:, None], dw, axis=1)
    cols_net = np.repeat(np.arange(dw, dtype=np.int64)[None, :], dh, axis=0)
    rows = unletterbox_mask(rows_net, t)[:, 0] - top
    cols = unletterbox_mask(cols_net, t)[0, :] - left
    assert unletterbox_mask(rows_net, t).shape == (h, w)
    for taken, n, size in ((rows, nh, h), (cols, nw, w)):
        centre2 = (2 * np.arange(size) + 1) * n  # 2 * (y + 0.5) * new_h
        assert ((2 * taken * size <= centre2) & (centre2 < 2 * (taken + 1) * size)).all()


@settings(max_examples=60, deadline=None)
@given(h=sizes, w=sizes, pad=pads, net=nets)
def test_nearest_letterbox_round_trips_at_every_size(h, w, pad, net):
    """Masks resized by cv2's INTER_NEAREST_EXACT (an independent resampler) come back exactly:
    enlarged ones from the original side, shrunk ones from the network side."""
    t = letterbox_geometry((h, w), net, pad)
    (nh, nw), (top, left) = t.new_hw, t.offset
    rng = np.random.default_rng(h * 7919 + w)
    if nh >= h and nw >= w:  # enlarged (the letterbox scale is uniform: both sides or neither)
        orig = rng.integers(0, 5, (h, w), dtype=np.uint8)
    else:
        content = rng.integers(0, 5, (nh, nw), dtype=np.uint8)
        net_mask = np.full(t.dst_hw, 9, np.uint8)
        net_mask[top:top + nh, left:left + nw] = content
        orig = unletterbox_mask(net_mask, t)
        assert (orig != 9).all()
    boxed, t2 = letterbox(orig, net, pad, fill=9, interpolation=cv2.INTER_NEAREST_EXACT)
    assert t2 == t
    if nh >= h and nw >= w:
        np.testing.assert_array_equal(unletterbox_mask(boxed, t), orig)
    else:
        np.testing.assert_array_equal(boxed[top:top + nh, left:left + nw], content)


@pytest.mark.parametrize("pad", ["top-left", "rect"])
@pytest.mark.parametrize("hw", [(1, 1), (1, 5000), (5000, 1), (3, 517)])
def test_extreme_aspect_ratios(hw, pad):
    img = np.full((*hw, 3), 128, np.uint8)
    out, t = letterbox(img, 256, pad)
    assert out.shape == (*t.dst_hw, 3) and max(t.dst_hw) == 256
    assert unletterbox_mask(np.ones(t.dst_hw, np.uint8), t).shape == hw


@pytest.mark.parametrize("hw, new_hw", [
    ((1080, 1920), (144, 256)), ((1080, 1920), (180, 320)),  # PIL halves first: OpenCV does the halving
    ((1082, 1922), (144, 256)), ((1081, 1921), (144, 256)),  # even, and odd sizes (PIL's own reduce)
    ((720, 1280), (144, 256)), ((2160, 3840), (144, 256)), ((600, 2000), (77, 256)),  # other factors
    ((100, 200), (16, 32)), ((7, 9), (30, 40)),
])
@pytest.mark.parametrize("channels", [0, 3])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_8_bit_resize_is_pils_reducing_gap_bicubic_bit_for_bit(hw, new_hw, channels, threads, monkeypatch):
    """Noise (every rounding case of the 2x2 halving) and a camera-like frame, on one thread and in
    bands on 2 and 3 (every size split, however small: the band edges meet the filter everywhere)."""
    from PIL import Image

    monkeypatch.setattr(preprocess_module, "BAND_MIN_PIXELS", 1)
    rng = np.random.default_rng(hw[0] * 7 + channels)
    shape = hw + ((channels,) if channels else ())
    frame = cv2.resize(sample(5, 0, (64, 36)).image, hw[::-1], interpolation=cv2.INTER_CUBIC)
    for image in (rng.integers(0, 256, shape, dtype=np.uint8), frame if channels else frame[:, :, 1].copy()):
        pil = np.asarray(Image.fromarray(image).resize(new_hw[::-1], Image.BICUBIC, reducing_gap=3.0))
        ours = resize_image(image, new_hw, None, threads=threads)
        assert ours.dtype == np.uint8 and ours.shape == pil.shape and np.array_equal(ours, pil)


def test_banded_resize_of_real_photos_is_pils_bit_for_bit(labelme_dir, monkeypatch):
    """The labelme photos (odd sizes among them), gray and colour, to letterbox and tile sizes, in 1 to 3 bands;
    a strided view of a frame (a crop, as from a region of interest) too."""
    from PIL import Image

    monkeypatch.setattr(preprocess_module, "BAND_MIN_PIXELS", 1)
    paths = sorted(labelme_dir.glob("*/*.jpg"))
    assert any(cv2.imread(str(p)).shape[0] % 2 for p in paths)  # an odd height among them
    for path in paths:
        photo = read_image(path)
        for image in (photo, photo[:, :, 1].copy(), photo[1:, 3:-2]):
            for new_hw in {letterbox_geometry(image.shape[:2], 256).new_hw, (64, 64), (97, 301)}:
                whole = Image.fromarray(np.ascontiguousarray(image))
                pil = np.asarray(whole.resize(new_hw[::-1], Image.BICUBIC, reducing_gap=3.0))
                for threads in (1, 2, 3):
                    ours = resize_image(image, new_hw, threads=threads)
                    assert np.array_equal(ours, pil), (path.name, image.shape, new_hw, threads)


def test_a_1080p_frame_is_resized_in_bands_only_when_threads_allow(monkeypatch):
    """1 thread: no band thread is asked for; 2: one, besides the caller's; the bytes alike either way."""
    calls = []
    real = preprocess_module._band_pool
    monkeypatch.setattr(preprocess_module, "_band_pool", lambda workers: calls.append(workers) or real(workers))
    frame = sample(100, 0, (1920, 1080)).image
    one = resize_image(frame, (144, 256), threads=1)
    assert calls == []
    two = resize_image(frame, (144, 256), threads=2)
    assert set(calls) == {1} and np.array_equal(one, two)
