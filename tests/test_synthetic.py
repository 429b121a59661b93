"""Synthetic inspection data: deterministic, labelme JSON that converts back to the drawn masks, visible defects."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from unet_deploy.cli import main
from unet_deploy.data.labelme import convert_folder, read_labels_file
from unet_deploy.data.palette import read_mask
from unet_deploy.data.synthetic import CLASSES, generate, sample
from unet_deploy.errors import UnetDeployError


def test_json_round_trips_through_the_converter(tmp_path):
    paths = generate(tmp_path / "raw", count=12, size=(128, 96), seed=3, progress=False)
    assert [p.name for p in paths][:2] == ["synth_0000.jpg", "synth_0001.jpg"]
    assert read_labels_file(tmp_path / "raw" / "labels.txt") == ["_background_", *CLASSES[1:]]
    summary = convert_folder(tmp_path / "raw", tmp_path / "voc", progress=False)  # picks up raw/labels.txt
    assert summary.ok and len(summary.converted) == 12
    for i, stem in enumerate(sorted(summary.converted)):
        drawn = sample(3, i, (128, 96)).mask
        converted = read_mask(tmp_path / "voc" / "SegmentationClass" / f"{stem}.png")
        assert converted.shape == (96, 128)
        assert (converted == drawn).mean() >= 0.995
        data = json.loads((tmp_path / "raw" / f"{stem}.json").read_text())
        assert data["imagePath"] == f"{stem}.jpg" and (data["imageHeight"], data["imageWidth"]) == (96, 128)
        assert all(s["shape_type"] == "polygon" and s["label"] in CLASSES[1:] for s in data["shapes"])


def test_same_seed_same_files(tmp_path):
    a = generate(tmp_path / "a", count=3, size=(64, 64), seed=7, progress=False)
    b = generate(tmp_path / "b", count=3, size=(64, 64), seed=7, progress=False)
    c = generate(tmp_path / "c", count=3, size=(64, 64), seed=8, progress=False)
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes()
        assert pa.with_suffix(".json").read_bytes() == pb.with_suffix(".json").read_bytes()
    assert any(pa.read_bytes() != pc.read_bytes() for pa, pc in zip(a, c))


def test_defects_are_large_and_look_different_per_class():
    areas: dict[int, list[int]] = {1: [], 2: [], 3: []}
    contrast: dict[int, list[float]] = {1: [], 2: [], 3: []}
    dent_rims = []
    textures = set()
    for i in range(40):
        s = sample(0, i, (256, 256))
        gray = cv2.cvtColor(s.image, cv2.COLOR_BGR2GRAY).astype(np.float32)
        background = np.median(gray[s.mask == 0])
        textures.add(round(float(np.std(cv2.Sobel(gray, cv2.CV_32F, 1, 0)[s.mask == 0])) > 20))
        for c in (1, 2, 3):
            sel = s.mask == c
            if sel.any():
                n, _, stats, _ = cv2.connectedComponentsWithStats(sel.astype(np.uint8), connectivity=8)
                areas[c] += [int(a) for a in stats[1:, cv2.CC_STAT_AREA]]
                contrast[c].append(float(gray[sel].mean() - background))
        dent = (s.mask == 3).astype(np.uint8)
        if dent.any():  # a dent's outline is shadowed all round, not only on its dark side
            rim = dent.astype(bool) & ~cv2.erode(dent, np.ones((3, 3), np.uint8)).astype(bool)
            dent_rims.append(float(np.median(gray[rim]) - background))
    assert all(len(areas[c]) >= 5 for c in areas), {c: len(v) for c, v in areas.items()}
    assert min(areas[1]) >= 100 and min(areas[2]) >= 100 and min(areas[3]) >= 500  # no 1-px lines
    assert np.median(contrast[1]) > 40  # scratches bright
    assert np.median(contrast[2]) < -40  # spots dark
    assert len(textures) == 2  # both smooth-ish fabric and streaky metal occur
    assert max(dent_rims) < -30, dent_rims


def test_synth_command(tmp_path):
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "out"), "--count", "2", "--size", "64", "48",
                                       "--seed", "1"])
    assert result.exit_code == 0, result.output
    image = cv2.imread(str(tmp_path / "out" / "synth_0001.jpg"))
    assert image.shape == (48, 64, 3)
    assert (tmp_path / "out" / "labels.txt").is_file()
    with pytest.raises(UnetDeployError, match="at least 32x32"):
        sample(0, 0, (16, 16))


def test_only_spots_are_rust_coloured():
    """A rust-brown surface would make `spot` a colour, not a defect: backgrounds stay neutral or cool."""
    background_red, spot_red = [], []
    for i in range(60):
        s = sample(0, i, (256, 256))
        red_minus_blue = s.image[:, :, 2].astype(np.float32) - s.image[:, :, 0]
        background_red.append(np.median(red_minus_blue[s.mask == 0]))
        if (s.mask == 2).any():
            spot_red.append(np.median(red_minus_blue[s.mask == 2]))
    assert len(spot_red) >= 10
    assert max(background_red) < 15 < min(spot_red), (max(background_red), min(spot_red))


def test_hires_preset_has_small_defects_on_large_frames():
    from unet_deploy.data.synthetic import PRESETS

    s = sample(0, 0, **PRESETS["hires"])
    assert s.image.shape == (2048, 2448, 3) and s.mask.shape == (2048, 2448)
    assert 15 <= len(s.shapes) <= 35
    across = []
    for c in (1, 2, 3):
        n, labels = cv2.connectedComponents((s.mask == c).view(np.uint8), connectivity=8)
        for i in range(1, n):
            inside = np.pad((labels == i).view(np.uint8), 1)
            across.append(2 * cv2.distanceTransform(inside, cv2.DIST_L2, 5).max() - 1)  # a stroke's width
    assert len(across) == len(s.shapes)  # defects are kept apart, one component each
    assert 2.5 <= min(across) and max(across) <= 44 and min(across) < 10, sorted(across)
    assert (s.mask > 0).mean() < 0.05  # small defects on a large frame


def test_synth_preset_options_override_and_errors(tmp_path):
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "h"), "--count", "1", "--preset", "hires",
                                       "--size", "320", "256"])
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(tmp_path / "h" / "synth_0000.jpg")).shape == (256, 320, 3)
    data = json.loads((tmp_path / "h" / "synth_0000.json").read_text())
    assert 10 <= len(data["shapes"]) <= 35  # the preset's defect count (a few may find no free place)
    bad = CliRunner().invoke(main, ["synth", str(tmp_path / "b"), "--count", "1", "--defect-size", "50", "10"])
    assert bad.exit_code == 1 and "--defect-size 50 10" in bad.output and len(bad.output.strip().splitlines()) == 1
