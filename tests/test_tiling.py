"""Tiled inference: exactly the per-pixel answer (no seams, borders kept), odd sizes, batching, memory, errors."""
import math
import time
import tracemalloc

import cv2
import numpy as np
import pytest

from unet_deploy.errors import UnetDeployError
from unet_deploy.meta import ModelMeta
from unet_deploy.postprocess import argmax, to_original
from unet_deploy.preprocess import preprocess
from unet_deploy.tiling import scaled_size, tile_grid, tile_starts, tile_weights, tiled_class_map

# A per-pixel linear colour classifier: integer weights on (R, G, B, 1) with 0..255 pixels.
CLASSES = ["background", "dark", "bright", "warm"]
WEIGHTS = np.array([[0, 0, 0, 0], [-1, -1, -1, 330], [1, 1, 1, -500], [2, 0, -2, -60]], np.int64)
WARM = np.array([[1, 0, -1, -30]], np.int64)  # a sigmoid head: warm where R - B > 30
COLOURS_BGR = {1: (20, 20, 20), 2: (240, 240, 240), 3: (40, 90, 220)}  # dark, bright, warm


def pixel_predictor(weights: np.ndarray, calls: list | None = None):
    """The classifier as a predictor of RGB ``pixel / 255`` batches. Pixels are recovered exactly by
    rounding, so logits are exact integers: blended sums keep every tie and every order."""

    def predict(batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.ndim == 4 and batch.shape[1] == 3
        if calls is not None:
            calls.append(batch.shape[0])
        p = np.rint(batch * np.float32(255.0))
        out = np.empty((batch.shape[0], len(weights), *batch.shape[2:]), np.float32)
        for k, (r, g, b, bias) in enumerate(weights.astype(np.float32)):
            out[:, k] = r * p[:, 0] + g * p[:, 1] + b * p[:, 2] + bias
        return out

    return predict


def per_pixel(image_bgr: np.ndarray, weights: np.ndarray = WEIGHTS) -> np.ndarray:
    """The classifier's answer, pixel by pixel, in integers (ties: lowest id; one channel: > 0)."""
    b, g, r = (image_bgr[..., i].astype(np.int16) for i in range(3))  # |logit| < 2**15
    return argmax(np.stack([int(wr) * r + int(wg) * g + int(wb) * b + int(bias) for wr, wg, wb, bias in weights]))


def thin_lines_image(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Mid-grey noise with 1-px lines and dots of each defect colour, on the very border too."""
    rng = np.random.default_rng(seed)
    image = rng.integers(100, 150, (h, w, 3), dtype=np.uint8)
    for c, colour in COLOURS_BGR.items():
        for _ in range(6):
            p, q = rng.integers(0, (w, h), 2), rng.integers(0, (w, h), 2)
            cv2.line(image, tuple(int(v) for v in p), tuple(int(v) for v in q), colour, 1)
        dots = rng.integers(0, (h, w), (40, 2))
        image[dots[:, 0], dots[:, 1]] = colour
    image[0, :: 3], image[h - 1, 1 :: 3] = COLOURS_BGR[1], COLOURS_BGR[2]  # border rows
    image[:: 5, 0], image[2 :: 5, w - 1] = COLOURS_BGR[3], COLOURS_BGR[1]  # border columns
    image[0, 0], image[h - 1, w - 1] = COLOURS_BGR[2], COLOURS_BGR[3]  # corners
    return image


def meta_for(size=(256, 256), head="softmax") -> ModelMeta:
    return ModelMeta(classes=CLASSES if head == "softmax" else ["ok", "warm"], input_size=size, head=head)


def test_scale_1_is_exactly_per_pixel_on_5000x3000_and_the_letterbox_is_not():
    image = thin_lines_image(5000, 3000)
    meta, predict = meta_for(), pixel_predictor(WEIGHTS)
    truth = per_pixel(image)
    t0 = time.perf_counter()
    tiled = tiled_class_map(image, meta, predict, scale=1.0, overlap=0.25)
    print(f"5000x3000: {time.perf_counter() - t0:.2f} s tiled")
    assert tiled.shape == (3000, 5000) and tiled.dtype == np.uint8
    assert np.array_equal(tiled, truth)  # no seams, borders and corners kept
    assert all(truth[0, 3::3] == 1) and truth[2999, 4999] == 3  # the border structures are in the truth
    x, t = preprocess(image, meta)
    letterboxed = to_original(argmax(predict(x[None]))[0], t)
    for c in (1, 2, 3):  # 1-px structures shrink to 0.05 network pixels: the letterbox loses them
        thin = truth == c
        assert thin.sum() > 10_000, c
        assert (letterboxed[thin] == c).mean() < 0.2, c


@pytest.mark.parametrize("hw", [(1, 1), (7, 5000), (5000, 7), (31, 45), (64, 64), (65, 129), (300, 97)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_odd_and_small_images_are_exactly_per_pixel(hw, overlap):
    image = thin_lines_image(hw[1], hw[0], seed=hw[0] * 7 + hw[1])
    tiled = tiled_class_map(image, meta_for((64, 64)), pixel_predictor(WEIGHTS), overlap=overlap)
    assert np.array_equal(tiled, per_pixel(image))


def test_sigmoid_head_and_two_class_softmax():
    image = thin_lines_image(700, 333, seed=3)
    warm = tiled_class_map(image, meta_for((64, 64), head="sigmoid"), pixel_predictor(WARM))
    assert np.array_equal(warm, per_pixel(image, WARM)) and 0 < warm.mean() < 0.5
    two = WEIGHTS[[0, 3]]
    meta = ModelMeta(classes=["background", "warm"], input_size=(64, 64))
    assert np.array_equal(tiled_class_map(image, meta, pixel_predictor(two)), per_pixel(image, two))


def test_bgra_gray_and_16_bit_images_are_converted_like_the_letterbox():
    image = thin_lines_image(300, 200, seed=4)
    meta, predict = meta_for((64, 64)), pixel_predictor(WEIGHTS)
    truth = per_pixel(image)
    bgra = cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)
    assert np.array_equal(tiled_class_map(bgra, meta, predict), truth)
    assert np.array_equal(tiled_class_map(image.astype(np.uint16) * 257, meta, predict), truth)
    gray = image[:, :, 1]
    assert np.array_equal(tiled_class_map(gray, meta, predict), per_pixel(np.dstack([gray] * 3)))


def test_scale_half_predicts_the_resized_image_and_maps_back_by_pixel_centres():
    image = np.full((600, 1000, 3), 128, np.uint8)
    for c, colour in COLOURS_BGR.items():  # structures wide enough to survive halving
        cv2.rectangle(image, (c * 230, 50 + c * 40), (c * 230 + 150, 400 + c * 30), colour, -1)
        cv2.line(image, (0, 590 - c * 150), (999, 10 + c * 150), colour, 5)
    meta, predict = meta_for((64, 64)), pixel_predictor(WEIGHTS)
    out = tiled_class_map(image, meta, predict, scale=0.5)
    half = tiled_class_map(cv2.resize(image, (500, 300), interpolation=cv2.INTER_AREA), meta, predict)
    assert out.shape == (600, 1000)
    assert np.array_equal(out[::2, ::2], out[1::2, 1::2])  # each scaled pixel covers 2x2 original ones
    agree = (out[::2, ::2] == half).mean()  # PIL's bicubic here, OpenCV's area there: nearly the same
    assert agree > 0.97 and len(np.unique(half)) == 4, agree
    odd = tiled_class_map(thin_lines_image(5000, 7), meta, predict, scale=0.5)
    assert odd.shape == (7, 5000) and scaled_size((7, 5000), 0.5) == (4, 2500)


def test_tile_batch_changes_calls_not_answers_and_each_tile_is_predicted_once():
    image = thin_lines_image(555, 333, seed=6)
    meta = meta_for((64, 64))
    ys, xs = tile_grid((333, 555), (64, 64), 0.25)
    answers = []
    for tile_batch in (1, 3, 8):
        calls: list[int] = []
        answers.append(tiled_class_map(image, meta, pixel_predictor(WEIGHTS, calls), tile_batch=tile_batch))
        assert sum(calls) == len(ys) * len(xs) and max(calls) == tile_batch
        assert len(calls) == math.ceil(len(ys) * len(xs) / tile_batch)
    assert all(np.array_equal(answers[0], a) for a in answers[1:])


def test_tile_edges_are_outweighed_by_a_neighbours_centre():
    """A model that is wrong within 4 px of every tile edge is still right everywhere, except
    where only tile edges see the image: within 4 px of its border."""
    def edgy(batch):
        n, _, th, tw = batch.shape
        edge = np.ones((th, tw), bool)
        edge[4:-4, 4:-4] = False
        logits = np.zeros((n, 2, th, tw), np.float32)
        logits[:, 1] = np.where(edge, 1.0, -1.0)
        return logits

    meta = ModelMeta(classes=["ok", "seam"], input_size=(64, 64))
    out = tiled_class_map(np.zeros((301, 417, 3), np.uint8), meta, edgy, overlap=0.5)
    border = np.ones(out.shape, bool)
    border[4:-4, 4:-4] = False
    assert np.array_equal(out.astype(bool), border)


def test_grid_ends_at_the_border_with_the_asked_overlap():
    ys, xs = tile_grid((1080, 1920), (256, 256), 0.25)
    print(f"1920x1080, 256x256 tiles, overlap 0.25: {len(xs)} x {len(ys)} = {len(xs) * len(ys)} tiles")
    assert len(xs) * len(ys) == 60  # the count the module docstring states
    for length in (1, 100, 256, 257, 449, 1920, 5000):
        for overlap in (0.0, 0.25, 0.5, 0.9):
            starts = tile_starts(length, 256, overlap)
            if length <= 256:
                assert starts == [0]
                continue
            gaps = np.diff(starts)
            stride = 256 - math.floor(256 * overlap + 0.5)
            assert starts[0] == 0 and starts[-1] == length - 256 and (gaps > 0).all()
            assert gaps.max() <= stride  # overlap at least as asked
            assert (len(starts) - 2) * stride < length - 256  # and no more tiles than needed


def test_weights_are_centre_heavy_and_positive_everywhere():
    w = tile_weights((64, 96))
    assert w.shape == (64, 96) and w.dtype == np.float32
    assert w.min() > 0 and np.array_equal(w, w[::-1]) and np.array_equal(w, w[:, ::-1])
    assert w[31, 47] == w.max() > 0.99 and w[0, 0] < 1e-6
    assert (np.diff(w[31, :48]) > 0).all() and (np.diff(w[:32, 47]) > 0).all()


def test_8000x6000_in_bounded_memory():
    image = np.full((6000, 8000, 3), 128, np.uint8)
    expected = np.zeros((6000, 8000), np.uint8)
    for c, colour in COLOURS_BGR.items():  # a few thin structures, one on the last row
        for img, value in ((image, colour), (expected, c)):
            cv2.line(img, (c * 1000, 0), (8000 - c * 1500, 5999), value, 1)
            cv2.circle(img, (c * 2222, 3000), 7, value, -1)
    image[5999, ::2], expected[5999, ::2] = COLOURS_BGR[1], 1
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        out = tiled_class_map(image, meta_for(), pixel_predictor(WEIGHTS))
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"8000x6000 tiled: peak extra {peak / 2**20:.0f} MiB, {seconds:.1f} s")
    assert peak < 1.5e9
    assert np.array_equal(out, expected)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"scale": 0}, "scale"), ({"scale": -1.0}, "scale"), ({"scale": float("nan")}, "scale"),
        ({"scale": float("inf")}, "scale"), ({"overlap": 1.0}, "overlap"), ({"overlap": -0.1}, "overlap"),
        ({"overlap": float("nan")}, "overlap"), ({"tile_batch": 0}, "tile_batch"),
        ({"tile_batch": 2.5}, "tile_batch"),
    ],
)
def test_invalid_parameters_are_one_line_errors(kwargs, words):
    with pytest.raises(UnetDeployError) as e:
        tiled_class_map(np.zeros((10, 10, 3), np.uint8), meta_for((64, 64)), pixel_predictor(WEIGHTS), **kwargs)
    assert words in e.value.message and "\n" not in e.value.message


def test_a_predictor_with_the_wrong_output_is_a_one_line_error():
    with pytest.raises(UnetDeployError, match=r"expected \(1, 4, 64, 64\)") as e:
        tiled_class_map(np.zeros((10, 10, 3), np.uint8), meta_for((64, 64)), lambda b: b[:, :2])
    assert "\n" not in e.value.message
    with pytest.raises(UnetDeployError, match="empty"):
        tiled_class_map(np.zeros((0, 10, 3), np.uint8), meta_for((64, 64)), pixel_predictor(WEIGHTS))


@pytest.fixture(scope="module")
def colour_scene():
    """A 400x260 ``tests.models.color_image`` with 1-px lines of each class, its reference map and
    where that reference is decided (the two best integer logits differ)."""
    from .models import color_classes, color_image, color_logits

    image = color_image(11, (400, 260))
    rng = np.random.default_rng(11)
    for colour in COLOURS_BGR.values():
        for _ in range(5):
            p, q = rng.integers(0, (400, 260), 2), rng.integers(0, (400, 260), 2)
            cv2.line(image, tuple(int(v) for v in p), tuple(int(v) for v in q), colour, 1)
    top2 = np.sort(color_logits(image), axis=0)[-2:]
    return image, color_classes(image), top2[1] > top2[0]


@pytest.mark.parametrize("artefact", ["checkpoint", "onnx"])
def test_the_colour_unet_tiled_through_a_segmenter_is_the_per_pixel_answer(artefact, colour_scene, request):
    from unet_deploy.runtime import Segmenter

    path = request.getfixturevalue("color_checkpoint" if artefact == "checkpoint" else "exported_color")
    seg = Segmenter(path if artefact == "checkpoint" else path["onnx"], device="cpu", threads=1)
    image, truth, decided = colour_scene
    assert decided.mean() > 0.99
    tiled = tiled_class_map(image, seg.meta, seg.infer, scale=1.0, overlap=0.25, tile_batch=8)
    assert np.array_equal(tiled[decided], truth[decided])
    thin = decided & (np.isin(image, list(COLOURS_BGR.values())).all(axis=2))
    letterboxed = seg(image).mask  # what the Segmenter does today: 400 px squeezed into 64
    assert thin.sum() > 1000 and (letterboxed[thin] == truth[thin]).mean() < 0.5


def test_a_tiled_models_calibration_inputs_are_its_tiles(tmp_path):
    """int8 calibration of a tiled model sees what it sees at run time: tiles of the image at the tiling
    scale, not the whole image letterboxed (its defects would shrink several times)."""
    from unet_deploy.fileio import write_image
    from unet_deploy.formats.quantize import CALIB_TILES, calibration_inputs

    meta = ModelMeta(classes=CLASSES, input_size=(128, 128), tiling={"scale": 1.0, "overlap": 0.25})
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (300, 200, 3), dtype=np.uint8) for _ in range(2)]
    paths = [tmp_path / f"{i}.png" for i in range(2)]
    for image, path in zip(images, paths):
        write_image(path, image)
    inputs = calibration_inputs(paths, meta)
    # by hand: rows start at 0, 86, 172 (stride 128 - 32 = 96, spread to end at 300), columns at 0, 72
    starts = [(y, x) for y in (0, 86, 172) for x in (0, 72)]
    assert len(inputs) == 2 * len(starts) <= CALIB_TILES
    for k, x in enumerate(inputs):
        y0, x0 = starts[k % len(starts)]
        crop = images[k // len(starts)][y0 : y0 + 128, x0 : x0 + 128, ::-1].astype(np.float64) / 255.0
        expected = (crop - np.array(meta.mean)) / np.array(meta.std)
        assert x.shape == (1, 3, 128, 128) and x.dtype == np.float32
        np.testing.assert_allclose(x[0], expected.transpose(2, 0, 1), atol=1e-5)
    letterboxed = calibration_inputs(paths, ModelMeta(classes=CLASSES, input_size=(128, 128)))
    assert [x.shape for x in letterboxed] == [(1, 3, 128, 128)] * 2  # untiled: one letterboxed input per image
    from unet_deploy.tiling import tile_inputs

    spread = tile_inputs(images[0], meta, limit=4)  # 4 of 6 tiles, evenly over the raster order: 0, 1, 3, 4
    assert all(np.array_equal(a, inputs[i][0]) for a, i in zip(spread, (0, 1, 3, 4), strict=True))
