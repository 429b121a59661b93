"""Region.score: the mean probability of a region's class over its original pixels, checked by hand.

The colour UNet's logits are known exactly (``tests.models.color_logits / 255``), so each
region's score is recomputed here with numpy: softmax of those logits, each original pixel
taking its network pixel by the letterbox's documented formula, averaged over the region's
pixels as ``cv2.connectedComponents`` labels them.
"""
import cv2
import numpy as np
import pytest

from unet_deploy.errors import UnetDeployError
from unet_deploy.postprocess import class_probabilities, find_regions, top_probability
from unet_deploy.preprocess import preprocess
from unet_deploy.runtime import Segmenter

from .models import WEIGHTS, color_image, color_logits


def _softmax(logits):
    e = np.exp(logits - logits.max(0))
    return e / e.sum(0)


def _hand_scores(mask, probs_at_original):
    """{(class, first contour pixel) -> mean probability} over each 8-connected component, by labelling."""
    out = {}
    for c in range(1, int(mask.max()) + 1):
        n, labels = cv2.connectedComponents((mask == c).astype(np.uint8), connectivity=8)
        for i in range(1, n):
            comp = labels == i
            out[(c, int(comp.sum()))] = out.get((c, int(comp.sum())), []) + [float(probs_at_original[c][comp].mean())]
    return out


def _check(result, probs_at_original):
    hand = _hand_scores(result.mask, probs_at_original)
    assert result.regions
    for r in result.regions:
        candidates = hand[(r.class_id, r.area)]
        assert min(abs(r.score - v) for v in candidates) < 1e-5, (r.class_name, r.area, r.score, candidates)


def test_scores_at_network_size_equal_the_softmax_mean(color_checkpoint):
    image = color_image(3, (64, 64))  # the network's size: no resize, logits are color_logits / 255
    result = Segmenter(color_checkpoint, device="cpu", tiling=False)(image)
    _check(result, _softmax(color_logits(image) / 255.0))


def test_scores_of_a_resized_image_average_over_original_pixels(color_checkpoint):
    image = color_image(5, (150, 97))
    seg = Segmenter(color_checkpoint, device="cpu", tiling=False)
    x, t = preprocess(image, seg.meta)  # the network input (RGB / 255): logits by hand from it
    rgb1 = np.concatenate([x * 255.0, np.ones_like(x[:1])])
    probs = _softmax(np.einsum("kc,chw->khw", WEIGHTS.astype(np.float64), rgb1) / 255.0)
    (h, w), (nh, nw), (top, left) = t.src_hw, t.new_hw, t.offset
    rows = top + np.minimum(np.floor((np.arange(h) + 0.5) * nh / h).astype(int), nh - 1)
    cols = left + np.minimum(np.floor((np.arange(w) + 0.5) * nw / w).astype(int), nw - 1)
    _check(seg(image), probs[:, rows][:, :, cols])


def test_tiled_scores_come_from_the_blended_logits(color_checkpoint):
    image = color_image(7, (150, 97))  # translation-equivariant model: the blend is the per-pixel logit
    result = Segmenter(color_checkpoint, device="cpu", tiling={"scale": 1.0, "overlap": 0.25})(image)
    _check(result, _softmax(color_logits(image) / 255.0))


def test_min_score_drops_regions_below_it(color_checkpoint):
    image = color_image(3, (64, 64))
    every = Segmenter(color_checkpoint, device="cpu", tiling=False)(image).regions
    cut = float(np.median([r.score for r in every]))
    kept = Segmenter(color_checkpoint, device="cpu", tiling=False, min_score=cut)(image).regions
    assert [r.to_dict() for r in kept] == [r.to_dict() for r in every if r.score >= cut]
    assert 0 < len(kept) < len(every)
    with pytest.raises(UnetDeployError, match="min_score"):
        Segmenter(color_checkpoint, device="cpu", min_score=1.5)


def test_a_sigmoid_head_scores_with_the_sigmoid():
    logit = np.full((1, 8, 10), -3.0, np.float32)
    logit[0, 1:3, 1:4] = [[0.5, 1.0, 2.0], [1.5, 3.0, 0.25]]  # one region of 6 pixels
    logit[0, 6, 8] = 4.0  # one of 1 pixel
    mask = (logit[0] > 0).astype(np.uint8)
    regions = find_regions(mask, ["bg", "defect"], confidence=top_probability(logit, mask))
    sig = 1 / (1 + np.exp(-logit[0].astype(np.float64)))
    assert [r.area for r in regions] == [6, 1]
    assert regions[0].score == pytest.approx(sig[1:3, 1:4].mean(), abs=1e-6)
    assert regions[1].score == pytest.approx(sig[6, 8], abs=1e-6)
    probs = class_probabilities(logit)  # two channels: background and defect
    assert probs.shape == (2, 8, 10)
    np.testing.assert_allclose(probs[1], sig, atol=1e-6)
    np.testing.assert_allclose(probs[0], 1 - sig, atol=1e-6)


def test_class_probabilities_and_top_probability_are_the_softmax():
    logits = np.random.default_rng(0).normal(0, 3, (4, 5, 6)).astype(np.float32)
    e = np.exp(logits.astype(np.float64))
    soft = e / e.sum(0)
    np.testing.assert_allclose(class_probabilities(logits), soft, atol=1e-6)
    np.testing.assert_allclose(top_probability(logits), soft.max(0), atol=1e-6)
    class_map = soft.argmax(0).astype(np.uint8)
    inside = top_probability(logits, class_map)
    np.testing.assert_allclose(inside, np.where(class_map > 0, soft.max(0), 0), atol=1e-6)
    # scores without logits stay unknown and the report leaves them out
    (region,) = find_regions(np.pad(np.ones((2, 2), np.uint8), 1), ["bg", "a"])
    assert region.score is None and "score" not in region.to_dict()


def test_serving_post_step_scores_and_drops_as_the_segmenter(color_checkpoint):
    from unet_deploy.serve import stages

    images = [color_image(s, (80, 70)) for s in (1, 2)]
    seg = Segmenter(color_checkpoint, device="cpu", tiling=False)
    cut = float(np.median([r.score for r in seg(images[0]).regions]))
    want = Segmenter(color_checkpoint, device="cpu", tiling=False, min_score=cut).predict_batch(images)
    x, t = stages.prepare(images, seg.meta)
    got = stages.finish(seg.infer(x), t, seg.meta, min_score=cut)
    for g, w in zip(got, want):
        assert [r.to_dict() for r in g.regions] == [r.to_dict() for r in w.regions]
        assert all(r.score >= cut for r in g.regions)


def test_unet_predict_writes_scores_and_honours_min_score(color_checkpoint, tmp_path):
    import json

    from click.testing import CliRunner

    from unet_deploy.cli import main

    cv2.imwrite(str(tmp_path / "a.png"), color_image(3, (64, 64)))
    for name, extra in (("all", []), ("cut", ["--min-score", "0.35"])):
        res = CliRunner().invoke(main, ["predict", str(color_checkpoint), str(tmp_path / "a.png"), "--out",
                                        str(tmp_path / name), "--device", "cpu", *extra])  # fmt: skip
        assert res.exit_code == 0, res.output
    every, kept = (json.loads((tmp_path / n / "report.json").read_text())["images"][0]["regions"] for n in ("all", "cut"))
    assert kept == [r for r in every if r["score"] >= 0.35] and 0 < len(kept) < len(every)
