"""`unet-deploy eval` against numbers worked out by hand.

The hand-built colour UNet (``tests.models``) labels a pixel by its colour, so an image of
flat-coloured squares on grey has a prediction known exactly, and region scores are the
softmax of ``color_logits / 255`` of the square's colour. The truth masks below differ from
that prediction in chosen ways (a shifted square, a missed speck, a false alarm, a large
defect half found), so every IoU, Dice, precision, recall and defect count has a value that
follows from the construction, computed here with numpy or written out from it.
"""
import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from unet_deploy.cli import main
from unet_deploy.data.palette import save_palette_png
from unet_deploy.metrics import SCORE_SWEEP

from .models import COLOR_CLASSES, color_classes, color_logits, color_meta, color_unet

N = 96  # the network's size: images are not resized, the prediction is color_classes(image)
GREY, DARK1, DARK2, DARK3 = (120, 125, 130), (20, 20, 20), (60, 70, 75), (40, 45, 50)
BRIGHT, WARM = (200, 210, 215), (70, 120, 190)


def _image_and_truth(with_speck: bool = True):
    image = np.zeros((N, N, 3), np.uint8)
    image[:] = GREY
    truth = np.zeros((N, N), np.uint8)
    image[5:15, 5:15], truth[5:15, 5:15] = DARK1, 1  # D1: 100 px, found exactly
    image[5:13, 30:38], truth[5:13, 30:38] = DARK2, 1  # D2: 64 px, found exactly
    truth[40:80, 60:92] = 1  # a 1280 px dark defect ...
    image[40:62, 60:92] = DARK3  # ... 704 px of it predicted (>= half): found
    if with_speck:
        truth[86:90, 5:9] = 1  # a 16 px dark speck the model does not see: missed
    image[30:38, 5:13] = BRIGHT  # predicted bright square ...
    truth[30:38, 10:18] = 2  # ... truth shifted by 5 px: 24 px shared < 32: missed + false alarm
    image[50:56, 50:56] = WARM  # warm square, no truth: a false alarm
    truth[92:96, 40:60] = 255  # ignored pixels (predicted background)
    return image, truth


def _softmax_of(bgr, c):
    logits = color_logits(np.array([[bgr]], np.uint8))[:, 0, 0] / 255.0
    e = np.exp(logits - logits.max())
    return float(e[c] / e.sum())


@pytest.fixture(scope="module")
def color96(tmp_path_factory):
    from unet_deploy.checkpoint import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("c96") / "color96.pt", color_unet(), color_meta(input_size=(N, N)),
                           epoch=1)


def _dataset(root, pairs, classes=COLOR_CLASSES):
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "class_names.txt").write_text("\n".join(classes) + "\n")
    for stem, (image, truth) in pairs.items():
        cv2.imwrite(str(root / "JPEGImages" / f"{stem}.png"), image)
        if truth is not None:
            save_palette_png(root / "SegmentationClass" / f"{stem}.png", truth)
    return root


def _eval(args):
    result = CliRunner().invoke(main, ["eval", *map(str, args)])
    return result


def test_pixels_defects_and_scores_equal_the_hand_computation(color96, tmp_path):
    image, truth = _image_and_truth()
    pred = color_classes(image)
    data = _dataset(tmp_path / "voc", {"a": (image, truth)})
    res = _eval([color96, data, "--out", tmp_path / "out", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert doc["images"] == 1 and doc["classes"] == COLOR_CLASSES
    (m,) = doc["models"]
    valid = truth != 255
    ious = []
    for c, name in enumerate(COLOR_CLASSES):
        t, p = (truth == c) & valid, (pred == c) & valid
        tp, fp, fn = (t & p).sum(), (~t & p).sum(), (t & ~p).sum()
        iou = tp / (tp + fp + fn)
        ious.append(iou)
        if c == 0:
            continue
        got = m["classes"][name]
        assert got["iou"] == pytest.approx(iou, abs=1e-6)
        assert got["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-6)
        assert got["precision"] == pytest.approx(tp / (tp + fp), abs=1e-6)
        assert got["recall"] == (pytest.approx(tp / (tp + fn), abs=1e-6) if tp + fn else 0.0)
    assert m["miou"] == pytest.approx(np.mean(ious), abs=1e-6)
    assert m["pixel_accuracy"] == pytest.approx((truth == pred)[valid].mean(), abs=1e-6)
    assert np.array_equal(np.array(m["confusion"]).sum(), valid.sum())

    dark, bright, warm = (m["classes"][n]["defects"] for n in ("dark", "bright", "warm"))
    assert {k: dark[k] for k in ("truth", "found", "predicted", "false_alarms")} == \
        {"truth": 4, "found": 3, "predicted": 3, "false_alarms": 0}  # fmt: skip
    assert dark["recall"] == 0.75 and dark["precision"] == 1.0
    assert [dark["by_size"][b]["truth"] for b in ("<64", "64-1023", ">=1024")] == [1, 2, 1]
    assert [dark["by_size"][b]["found"] for b in ("<64", "64-1023", ">=1024")] == [0, 2, 1]
    assert [dark["by_size"][b]["predicted"] for b in ("<64", "64-1023", ">=1024")] == [0, 3, 0]  # 100, 64, 704 px
    assert (bright["truth"], bright["found"], bright["predicted"], bright["false_alarms"]) == (1, 0, 1, 1)
    assert bright["recall"] == 0.0 and bright["precision"] == 0.0
    assert (warm["truth"], warm["found"], warm["predicted"], warm["false_alarms"]) == (0, 0, 1, 1)
    assert warm["recall"] is None and warm["precision"] == 0.0
    assert m["per_image"][0]["found"] == 3 and m["per_image"][0]["missed"] == 2
    assert m["per_image"][0]["false_alarms"] == 2

    # the min-score sweep: a dark defect stays found while its region's score (softmax of its colour) >= s
    scores = [_softmax_of(DARK1, 1), _softmax_of(DARK2, 1), _softmax_of(DARK3, 1)]
    expected = [sum(sc >= s for sc in scores) / 4 for s in SCORE_SWEEP]
    assert [r["recall"] for r in m["score_sweep"]["dark"]] == pytest.approx(expected)
    assert m["score_for_recall_95"]["dark"] is None  # the speck is never found: recall <= 0.75

    # without the speck, recall is 1 until the weakest region is dropped
    data2 = _dataset(tmp_path / "voc2", {"a": _image_and_truth(with_speck=False)})
    assert _eval([color96, data2, "--out", tmp_path / "out2", "--device", "cpu"]).exit_code == 0
    m2 = json.loads((tmp_path / "out2" / "eval.json").read_text())["models"][0]
    assert m2["score_for_recall_95"]["dark"] == max(s for s in SCORE_SWEEP if s <= min(scores))
    # --min-score drops regions the same way in the runtime
    cut = sorted(scores)[1] - 1e-3  # keeps the two most confident dark regions only
    assert _eval([color96, data2, "--out", tmp_path / "out3", "--device", "cpu", "--min-score", cut]).exit_code == 0
    m3 = json.loads((tmp_path / "out3" / "eval.json").read_text())["models"][0]
    assert m3["classes"]["dark"]["defects"]["found"] == 2 and m3["classes"]["dark"]["defects"]["predicted"] == 2
    for name in ("eval.md", "eval.html"):
        assert (tmp_path / "out" / name).stat().st_size > 1000


def test_eval_of_a_model_equals_eval_of_its_unet_predict_masks(color96, tmp_path):
    from unet_deploy.predict import predict_to_folder
    from unet_deploy.runtime import Segmenter

    rng = np.random.default_rng(0)
    pairs = {}
    for i in range(3):
        image, truth = _image_and_truth(with_speck=bool(i % 2))
        image = np.clip(image.astype(int) + rng.integers(-25, 26, image.shape), 0, 255).astype(np.uint8)  # noisy edges
        pairs[f"im{i}"] = (image, truth)
    data = _dataset(tmp_path / "voc", pairs)
    predict_to_folder(Segmenter(color96, device="cpu"), sorted((data / "JPEGImages").iterdir()), tmp_path / "pred")
    assert _eval([color96, data, "--out", tmp_path / "a", "--device", "cpu"]).exit_code == 0
    res = _eval([data, "--masks", tmp_path / "pred", "--out", tmp_path / "b"])
    assert res.exit_code == 0, res.output
    a, b = (json.loads((tmp_path / x / "eval.json").read_text())["models"][0] for x in ("a", "b"))
    assert b["backend"] == "masks" and a["per_image"] and len(a["per_image"]) == 3
    for m in (a, b):
        for key in ("model", "backend", "precision", "device", "ms_per_image"):
            m.pop(key)
        for row in m["per_image"]:
            row.pop("ms")
    assert a == b
    # plain PNGs without unet-predict's report.json: the same pixels and defects, no score sweep
    shutil.copytree(tmp_path / "pred" / "masks", tmp_path / "plain")
    assert _eval([data, "--masks", tmp_path / "plain", "--out", tmp_path / "c"]).exit_code == 0
    c = json.loads((tmp_path / "c" / "eval.json").read_text())["models"][0]
    assert c["classes"] == a["classes"] and c["score_sweep"] == {} and c["score_for_recall_95"]["dark"] is None


def test_bad_input_is_one_line_per_file_and_the_others_are_scored(color96, tmp_path):
    image, truth = _image_and_truth()
    data = _dataset(tmp_path / "voc", {"good": (image, truth), "nomask": (image, None), "small": (image, truth[:50]),
                                       "broken": (image, truth)})  # fmt: skip
    (data / "SegmentationClass" / "broken.png").write_bytes(b"not a png")
    res = _eval([color96, data, "--out", tmp_path / "out", "--device", "cpu"])
    assert res.exit_code == 1
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 3
    assert any("nomask.png" in ln and "no mask" in ln for ln in errors)
    assert any("broken.png" in ln and "cannot read the mask" in ln for ln in errors)
    assert any("small.png" in ln and "96x50" in ln and "image's size" in ln for ln in errors)
    doc = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert [r["file"].rsplit("/", 1)[-1] for r in doc["models"][0]["per_image"]] == ["good.png"]
    assert len(doc["problems"]) == 3

    # no masks at all; classes that share nothing with the model: one line each
    bare = _dataset(tmp_path / "bare", {"a": (image, None)})
    shutil.rmtree(bare / "SegmentationClass")
    res = _eval([color96, bare, "--out", tmp_path / "o2"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "no masks" in res.output
    other = _dataset(tmp_path / "other", {"a": (image, truth)}, ["background", "scratch", "spot", "dent"])
    res = _eval([color96, other, "--out", tmp_path / "o3"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "share none" in res.output
    # a partial mismatch is reported and scored
    part = _dataset(tmp_path / "part", {"a": (image, np.where(truth == 2, 0, truth).astype(np.uint8))},
                    ["background", "dark", "scratch"])
    res = _eval([color96, part, "--out", tmp_path / "o4", "--device", "cpu"])
    assert res.exit_code == 0 and "scratch unknown to the model" in res.output and "bright, warm not in DATA" in res.output
    doc = json.loads((tmp_path / "o4" / "eval.json").read_text())
    assert doc["classes"] == ["background", "dark", "scratch", "bright", "warm"]
    assert doc["models"][0]["classes"]["warm"]["defects"]["false_alarms"] == 1


def test_a_labelme_folder_is_converted_by_the_labelme_code(color96, tmp_path):
    import base64

    image, _ = _image_and_truth()
    ok, png = cv2.imencode(".png", image)
    shapes = [{"label": "dark", "points": [[5, 5], [14, 14]], "shape_type": "rectangle"},
              {"label": "bright", "points": [[10, 30], [17, 37]], "shape_type": "rectangle"}]  # fmt: skip
    src = tmp_path / "labelme"
    src.mkdir()
    (src / "a.json").write_text(json.dumps({"version": "5.2.1", "shapes": shapes, "imagePath": "a.png",
                                            "imageData": base64.b64encode(png.tobytes()).decode(),
                                            "imageHeight": N, "imageWidth": N}))  # fmt: skip
    (src / "labels.txt").write_text("__ignore__\n_background_\ndark\nbright\nwarm\n")
    assert _eval([color96, src, "--out", tmp_path / "a", "--device", "cpu"]).exit_code == 0
    assert CliRunner().invoke(main, ["labelme", str(src), str(tmp_path / "voc")]).exit_code == 0
    assert _eval([color96, tmp_path / "voc", "--out", tmp_path / "b", "--device", "cpu"]).exit_code == 0
    a, b = (json.loads((tmp_path / x / "eval.json").read_text()) for x in ("a", "b"))
    assert a["classes"][:4] == ["_background_", "dark", "bright", "warm"]
    assert a["models"][0]["per_image"][0]["file"] == str(src / "a.json")  # not the temporary conversion
    for doc in (a, b):
        doc.pop("dataset")
        for m in doc["models"]:
            m.pop("ms_per_image")
            for row in m["per_image"]:
                row.pop("ms"), row.pop("file")
    assert a == b and a["models"][0]["classes"]["dark"]["defects"]["found"] == 1


@pytest.mark.slow
def test_fp32_and_int8_openvino_side_by_side(color96, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from unet_deploy.export import export_model

    rng = np.random.default_rng(1)
    pairs = {}
    for i in range(6):
        image, truth = _image_and_truth(with_speck=bool(i % 2))
        pairs[f"im{i}"] = (np.clip(image.astype(int) + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8), truth)
    data = _dataset(tmp_path / "voc", pairs)
    fp32 = export_model(color96, "openvino", out_dir=tmp_path / "fp32", verbose=False)["openvino"]
    int8 = export_model(color96, "openvino", out_dir=tmp_path / "int8", precision="int8", calib=data, val=data,
                        min_agreement=95.0, verbose=False)["openvino"]  # fmt: skip
    res = _eval([fp32, int8, data, "--out", tmp_path / "out", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert [(m["backend"], m["precision"]) for m in doc["models"]] == [("openvino", "fp32"), ("openvino", "int8")]
    a, b = doc["models"]
    assert len(a["per_image"]) == len(b["per_image"]) == 6
    assert abs(a["miou"] - b["miou"]) < 0.05  # the gate kept int8 close to fp32
    html = (tmp_path / "out" / "eval.html").read_text()
    assert html.count("color96.int8.xml") >= 2 and html.count("color96.xml") >= 2


@pytest.mark.slow  # an ONNX export (~15 s) and a fresh interpreter
def test_eval_of_an_onnx_model_needs_neither_torch_nor_matplotlib_until_it_draws(color96, tmp_path):
    """The evaluation runs on the lean runtime; only eval.html's plots import matplotlib."""
    import subprocess
    import sys

    from unet_deploy.export import export_model

    onnx = export_model(color96, "onnx", out_dir=tmp_path / "m", verbose=False)["onnx"]
    data = _dataset(tmp_path / "voc", {"a": _image_and_truth()})
    script = f"""
import json, sys
sys.modules["torch"] = None
sys.modules["matplotlib"] = None
from unet_deploy.eval import evaluate, load_data
from unet_deploy.eval.report import markdown
doc = evaluate(load_data({str(data)!r}), [{str(onnx)!r}], device="cpu").to_dict()
markdown(doc)
print(json.dumps(doc["models"][0]["classes"]["dark"]["defects"]["found"]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "3"
