"""labelme pre-annotations: what `unet-predict --labelme` writes opens in labelme and converts back to its masks."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from unet_deploy.cli import main
from unet_deploy.data.classes import class_ids
from unet_deploy.data.palette import read_mask
from unet_deploy.data.prelabel import mask_shapes, write_prelabel
from unet_deploy.data.rasterize import shapes_to_mask
from unet_deploy.postprocess import find_regions

NAMES = ["background", "a", "b", "c"]
ROOT = Path(__file__).resolve().parents[1]


def _labelme():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        from labelme._label_file import LabelFile
        from labelme.utils.shape import shapes_to_label
    except Exception as e:  # not installed, or its Qt/imports fail here
        pytest.skip(f"labelme is not importable ({type(e).__name__}: {e}); the field checks still ran")
    return LabelFile, shapes_to_label


def _blobs(seed: int, hw=(120, 160), up: int = 4) -> np.ndarray:
    """Blocky regions as a letterboxed network's mask looks: discs and boxes of 3 classes, touching and
    overlapping, with background holes punched in half of them, upsampled by nearest neighbour."""
    rng = np.random.default_rng(seed)
    h, w = hw[0] // up, hw[1] // up
    small = np.zeros((h, w), np.uint8)
    for _ in range(12):
        c, x, y, r = int(rng.integers(1, 4)), int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(2, 10))
        if rng.random() < 0.5:
            cv2.circle(small, (x, y), r, c, -1)
        else:
            cv2.rectangle(small, (x, y), (x + 2 * r, y + r), c, -1)
        if rng.random() < 0.5:
            cv2.circle(small, (x, y), r // 2, 0, -1)
    return cv2.resize(small, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)


def _speckle(seed: int) -> np.ndarray:
    """The worst case: 30% of the pixels in 3 classes at random, every region touching others."""
    rng = np.random.default_rng(seed)
    return ((rng.random((48, 64)) < 0.3) * rng.integers(1, 4, (48, 64))).astype(np.uint8)


def _ring() -> np.ndarray:
    """Nested holes by hand: a ring of class 1 around background around a disc of 2 with a hole holding 3."""
    m = np.zeros((80, 80), np.uint8)
    cv2.circle(m, (40, 40), 35, 1, -1)
    cv2.circle(m, (40, 40), 25, 0, -1)
    cv2.circle(m, (40, 40), 18, 2, -1)
    cv2.rectangle(m, (34, 34), (46, 46), 0, -1)
    m[38:43, 38:43] = 3
    m[0:10, 0:80] = 2  # class 2 touching the ring along its top
    return m


def _paint(shapes: list[dict], hw) -> np.ndarray:
    return shapes_to_mask(shapes, hw, class_ids(NAMES))[0]


@pytest.mark.parametrize("kind", ["blobs", "speckle", "ring"])
def test_generated_holes_and_touching_regions_round_trip(kind):
    masks = {"blobs": [_blobs(s) for s in range(8)], "speckle": [_speckle(s) for s in range(4)], "ring": [_ring()]}[kind]
    for m in masks:
        regions = find_regions(m, NAMES)
        # every vertex (epsilon 0) and mask shapes: every pixel back
        assert np.array_equal(_paint(mask_shapes(m, regions, "polygon", epsilon=0), m.shape), m)
        assert np.array_equal(_paint(mask_shapes(m, regions, "mask"), m.shape), m)
        shapes = mask_shapes(m, regions)  # simplified: at least 99.8% (the stated bound)
        assert (_paint(shapes, m.shape) == m).mean() >= 0.998
        assert sum(s["label"] != "background" and s["label"] != "_background_" for s in shapes) == len(regions)
    if kind == "ring":  # the holes are background polygons painted after the region around them
        labels = [s["label"] for s in mask_shapes(masks[0], find_regions(masks[0], NAMES))]
        assert labels.count("_background_") == 2
        assert labels.index("_background_") > labels.index("a")


def test_labelme_reads_and_paints_the_same(tmp_path):
    """labelme's own reader and its own converter (shapes_to_label) give back the mask."""
    LabelFile, shapes_to_label = _labelme()
    m = _ring()
    image = tmp_path / "img" / "ring.png"
    image.parent.mkdir()
    cv2.imwrite(str(image), np.full((*m.shape, 3), 128, np.uint8))
    for kind in ("polygon", "mask"):
        path = write_prelabel(tmp_path / kind / "ring.json", image, m, find_regions(m, NAMES), kind)
        lf = LabelFile(str(path))
        assert lf.imagePath == "../img/ring.png" and lf.imageData  # found the image through the relative path
        ids = {"_background_": 0, **{n: i for i, n in enumerate(NAMES) if i}}
        painted, _ = shapes_to_label(m.shape, lf.shapes, ids)
        agreement = (painted == m).mean()
        assert agreement == 1.0 if kind == "mask" else agreement >= 0.998


def _check_labelme_fields(doc: dict) -> None:
    """The keys and types labelme 5.x writes (its LabelFile.save and Shape)."""
    assert set(doc) == {"version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth"}
    assert isinstance(doc["version"], str) and doc["version"].startswith("5.")
    assert doc["flags"] == {} and doc["imageData"] is None
    assert isinstance(doc["imageHeight"], int) and isinstance(doc["imageWidth"], int)
    for s in doc["shapes"]:
        assert set(s) == {"label", "points", "group_id", "description", "shape_type", "flags", "mask"}
        assert isinstance(s["label"], str) and s["shape_type"] in ("polygon", "mask")
        assert all(len(p) == 2 and all(isinstance(v, (int, float)) for v in p) for p in s["points"])
        assert len(s["points"]) >= (3 if s["shape_type"] == "polygon" else 2)
        assert isinstance(s["description"], str) and s["group_id"] is None and s["flags"] == {}
        assert (s["mask"] is None) == (s["shape_type"] == "polygon")


@pytest.mark.parametrize("shapes", ["polygon", "mask"])
def test_predict_labelme_round_trip_on_real_photos(labelme_dir, color_checkpoint, tmp_path, shapes):
    """unet-predict --labelme on labelme's photos, then `unet-deploy labelme` on its JSONs: the masks again."""
    photos = sorted(labelme_dir.glob("*segmentation/*.jpg")) + sorted((labelme_dir / "video_annotation").glob("*.jpg"))[:3]
    out = tmp_path / "pred"
    res = CliRunner().invoke(main, ["predict", str(color_checkpoint), *map(str, photos), "--out", str(out),
                                    "--no-overlays", "--labelme", "--labelme-shapes", shapes])  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())["images"]
    jsons = sorted((out / "labelme").glob("*.json"))
    assert len(jsons) == len(report) == len(photos)  # the two segmentation folders share stems: _1 added
    for js in jsons:
        _check_labelme_fields(json.loads(js.read_text()))
    res = CliRunner().invoke(main, ["labelme", str(out / "labelme"), str(tmp_path / "voc"),
                                    "--labels", str(out / "labelme" / "labels.txt")])  # fmt: skip
    assert res.exit_code == 1 and "leaves" in res.output  # imagePath reaches the photos outside SRC (#30)
    res = CliRunner().invoke(main, ["labelme", str(out / "labelme"), str(tmp_path / "voc"), "--allow-outside-images",
                                    "--labels", str(out / "labelme" / "labels.txt")])  # fmt: skip
    assert res.exit_code == 0, res.output
    points = []
    for entry in report:
        stem = Path(entry["mask"]).stem
        wrote = read_mask(out / entry["mask"])
        back = read_mask(tmp_path / "voc" / "SegmentationClass" / f"{stem}.png")
        assert len(np.unique(wrote)) > 1  # the model found regions on this photo
        agreement = (back == wrote).mean()
        assert agreement == 1.0 if shapes == "mask" else agreement >= 0.995, (stem, agreement)
        doc = json.loads((out / "labelme" / f"{stem}.json").read_text())
        points += [len(s["points"]) for s in doc["shapes"] if s["shape_type"] == "polygon"]
    if shapes == "polygon":  # unsimplified: every pixel back; simplified: fewer points per shape
        exact = []
        for e in report:
            wrote = read_mask(out / e["mask"])
            unsimplified = mask_shapes(wrote, find_regions(wrote, NAMES), epsilon=0)
            assert np.array_equal(_paint(unsimplified, wrote.shape), wrote)  # diagonal crossings patched
            exact += [len(s["points"]) for s in unsimplified]
        assert np.mean(points) < np.mean(exact)


def test_existing_json_is_kept_and_the_others_go_on(labelme_dir, color_checkpoint, tmp_path):
    photos = sorted((labelme_dir / "video_annotation").glob("*.jpg"))[:3]
    out = tmp_path / "pred"
    human = out / "labelme" / f"{photos[1].stem}.json"
    human.parent.mkdir(parents=True)
    human.write_text('{"shapes": [], "note": "drawn by a person"}')
    res = CliRunner().invoke(main, ["predict", str(color_checkpoint), *map(str, photos), "--out", str(out),
                                    "--no-overlays", "--labelme"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert human.read_text() == '{"shapes": [], "note": "drawn by a person"}'
    assert sum("exists, kept" in line for line in res.output.splitlines()) == 1
    for p in (photos[0], photos[2]):
        assert json.loads((out / "labelme" / f"{p.stem}.json").read_text())["shapes"]
    report = json.loads((out / "report.json").read_text())["images"]
    assert [("labelme_kept" in e) for e in report] == [False, True, False]


def test_labelme_refused_for_a_video(color_checkpoint, tmp_path):
    res = CliRunner().invoke(main, ["predict", str(color_checkpoint), "line.mp4", "--out", str(tmp_path), "--labelme"])
    assert res.exit_code == 1 and "unet-deploy select" in res.output and "Traceback" not in res.output


def test_score_goes_into_the_description():
    m = _ring()
    regions = find_regions(m, NAMES)
    for r, s in zip(regions, (0.91, 0.5, 0.25, 0.999)):
        r.score = s  # Region.score comes with the eval branch; the writer takes it where present
    described = {s["label"]: s["description"] for s in mask_shapes(m, regions) if s["label"] != "_background_"}
    assert described["a"] == "score 0.910"


_KILL_SCRIPT = """
import json, sys, numpy as np
from pathlib import Path
from unet_deploy.data.prelabel import mask_shapes, labelme_document
from unet_deploy.fileio import atomic_write_new
from unet_deploy.postprocess import find_regions
rng = np.random.default_rng(0)
m = ((rng.random((200, 200)) < 0.3) * rng.integers(1, 4, (200, 200))).astype(np.uint8)
doc = labelme_document(mask_shapes(m, find_regions(m, ["background", "a", "b", "c"]), epsilon=0), "x.png", m.shape)
data = (json.dumps(doc, indent=2) * 1).encode() + b" " * 30_000_000  # ~33 MB: each write takes a while
print("ready", flush=True)
for i in range(10000):
    atomic_write_new(Path(sys.argv[1]) / f"{i}.json", data)  # what write_prelabel writes through
"""


def test_kill_9_leaves_no_half_written_json(tmp_path):
    """Large JSONs written in a loop, the writer killed while one is being written: every JSON parses whole."""
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert proc.stdout.readline().strip() == b"ready"
    deadline = time.time() + 60
    while not (list(tmp_path.glob(".*.tmp")) and list(tmp_path.glob("*.json"))) and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".*.tmp")), "the kill should have caught a write in progress"
    assert list(tmp_path.glob("*.json"))
    for js in tmp_path.glob("*.json"):
        assert json.loads(js.read_text())["shapes"]
