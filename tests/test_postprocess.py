"""postprocess: argmax, the region contract (checked against its literal OpenCV recipe), overlays."""
import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from unet_deploy.data.palette import voc_palette
from unet_deploy.postprocess import CONTOUR_COLOR, argmax, class_boxes, colorize, find_regions, overlay, to_original
from unet_deploy.preprocess import letterbox_geometry

NAMES = ["background", "scratch", "spot", "dent"]


def _reference_regions(mask, names, min_area=0):
    """The contract written out literally: connectedComponentsWithStats per class, findContours
    (RETR_EXTERNAL, CHAIN_APPROX_SIMPLE) on each isolated component, sorted by (class, y, x, first x)."""
    out = []
    for c in range(1, 256):
        binary = (mask == c).astype(np.uint8)
        if not binary.any():
            continue
        n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        for i in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[i])
            if area < min_area:
                continue
            (contour,), _ = cv2.findContours((labels == i).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            first_x = int(np.argmax(labels[y] == i))
            out.append(((c, y, x, first_x), (c, names[c], area, [x, y, w, h], contour.reshape(-1, 2).tolist())))
    return [r for _, r in sorted(out, key=lambda kr: kr[0])]


def _as_tuples(regions):
    return [(r.class_id, r.class_name, r.area, r.bbox, r.contour.tolist()) for r in regions]


@settings(max_examples=150, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.integers(0, 3)),
       st.integers(0, 4))
def test_regions_follow_the_contract_on_random_masks(mask, min_area):
    # Noise masks: diagonal touches, holes, components nested in holes of other components.
    assert _as_tuples(find_regions(mask, NAMES, min_area)) == _reference_regions(mask, NAMES, min_area)


def test_regions_follow_the_contract_on_a_large_sparse_mask():
    rng = np.random.default_rng(3)
    mask = np.zeros((1080, 1920), np.uint8)
    for _ in range(60):
        x, y = rng.integers(0, 1850), rng.integers(0, 1000)
        cv2.ellipse(mask, (int(x), int(y)), (int(rng.integers(2, 60)), int(rng.integers(2, 40))),
                    float(rng.integers(0, 180)), 0, 360, int(rng.integers(1, 4)), -1)
    assert _as_tuples(find_regions(mask, NAMES, 20)) == _reference_regions(mask, NAMES, 20)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300), st.sampled_from(["top-left", "center", "rect"]),
       st.sampled_from([32, (32, 48)]), st.integers(0, 2**32 - 1), st.integers(0, 3))
def test_class_boxes_hold_every_pixel_and_change_no_region(h, w, pad, net, seed, min_area):
    """Up- and down-scaled maps, padding that holds classes no original pixel looks at."""
    t = letterbox_geometry((h, w), net, pad)
    rng = np.random.default_rng(seed)
    class_map = cv2.resize(rng.integers(0, 5, (8, 8)).astype(np.uint8), t.dst_hw[::-1], interpolation=cv2.INTER_NEAREST)
    class_map[rng.random(t.dst_hw) < 0.02] = 4
    mask = to_original(class_map, t)
    boxes = class_boxes(class_map, t)
    for c in range(1, 5):
        ys, xs = np.nonzero(mask == c)
        if ys.size:  # a box may hold none (a shrunk map skips network pixels), never too few
            x, y, bw, bh = boxes[c]
            assert x <= xs.min() and xs.max() < x + bw and y <= ys.min() and ys.max() < y + bh
    plain = find_regions(mask, NAMES, min_area)
    assert _as_tuples(find_regions(mask, NAMES, min_area, boxes=boxes)) == _as_tuples(plain)


def test_a_ring_counts_its_pixels_not_its_hole_and_nested_parts_are_their_own_regions():
    mask = np.zeros((40, 40), np.uint8)
    mask[5:25, 5:25] = 1
    mask[10:20, 10:20] = 0  # the hole
    mask[13:16, 13:16] = 1  # a dot inside the hole: a second region of the same class
    mask[30:32, 30:33] = 2
    regions = find_regions(mask, NAMES)
    assert [(r.class_name, r.area, r.bbox) for r in regions] == [
        ("scratch", 400 - 100, [5, 5, 20, 20]),
        ("scratch", 9, [13, 13, 3, 3]),
        ("spot", 6, [30, 30, 3, 2]),
    ]
    assert regions[0].contour.tolist() == [[5, 5], [5, 24], [24, 24], [24, 5]]
    assert regions[1].to_dict() == {"class_id": 1, "class_name": "scratch", "area": 9,
                                    "bbox": [13, 13, 3, 3], "contour": [[13, 13], [13, 15], [15, 15], [15, 13]]}


def test_min_area_and_background_and_unnamed_classes():
    mask = np.zeros((10, 10), np.uint8)
    mask[0, 0] = 1
    mask[5:8, 5:8] = 7
    regions = find_regions(mask, NAMES, min_area=2)
    assert [(r.class_id, r.class_name, r.area) for r in regions] == [(7, "class_7", 9)]
    assert find_regions(np.zeros((5, 5), np.uint8), NAMES) == []


def test_sort_ties_go_to_the_first_pixel_of_the_top_row():
    # Two components of one class share bbox (x, y) = (0, 0): a dot and an L around it.
    mask = np.zeros((5, 5), np.uint8)
    mask[0, 0] = 1
    mask[0, 2:5] = 1
    mask[1:3, 2] = 1
    mask[2, 0:3] = 1
    regions = find_regions(mask, NAMES)
    assert [(r.bbox, r.area) for r in regions] == [([0, 0, 1, 1], 1), ([0, 0, 5, 3], 7)]


def test_argmax_softmax_sigmoid_and_ties():
    logits = np.zeros((2, 3, 2, 2), np.float32)
    logits[0, 2, 0, 0] = 1.0
    logits[1, 1, 1, 1] = 0.5
    logits[1, 2, 1, 1] = 0.5  # tie: the lower id wins, as in torch
    ids = argmax(logits)
    assert ids.dtype == np.uint8 and ids.shape == (2, 2, 2)
    assert ids[0].tolist() == [[2, 0], [0, 0]] and ids[1].tolist() == [[0, 0], [0, 1]]
    assert argmax(logits[0]).tolist() == [[2, 0], [0, 0]]
    two = np.stack([np.zeros((2, 2)), [[1, 0], [-1, 0]]])[None].astype(np.float32)
    assert argmax(two)[0].tolist() == [[1, 0], [0, 0]]
    sigmoid = np.array([[[[0.1, 0.0], [-3.0, 2.0]]]], np.float32)
    assert argmax(sigmoid)[0].tolist() == [[1, 0], [0, 1]]


@pytest.mark.parametrize("channels", [3, 4, 7])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int32])
def test_argmax_is_numpy_argmax_bit_for_bit(channels, dtype):
    """Ties (coarse values), infinities, -0.0 and NaN (the first NaN wins), batched and not."""
    rng = np.random.default_rng(channels)
    logits = rng.integers(-3, 4, (2, channels, 9, 13)).astype(dtype)
    if np.dtype(dtype).kind == "f":
        logits[0, :, 0, 0] = np.inf
        logits[0, 1:, 1, 0] = -np.inf
        logits[1, :, 2, :] = -0.0
        logits[1, 0, 3, :] = 0.0
    for x in (logits, logits[1]):
        assert np.array_equal(argmax(x), np.argmax(x, axis=x.ndim - 3).astype(np.uint8))
    if np.dtype(dtype).kind == "f":
        logits[1, 2, 4, 5] = logits[0, 1, 0, 3] = np.nan
        assert np.array_equal(argmax(logits), np.argmax(logits, axis=1).astype(np.uint8))


def test_argmax_never_wraps_class_ids_past_uint8():
    from unet_deploy.errors import UnetDeployError

    logits = np.zeros((255, 2, 2), np.float32)
    logits[254] = 1.0
    assert argmax(logits).tolist() == [[254, 254], [254, 254]]  # the last id that fits
    with pytest.raises(UnetDeployError, match="logits have 300 channels, class ids are uint8: at most 255"):
        argmax(np.zeros((1, 300, 2, 2), np.float32))  # id 299 would read as 43
    with pytest.raises(UnetDeployError, match=r"logits of shape \[2, 2\] are not"):
        argmax(np.zeros((2, 2), np.float32))


def test_colorize_uses_the_voc_palette():
    mask = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(colorize(mask), voc_palette()[mask][:, :, ::-1])
    custom = np.array([[0, 0, 0], [255, 0, 0]], np.uint8)
    assert colorize(np.ones((2, 2), np.uint8), custom)[0, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize("kind", ["bgr", "gray", "bgra", "bgr16"])
def test_overlay_blends_classes_keeps_background_and_draws_green_contours(kind):
    bgr = np.full((60, 80, 3), 100, np.uint8)
    image = {
        "bgr": bgr,
        "gray": bgr[:, :, 0],
        "bgra": np.dstack([bgr, np.full((60, 80), 255, np.uint8)]),
        "bgr16": bgr.astype(np.uint16) * 257,
    }[kind]
    mask = np.zeros((60, 80), np.uint8)
    mask[10:40, 20:60] = 1
    out = overlay(image, mask, find_regions(mask, NAMES), alpha=0.5, thickness=1)
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8
    assert (out[mask == 0] == 100).all()  # background untouched (contour drawn on the class border)
    red = voc_palette()[1][::-1].astype(int)  # VOC class 1, BGR
    assert np.abs(out[25, 40].astype(int) - (100 + red) / 2).max() <= 1  # inside: 50% blend
    assert out[10, 40].tolist() == list(CONTOUR_COLOR)  # on the outer contour: green
    plain = overlay(image, mask, alpha=0.0, thickness=0)
    assert (plain == 100).all()
