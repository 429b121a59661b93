"""Result.uncertainty: mean normalised entropy of the class probabilities, 0 sure .. 1 uniform."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from unet_deploy.postprocess import uncertainty
from unet_deploy.predict import predict_stream_to_folder, predict_to_folder
from unet_deploy.preprocess import letterbox_geometry
from unet_deploy.runtime import Segmenter

from .models import redness_onnx, redness_uncertainty

# (B, G, R): R - G decides the redness model's answer, R == G is a coin toss
COLOURS = [(0, 0, 255), (0, 200, 210), (0, 100, 103), (50, 90, 90), (0, 255, 0), (30, 120, 118)]


@pytest.fixture(scope="module")
def redness(tmp_path_factory):
    return redness_onnx(tmp_path_factory.mktemp("redness") / "redness.onnx")


def test_known_values_by_hand():
    assert uncertainty(np.zeros((3, 4, 4), np.float32)) == pytest.approx(1.0)  # uniform over 3 classes
    assert uncertainty(np.stack([np.full((4, 4), 50.0), np.zeros((4, 4)), np.zeros((4, 4))])) == pytest.approx(0.0, abs=1e-12)
    two_way = np.stack([np.zeros((2, 2)), np.zeros((2, 2)), np.full((2, 2), -200.0)])
    assert uncertainty(two_way) == pytest.approx(math.log(2) / math.log(3), rel=1e-5)  # split 2 ways of 3
    half = np.stack([np.zeros((2, 4)), np.concatenate([np.zeros((2, 2)), np.full((2, 2), 90.0)], 1)])
    assert uncertainty(half) == pytest.approx(0.5, rel=1e-5)  # half the pixels uniform, half certain
    assert uncertainty(np.zeros((1, 3, 3), np.float32)) == pytest.approx(1.0)  # sigmoid head at p = 0.5
    assert uncertainty(np.full((2, 2, 2), np.nan, np.float32)) is None


def test_padding_is_left_out():
    """Letterbox padding is the model's to guess about, not the image's: only the image area counts."""
    logits = np.zeros((2, 32, 32), np.float32)
    t = letterbox_geometry((20, 40), 32)  # the image fills the top 16 rows
    logits[1, : t.new_hw[0], :] = 60.0
    assert t.new_hw == (16, 32) and uncertainty(logits, t) == pytest.approx(0.0, abs=1e-12)
    assert uncertainty(logits) == pytest.approx(0.5, rel=1e-5)


def test_segmenter_uncertainty_matches_the_hand_built_model(redness, tmp_path):
    seg = Segmenter(redness)
    images = [np.full((24, 40, 3), c, np.uint8) for c in COLOURS]  # letterboxed: padding below them
    for image, result in zip(images, seg.predict_batch(images)):
        assert result.uncertainty == pytest.approx(redness_uncertainty(image), abs=1e-4)
    expected = [redness_uncertainty(i) for i in images]
    assert min(expected) < 1e-3 and max(expected) == pytest.approx(1.0) and 0.2 < sorted(expected)[3] < 0.99
    for i, (image, colour) in enumerate(zip(images, COLOURS)):
        cv2.imwrite(str(tmp_path / f"{i}.png"), image)
    predict_to_folder(seg, sorted(tmp_path.glob("*.png")), tmp_path / "out", overlays=False, progress=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())["images"]
    for entry, image in zip(report, images):
        assert entry["uncertainty"] == pytest.approx(redness_uncertainty(image), abs=1e-4)


def test_stream_report_has_uncertainty(redness, tmp_path):
    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for c in COLOURS:
        writer.write(np.full((48, 64, 3), c, np.uint8))
    writer.release()
    summary = predict_stream_to_folder(Segmenter(redness), str(video), tmp_path / "out", progress=False)
    lines = [json.loads(line) for line in summary.report.read_text().splitlines()]
    assert len(lines) == len(COLOURS)
    got = [line["uncertainty"] for line in lines]
    assert np.corrcoef(got, [redness_uncertainty(np.full((1, 1, 3), c, np.uint8)) for c in COLOURS])[0, 1] > 0.95
