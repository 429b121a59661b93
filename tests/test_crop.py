"""The ROI crop: contours filtered by area, boxes with margins recorded, labelme annotations cropped along."""
from __future__ import annotations

import json

import cv2
import numpy as np
from click.testing import CliRunner

from unet_deploy.cli import main
from unet_deploy.data.crop import CropBox, boxes_from_crops_file, crop_folder, crop_labelme, find_rois
from unet_deploy.data.labelme import class_ids, labelme_to_mask, read_labels_file
from unet_deploy.data.synthetic import generate


def _parts_image() -> np.ndarray:
    image = np.full((200, 300, 3), 20, np.uint8)
    cv2.rectangle(image, (10, 10), (14, 14), (230, 230, 230), -1)  # 25 px: noise, below min-area
    cv2.circle(image, (100, 100), 30, (200, 200, 200), -1)  # ~2800 px: a part
    cv2.rectangle(image, (180, 5), (295, 195), (250, 250, 250), -1)  # ~21800 px: the fixture, above max-area
    return image


def test_find_rois_keeps_contours_within_area_range():
    image = _parts_image()
    boxes = find_rois(image, threshold=127, min_area=500, max_area=10000, margin=8)
    assert len(boxes) == 1
    (box,) = boxes
    assert box.xywh == [70 - 8, 70 - 8, 61 + 16, 61 + 16]
    assert 2700 < box.area < 2900
    assert len(find_rois(image, threshold=127, min_area=10, max_area=None, margin=0)) == 3
    # a margin never leaves the image
    (big,) = find_rois(image, threshold=127, min_area=20000, margin=50)
    assert big.xywh == [130, 0, 170, 200]
    # dark objects on a bright background
    (dark,) = find_rois(255 - image, threshold="otsu", min_area=500, max_area=10000, margin=0, invert=True)
    assert dark.xywh == [70, 70, 61, 61]


def test_crop_folder_records_boxes_and_crops_labelme(tmp_path):
    src = tmp_path / "src"
    (annotated_image,) = generate(src, 1, size=(320, 240), seed=3, progress=False)  # synth_0000.jpg + .json
    cv2.imwrite(str(src / "parts.png"), _parts_image())

    result = CliRunner().invoke(main, ["crop", str(src), str(tmp_path / "out"), "--threshold", "otsu",
                                       "--min-area", "2000", "--margin", "10"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "crops.json").read_text())
    assert record["params"]["margin"] == 10 and not record["failed"]
    crops = record["crops"]
    assert {c["file"] for c in crops} == set(boxes_from_crops_file(tmp_path / "out" / "crops.json"))

    ids = class_ids(read_labels_file(src / "labels.txt"))
    _, full = labelme_to_mask(src / "synth_0000.json", ids)
    assert full.any(), "the synthetic image should carry defects"
    original = cv2.imread(str(annotated_image))
    annotated = [c for c in crops if "labelme" in c]
    assert annotated and all(c["source"].endswith("synth_0000.jpg") for c in annotated)
    painted = 0
    for c in annotated:
        x, y, w, h = c["box"]
        crop = cv2.imread(str(tmp_path / "out" / c["file"]))
        assert crop.shape[:2] == (h, w)
        assert np.abs(crop.astype(int) - original[y : y + h, x : x + w]).mean() < 3  # JPEG re-encoded
        _, mask = labelme_to_mask(tmp_path / "out" / c["labelme"], ids)
        assert (mask == full[y : y + h, x : x + w]).mean() >= 0.999
        painted += int(np.count_nonzero(mask))
    assert painted > 0, "no crop carried a defect: the shape comparison above checked nothing"
    parts = [c for c in crops if c["source"].endswith("parts.png")]
    assert [c["box"] for c in parts] == [[170, 0, 130, 200], [60, 60, 81, 81]]  # top to bottom
    assert "labelme" not in parts[0]


def test_crop_labelme_drops_shapes_outside_the_box():
    data = {"version": "5.7.0", "imagePath": "a.jpg", "imageData": "xx", "imageHeight": 100, "imageWidth": 100,
            "shapes": [
                {"label": "in", "points": [[12, 12], [18, 12], [18, 18]], "shape_type": "polygon"},
                {"label": "far", "points": [[80, 80], [90, 90]], "shape_type": "rectangle"},
                {"label": "near", "points": [[35, 15]], "shape_type": "point"},  # disc reaches into the box
            ]}
    out = crop_labelme(data, CropBox(10, 10, 21, 21, 0.0), "a_0.jpg")
    assert [s["label"] for s in out["shapes"]] == ["in", "near"]
    assert out["shapes"][0]["points"] == [[2.0, 2.0], [8.0, 2.0], [8.0, 8.0]]
    assert (out["imagePath"], out["imageData"], out["imageHeight"], out["imageWidth"]) == ("a_0.jpg", None, 21, 21)
    assert data["shapes"][0]["points"][0] == [12, 12]  # the input is left alone


def test_crop_reports_unreadable_image_and_bad_options(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "bad.png").write_bytes(b"not a png")
    cv2.imwrite(str(src / "ok.png"), _parts_image())
    summary = crop_folder(src, tmp_path / "out", min_area=500, max_area=10000, progress=False)
    assert len(summary.crops) == 1 and len(summary.failed) == 1
    assert "bad.png" in summary.failed[0][1]
    result = CliRunner().invoke(main, ["crop", str(src), str(tmp_path / "o2"), "--min-area", "10", "--max-area", "5"])
    assert result.exit_code == 1 and "--max-area" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["crop", str(src), str(tmp_path / "o3"), "--threshold", "bright"])
    assert result.exit_code == 2 and "otsu" in result.output
