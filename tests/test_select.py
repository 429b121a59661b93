"""`unet-deploy select`: images ranked by an uncertainty known by construction, near-duplicates passed over."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from unet_deploy.cli import main

from .models import redness_onnx, redness_uncertainty

# R - G sets the redness model's certainty (0: a coin toss); G and B set a distinct grey level per image
DIFFS = [0, 60, 3, 25, 1, 8, 120, 14]


def _image(i: int, diff: int, b: int = 0) -> np.ndarray:
    g = 20 + 14 * i
    image = np.empty((32, 32, 3), np.uint8)
    image[:] = (b, g, g + diff)
    image[8:24, 8:24] = (b, g, g)  # a coin-toss square in each: uncertainty is the mix, computed by hand
    return image


@pytest.fixture(scope="module")
def redness(tmp_path_factory):
    return redness_onnx(tmp_path_factory.mktemp("redness") / "redness.onnx")


def test_ranks_by_uncertainty_known_by_construction(redness, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    images = {f"img{i}.png": _image(i, d) for i, d in enumerate(DIFFS)}
    images["z_dup.png"] = _image(0, DIFFS[0], b=2)  # img0 again, grey differs by 0.2 of a level
    images["labelled.png"] = _image(1, 0)  # as uncertain as can be, but a person labelled it already
    for name, image in images.items():
        cv2.imwrite(str(pool / name), image)
    (pool / "labelled.json").write_text('{"shapes": []}')
    expected = sorted((n for n in images if n.startswith("img")), key=lambda n: -redness_uncertainty(images[n]))
    by_hand = [redness_uncertainty(images[n]) for n in expected]
    assert len(set(np.round(by_hand, 3))) == len(by_hand) and by_hand[0] > 0.99 and by_hand[-1] < 0.3

    out = tmp_path / "to_label"
    res = CliRunner().invoke(main, ["select", str(redness), str(pool), "--count", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    sel = json.loads((out / "selection.json").read_text())
    ranking = [r["file"].split("/")[-1] for r in sel["ranking"]]
    assert ranking == expected[:1] + ["z_dup.png"] + expected[1:]  # z_dup ties img0, comes after it
    for r in sel["ranking"]:
        name = r["file"].split("/")[-1]
        assert r["uncertainty"] == pytest.approx(redness_uncertainty(images[name]), abs=1e-4)
    assert [p["image"] for p in sel["picks"]] == expected[:4]  # the duplicate passed over, not picked
    assert sel["near_duplicates"][0]["file"].endswith("z_dup.png") and sel["near_duplicates"][0]["near"].endswith(expected[0])
    assert sel["labelled"][0].endswith("labelled.png") and all("labelled" not in n for n in ranking)
    for p in sel["picks"]:
        assert "uncertainty" in p["reason"] and (out / p["image"]).is_file()
        doc = json.loads((out / p["labelme"]).read_text())
        assert doc["imagePath"] == p["image"]
        red = DIFFS[int(p["image"][3:-4])] > 0  # the red ring is a region; a coin toss goes to background
        assert [s["label"] for s in doc["shapes"]] == (["red", "_background_"] if red else [])
    assert (out / "labels.txt").read_text().split() == ["__ignore__", "_background_", "red"]
    assert "| 1 | " + expected[0] in (out / "selection.md").read_text()

    # again into the same folder: the (now human) JSON of a pick is kept, the run goes on
    first = out / sel["picks"][0]["labelme"]
    first.write_text('{"shapes": [], "by": "a person"}')
    res = CliRunner().invoke(main, ["select", str(redness), str(pool), "--count", "4", "--out", str(out)])
    assert res.exit_code == 0 and "exists, kept" in res.output
    assert first.read_text() == '{"shapes": [], "by": "a person"}'


def test_video_frames_every_nth_and_near_duplicates(redness, tmp_path):
    video = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    diffs = [120, 120, 0, 0, 40, 40, 10, 10, 170, 170]  # each frame twice: the second is a near-duplicate
    for i, d in enumerate(diffs):
        writer.write(_image(i // 2, d))
    writer.release()
    out = tmp_path / "to_label"
    res = CliRunner().invoke(main, ["select", str(redness), str(video), "--count", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    sel = json.loads((out / "selection.json").read_text())
    frames = [int(p["file"].split("frame=")[1]) for p in sel["picks"]]
    assert sorted(frames[:1]) in ([2], [3]) and {f // 2 for f in frames} == {1, 3, 2}  # 0 then 10 then 40
    assert [f // 2 for f in frames] == [1, 3, 2]
    for p in sel["picks"]:
        assert cv2.imread(str(out / p["image"])).shape == (32, 32, 3)
    assert len(sel["near_duplicates"]) >= 2
    res = CliRunner().invoke(main, ["select", str(redness), str(video), "--every", "2", "--count", "5",
                                    "--out", str(tmp_path / "every2")])  # fmt: skip
    assert res.exit_code == 0, res.output
    sel = json.loads((tmp_path / "every2" / "selection.json").read_text())
    assert sorted(int(r["file"].split("frame=")[1]) for r in sel["ranking"]) == [0, 2, 4, 6, 8]


def test_bad_input_one_line(redness, tmp_path):
    res = CliRunner().invoke(main, ["select", str(redness), str(tmp_path / "none"), "--count", "2", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no such file or folder" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["select", str(redness), "0", "--count", "2", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "record a camera to a file first" in res.output
