"""unet_deploy.metrics against confusion matrices counted by hand: absent classes, ignore 255, torch = numpy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unet_deploy import metrics

# 2x4 truth/prediction over 3 classes; 255 is ignored, class 2 never occurs.
TRUTH = np.array([[0, 0, 1, 1], [0, 255, 1, 0]], np.uint8)
PRED = np.array([[0, 1, 1, 1], [0, 2, 0, 0]], np.uint8)
# Counted by hand (row: truth, column: prediction); the 255 pixel (predicted 2) is not counted.
HAND = np.array([[3, 1, 0], [1, 2, 0], [0, 0, 0]])


def test_confusion_counts_as_by_hand_and_skips_ignore():
    conf = metrics.confusion(TRUTH, PRED, 3)
    assert conf.dtype == np.int64 and conf.tolist() == HAND.tolist()


def test_torch_and_numpy_inputs_give_the_same_matrix():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (2, 17, 23)).astype(np.uint8)
    truth[0, :3] = 255
    pred = rng.integers(0, 4, truth.shape).astype(np.int64)
    from_numpy = metrics.confusion(truth, pred, 4)
    from_torch = metrics.confusion(torch.from_numpy(truth), torch.from_numpy(pred), 4)
    assert isinstance(from_torch, np.ndarray) and from_torch.tolist() == from_numpy.tolist()
    assert from_numpy.sum() == truth.size - 3 * 23  # exactly the ignored pixels are missing


def test_absent_class_is_nan_and_left_out_of_the_mean():
    iou = metrics.iou_per_class(HAND)
    # class 0: tp 3, union 3 + 1 + 1 = 5; class 1: tp 2, union 2 + 1 + 1 = 4; class 2: absent.
    assert iou[:2].tolist() == [3 / 5, 2 / 4] and math.isnan(iou[2])
    dice = metrics.dice_per_class(HAND)
    assert dice[:2].tolist() == [6 / 8, 4 / 6] and math.isnan(dice[2])
    assert metrics.mean_iou(HAND) == pytest.approx((3 / 5 + 2 / 4) / 2)
    assert metrics.pixel_accuracy(HAND) == pytest.approx(5 / 7)


def test_a_class_only_predicted_counts_as_zero_iou():
    conf = np.array([[4, 1], [0, 0]])  # class 1 predicted once, never true
    assert metrics.iou_per_class(conf).tolist() == [4 / 5, 0.0]
    assert metrics.mean_iou(conf) == pytest.approx(0.4)


def test_summary_names_and_empty_matrix():
    s = metrics.summary(HAND, ["bg", "scratch", "spot"])
    assert list(s) == ["miou", "iou_bg", "iou_scratch", "iou_spot", "dice_bg", "dice_scratch", "dice_spot"]
    assert s["iou_scratch"] == 0.5 and math.isnan(s["iou_spot"])
    empty = np.zeros((3, 3), np.int64)
    assert math.isnan(metrics.mean_iou(empty)) and math.isnan(metrics.pixel_accuracy(empty))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.confusion(TRUTH, PRED[:, :3], 3)


def test_compare_masks_by_hand():
    """Two images: 'a' differs in 1 of 4 pixels, 'b' not at all; mIoU worked out on paper."""
    from unet_deploy.metrics import compare_masks

    truth = [np.array([[0, 0], [1, 1]]), np.ones((2, 2), int)]
    reference = [t.copy() for t in truth]
    candidate = [np.array([[0, 1], [1, 1]]), np.ones((2, 2), int)]
    c = compare_masks(reference, candidate, truth, num_classes=2, names=["a", "b"])
    assert (c.images, c.agreement, c.per_image) == (2, 100.0 * 7 / 8, (75.0, 100.0))
    assert (c.worst_agreement, c.worst_image) == (75.0, "a")
    # candidate: class 0 IoU 1/2 (1 hit, 1 missed), class 1 IoU 6/7 (6 hits, 1 false positive)
    assert c.miou_reference == 100.0
    assert c.miou == pytest.approx(100.0 * (1 / 2 + 6 / 7) / 2)
    assert c.miou_drop == pytest.approx(100.0 - c.miou)


def test_compare_masks_without_truth_measures_agreement_only():
    from unet_deploy.metrics import compare_masks

    c = compare_masks([np.zeros((3, 3), int)], [np.eye(3, dtype=int)], [None], num_classes=2)
    assert c.agreement == pytest.approx(100.0 * 6 / 9) and c.miou is None and c.miou_drop is None
    with pytest.raises(ValueError, match="differ in shape"):
        compare_masks([np.zeros((3, 3), int)], [np.zeros((3, 4), int)])


def test_defects_found_at_half_their_pixels_and_false_alarms_below_half():
    """Boundaries by hand: exactly half is found (and not a false alarm); two regions add up; min_area
    and kept-region scores decide which predicted components count."""
    from unet_deploy.metrics import defect_table, image_defects

    truth = np.zeros((20, 40), np.uint8)
    pred = np.zeros_like(truth)
    truth[1:5, 1:5] = 1  # 16 px; predicted on exactly 8 of them (+ 8 outside): found, and not a false alarm
    pred[1:5, 3:7] = 1
    truth[10:14, 1:11] = 1  # 40 px; two separate predicted strips of 12 + 12 inside it: found together
    pred[10:14, 1:4] = 1
    pred[10:14, 6:9] = 1
    truth[1:3, 20:30] = 2  # 20 px of class 2, predicted as class 1: missed; the class-1 region is a false alarm
    pred[1:3, 20:30] = 1
    pred[17, 35] = 2  # one-pixel class-2 region: a false alarm unless min_area drops it
    d = image_defects(truth, pred, 3)
    assert d.found().tolist() == [True, True, False]
    assert sorted(zip(d.pred_class.tolist(), d.pred_area.tolist(), d.false_alarms().tolist())) == \
        [(1, 12, False), (1, 12, False), (1, 16, False), (1, 20, True), (2, 1, True)]  # fmt: skip
    assert image_defects(truth, pred, 3, min_area=2).pred_area.tolist().count(1) == 0
    one = defect_table([d], 1)
    assert (one["truth"], one["found"], one["predicted"], one["false_alarms"]) == (2, 2, 4, 1)
    assert one["recall"] == 1.0 and one["precision"] == 0.75
    # kept regions given by score: the strip at x=6 scored 0.3, the others 0.9; at min_score 0.5 the
    # 40 px defect keeps 12 of its pixels (< 20): missed
    scores = {(1, 3, 1): 0.9, (1, 1, 10): 0.9, (1, 6, 10): 0.3, (1, 20, 1): 0.9, (2, 35, 17): 0.9}
    s = image_defects(truth, pred, 3, scores)
    assert s.found(0.0).tolist() == [True, True, False] and s.found(0.5).tolist() == [True, False, False]
    assert int(s.kept(0.5).sum()) == 4
