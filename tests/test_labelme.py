"""labelme conversion: masks agree with labelme's own reference masks, every shape type, broken files."""
from __future__ import annotations

import base64
import io
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from unet_deploy.cli import main
from unet_deploy.data.labelme import (
    IGNORE_ID,
    apply_orientation,
    class_ids,
    convert_folder,
    labelme_to_mask,
    parse_classes,
    read_class_names,
    read_labels_file,
    shape_to_mask,
)
from unet_deploy.data.palette import read_mask, save_palette_png, voc_palette
from unet_deploy.data.synthetic import generate
from unet_deploy.errors import UnetDeployError

REFERENCES = {
    "semantic_segmentation": "reference_voc/SegmentationClass",
    "video_annotation": "reference_voc/SegmentationClassPNG",
}


@pytest.mark.parametrize("example", sorted(REFERENCES))
def test_masks_agree_with_labelme_reference(labelme_dir, tmp_path, example):
    src = labelme_dir / example
    summary = convert_folder(src, tmp_path / "voc", labels_file=src / "labels.txt", viz=True, progress=False)
    assert summary.ok and summary.failed == []
    refs = sorted((src / REFERENCES[example]).glob("*.png"))
    assert sorted(summary.converted) == [p.stem for p in refs]
    for ref_path in refs:
        ours = read_mask(tmp_path / "voc" / "SegmentationClass" / f"{ref_path.stem}.png")
        ref = read_mask(ref_path)
        assert ours.shape == ref.shape
        agreement = float((ours == ref).mean())
        assert agreement >= 0.995, f"{ref_path.stem}: {agreement:.6f}"
        assert set(np.unique(ours)) == set(np.unique(ref))
        image = cv2.imread(str(tmp_path / "voc" / "JPEGImages" / f"{ref_path.stem}.jpg"))
        assert image.shape[:2] == ours.shape
        assert (tmp_path / "voc" / "SegmentationClassVisualization" / f"{ref_path.stem}.jpg").is_file()
    names = read_class_names(tmp_path / "voc")
    assert names == read_labels_file(src / "labels.txt")
    assert names[0] == "_background_"


def test_labels_file_follows_labelme_ids(labelme_dir):
    names = read_labels_file(labelme_dir / "semantic_segmentation" / "labels.txt")
    ids = class_ids(names)
    assert ids["_background_"] == 0 and ids["bottle"] == 5 and ids["person"] == 15
    assert ids["potted plant"] == 16 and ids["tv/monitor"] == 20
    assert ids["__ignore__"] == IGNORE_ID
    assert parse_classes("scratch, spot") == ["_background_", "scratch", "spot"]
    assert parse_classes("background,scratch") == ["background", "scratch"]
    with pytest.raises(UnetDeployError, match="repeat"):
        parse_classes("a,b,a")


def _geometric_area(shape: dict) -> float:
    """Area of the shape grown by half a pixel: PIL fills and outlines, so boundary pixels count."""
    pts = np.asarray(shape["points"], dtype=float)
    kind = shape["shape_type"]
    if kind == "rectangle":
        w, h = np.abs(pts[1] - pts[0])
        return w * h + (w + h) + math.pi / 4
    if kind in ("circle", "point"):
        r = float(np.hypot(*(pts[1] - pts[0]))) if kind == "circle" else 5.0
        return math.pi * (r + 0.5) ** 2
    if kind == "polygon":
        x, y = pts.T
        area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
        perimeter = float(np.linalg.norm(pts - np.roll(pts, 1, axis=0), axis=1).sum())
        return area + perimeter / 2 + math.pi / 4
    if kind in ("line", "linestrip"):  # a 10-px stroke along the segments
        return float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum()) * 10
    if kind == "mask":
        patch = np.array(Image.open(io.BytesIO(base64.b64decode(shape["mask"]))))
        return float((patch != 0).sum())
    raise AssertionError(kind)


def test_every_primitive_shape_type_rasterized(data_dir):
    data = json.loads((data_dir / "labelme_shapes" / "primitives.json").read_text())
    hw = (data["imageHeight"], data["imageWidth"])
    kinds = set()
    for shape in data["shapes"]:
        area = int(shape_to_mask(shape, hw).sum())
        expected = _geometric_area(shape)
        # PIL's wide lines (what labelme draws) snap their half-widths to whole pixels, so a
        # 10-px line is 9-11 px wide depending on its angle; the primitives' line is 4.5% thin.
        tol = 0.05 if shape["shape_type"] == "line" else 0.03
        assert abs(area - expected) <= tol * expected, (shape["label"], area, expected)
        kinds.add(shape["shape_type"])
    assert kinds == {"rectangle", "circle", "polygon", "line", "point", "linestrip", "mask"}


def test_primitives_convert_with_discovered_labels(data_dir, tmp_path):
    src = tmp_path / "prim"
    src.mkdir()
    for name in ("primitives.json", "primitives.jpg"):
        shutil.copy(data_dir / "labelme_shapes" / name, src / name)
    summary = convert_folder(src, tmp_path / "out", progress=False)
    assert summary.ok
    labels = ["circle", "line", "line_strip", "octagon", "point", "polygon", "rectangle"]
    assert summary.class_names == ["_background_", *labels]
    mask = read_mask(tmp_path / "out" / "SegmentationClass" / "primitives.png")
    assert set(np.unique(mask)) == set(range(len(labels) + 1))
    octagon = mask == labels.index("octagon") + 1  # pasted at the rounded corner (417, 305)
    ys, xs = np.nonzero(octagon)
    assert xs.min() >= 417 and ys.min() >= 305 and xs.max() < 517 and ys.max() < 405


def test_later_shapes_paint_over_and_clip_at_border(tmp_path):
    shapes = [
        {"label": "a", "points": [[-20, -20], [30, 30]], "shape_type": "rectangle"},
        {"label": "b", "points": [[10, 10], [25, 25]], "shape_type": "rectangle"},
        {"label": "__ignore__", "points": [[35, 35], [39.9, 39.9]], "shape_type": "rectangle"},
        {"label": "a", "points": [[36, 2], [50, 2], [50, 20]], "shape_type": "polygon"},  # leaves the image
    ]
    path = _write_labelme(tmp_path, "x.json", shapes, np.zeros((40, 40, 3), np.uint8))
    _, mask = labelme_to_mask(path, class_ids(["_background_", "a", "b"]))
    assert mask.shape == (40, 40)
    assert mask[0, 0] == 1 and mask[30, 30] == 1 and mask[31, 31] == 0
    assert (mask[10:26, 10:26] == 2).all()
    assert mask[37, 37] == IGNORE_ID
    assert (mask[2, 36:] == 1).all()


def test_tutorial_converts_from_embedded_image_data(labelme_dir, tmp_path):
    src = tmp_path / "tutorial"
    src.mkdir()
    shutil.copy(labelme_dir / "tutorial" / "apc2016_obj3.json", src)  # imagePath points at itself
    names = read_labels_file(labelme_dir / "tutorial" / "reference" / "label_names.txt")
    summary = convert_folder(src, tmp_path / "out", classes=names, progress=False)
    assert summary.ok and summary.converted == ["apc2016_obj3"]
    ours = read_mask(tmp_path / "out" / "SegmentationClass" / "apc2016_obj3.png")
    ref = read_mask(labelme_dir / "tutorial" / "reference" / "label.png")
    assert (ours == ref).mean() >= 0.995
    written = cv2.imread(str(tmp_path / "out" / "JPEGImages" / "apc2016_obj3.jpg"))
    original = cv2.imread(str(labelme_dir / "tutorial" / "apc2016_obj3.jpg"))
    assert np.array_equal(written, original)


def test_corrupt_json_and_unknown_label_one_line_each(tmp_path):
    src = tmp_path / "src"
    generate(src, 2, size=(96, 64), seed=0, progress=False)  # synth_0000/1 .jpg + .json, labels.txt
    (src / "broken.json").write_text('{"shapes": [{"label": "car", ')
    data = json.loads((src / "synth_0001.json").read_text())
    assert data["shapes"], "the synthetic image should carry a defect to relabel"
    data["shapes"][0]["label"] = "tractor"
    (src / "synth_0001.json").write_text(json.dumps(data))

    result = CliRunner().invoke(main, ["labelme", str(src), str(tmp_path / "out"), "--labels", str(src / "labels.txt")])
    assert result.exit_code == 1
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2
    assert any("broken.json" in ln and "corrupt JSON" in ln for ln in errors)
    assert any("synth_0001.json" in ln and "'tractor'" in ln for ln in errors)
    assert "Traceback" not in result.output
    assert [p.stem for p in (tmp_path / "out" / "SegmentationClass").glob("*.png")] == ["synth_0000"]

    summary = convert_folder(src, tmp_path / "out2", labels_file=src / "labels.txt", skip_unknown=True,
                             progress=False)
    assert sorted(summary.converted) == ["synth_0000", "synth_0001"] and summary.skipped_shapes == 1
    assert len(summary.failed) == 1


def test_nested_folders_odd_names_and_windows_paths(tmp_path):
    image = np.full((30, 40, 3), 90, np.uint8)
    nested = tmp_path / "src" / "line 2" / "café"
    nested.mkdir(parents=True)
    shapes = [{"label": "spot", "points": [[20, 15], [25, 15]], "shape_type": "circle"}]
    _write_labelme(nested, "part 1.json", shapes, image, image_name="part 1.png",
                   image_path="..\\café\\part 1.png")
    _write_labelme(tmp_path / "src", "part 1.json", shapes, image, image_name="part 1.bmp")
    summary = convert_folder(tmp_path / "src", tmp_path / "out", viz=True, progress=False)
    assert summary.ok, summary.failed
    assert sorted(summary.converted) == ["line 2_café_part 1", "part 1"]
    out = tmp_path / "out"
    assert (out / "JPEGImages" / "line 2_café_part 1.png").is_file()
    assert (out / "JPEGImages" / "part 1.bmp").is_file()
    assert read_mask(out / "SegmentationClass" / "line 2_café_part 1.png")[15, 20] == 1
    assert (out / "SegmentationClassVisualization" / "part 1.jpg").is_file()


def test_exif_orientation_applied_as_labelme_does(tmp_path):
    raw = np.zeros((20, 40, 3), np.uint8)
    raw[:5, :10] = 255
    pil = Image.fromarray(raw)
    exif = pil.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    pil.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100)
    shapes = [{"label": "spot", "points": [[0, 0], [5, 5]], "shape_type": "rectangle"}]
    (tmp_path / "r.json").write_text(json.dumps({"shapes": shapes, "imagePath": "r.jpg", "imageData": None}))
    image, mask = labelme_to_mask(tmp_path / "r.json", class_ids(["_background_", "spot"]))
    assert image.shape[:2] == mask.shape == (40, 20)
    assert image[2, 17].mean() > 200  # the white corner is now at the top right
    for orientation in range(1, 9):
        expected = np.array(ImageOps.exif_transpose(_with_orientation(raw, orientation)))
        assert np.array_equal(apply_orientation(raw, orientation), expected), orientation


def test_missing_image_and_class_names_errors(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"shapes": [], "imagePath": "gone.jpg", "imageData": None}))
    with pytest.raises(UnetDeployError, match="not found"):
        labelme_to_mask(tmp_path / "a.json", class_ids(["_background_", "x"]))
    with pytest.raises(UnetDeployError, match="class_names.txt"):
        read_class_names(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnetDeployError, match="no labelme"):
        convert_folder(tmp_path / "empty", tmp_path / "o", progress=False)


def test_palette_png_round_trip(tmp_path, labelme_dir):
    mask = (np.arange(64 * 5).reshape(64, 5) % 256).astype(np.uint8)
    save_palette_png(tmp_path / "m.png", mask)
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)
    with Image.open(tmp_path / "m.png") as img:
        assert img.mode == "P"
        assert np.array_equal(np.array(img.getpalette(), np.uint8).reshape(-1, 3), voc_palette())
    with Image.open(labelme_dir / "semantic_segmentation/reference_voc/SegmentationClass/2011_000003.png") as ref:
        pal = np.array(ref.getpalette(), np.uint8).reshape(-1, 3)
    assert np.array_equal(pal, voc_palette()[: len(pal)])  # labelme's colour map
    Image.fromarray(voc_palette()[mask]).save(tmp_path / "rgb.png")
    assert np.array_equal(read_mask(tmp_path / "rgb.png"), mask)


def _with_orientation(array: np.ndarray, orientation: int) -> Image.Image:
    pil = Image.fromarray(array)
    exif = pil.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    pil.save(buf, format="PNG", exif=exif.tobytes())
    return Image.open(io.BytesIO(buf.getvalue()))


def _write_labelme(folder: Path, name: str, shapes: list, image: np.ndarray, image_name: str | None = None,
                   image_path: str | None = None) -> Path:
    image_name = image_name or Path(name).with_suffix(".png").name
    ok, buf = cv2.imencode(Path(image_name).suffix, image)
    assert ok
    (folder / image_name).write_bytes(buf.tobytes())
    data = {"version": "5.7.0", "flags": {}, "shapes": shapes, "imagePath": image_path or image_name,
            "imageData": None, "imageHeight": image.shape[0], "imageWidth": image.shape[1]}
    path = folder / name
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path
