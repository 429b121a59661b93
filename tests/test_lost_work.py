"""No lost work (issue #30): labelme never deletes another file's image, outputs never overwrite
inputs, long legal names work, and a killed --save-video leaves nothing unreadable under its name."""
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

from tests.test_runtime import red_image, red_model
from unet_deploy.cli.labelme import command as labelme_command
from unet_deploy.cli.predict import command as predict_command
from unet_deploy.fileio import NAME_MAX, atomic_write_text, remove_stale_temporaries, temporary_name

ROOT = Path(__file__).resolve().parents[1]


def _doc(image: str) -> dict:
    shape = {"label": "spot", "points": [[2, 2], [20, 2], [20, 20]], "shape_type": "polygon"}
    return {"version": "5.5.0", "shapes": [shape], "imagePath": image, "imageData": None}


def _annotated(src: Path, stem: str, value: int) -> None:
    cv2.imwrite(str(src / f"{stem}.png"), np.full((32, 32, 3), value, np.uint8))
    (src / f"{stem}.json").write_text(json.dumps(_doc(f"{stem}.png")))


def test_labelme_keeps_the_image_of_every_stem_that_extends_another(tmp_path):
    """``part`` once deleted ``part.1.png`` and ``part.v2.png`` (a glob of ``part.*``) and still reported
    every file converted; ``..json`` globbed ``.*``."""
    src = tmp_path / "src"
    src.mkdir()
    stems = {"part": 10, "part.1": 20, "part.v2": 30, "part.1.2": 40, ".": 50}
    for stem, value in stems.items():
        _annotated(src, stem, value)
    for run in range(2):  # the rerun (which removes a same-stem image of another format) too
        res = CliRunner().invoke(labelme_command, [str(src), str(tmp_path / "out"), "--classes", "spot"])
        assert res.exit_code == 0, res.output
    images = {p.name: int(cv2.imread(str(p))[0, 0, 0]) for p in (tmp_path / "out" / "JPEGImages").iterdir()}
    assert images == {"part.png": 10, "part.1.png": 20, "part.v2.png": 30, "part.1.2.png": 40, "_..png": 50}
    masks = sorted(p.name for p in (tmp_path / "out" / "SegmentationClass").iterdir())
    assert masks == sorted(f"{n[:-4]}.png" for n in images)


def test_a_json_without_image_path_takes_its_own_stem_not_a_longer_one(tmp_path):
    from unet_deploy.data.labelme import labelme_to_mask

    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "part.1.png"), np.full((32, 32, 3), 20, np.uint8))  # sorts before part.png
    cv2.imwrite(str(src / "part.png"), np.full((32, 32, 3), 10, np.uint8))
    doc = _doc("")
    doc.pop("imagePath")
    (src / "part.json").write_text(json.dumps(doc))
    image, _ = labelme_to_mask(src / "part.json", {"_background_": 0, "spot": 1})
    assert int(image[0, 0, 0]) == 10


# ---------------------------------------------------------------------------- outputs over inputs


def test_predict_refuses_an_out_folder_whose_outputs_are_its_inputs(tmp_path):
    """``unet-predict q/masks --out q`` once wrote masks over the input images."""
    model = red_model(tmp_path / "red.onnx")
    q = tmp_path / "q"
    (q / "masks").mkdir(parents=True)
    cv2.imwrite(str(q / "masks" / "a.png"), red_image((3, 517)))
    before = (q / "masks" / "a.png").read_bytes()
    res = CliRunner().invoke(predict_command, [str(model), str(q / "masks"), "--out", str(q)])
    assert res.exit_code == 1 and "would overwrite the input" in res.output and "Traceback" not in res.output
    assert (q / "masks" / "a.png").read_bytes() == before and not (q / "report.json").exists()
    os.link(q / "masks" / "a.png", tmp_path / "linked.png")  # a hard link is the same file
    (tmp_path / "o" / "masks").mkdir(parents=True)
    os.link(q / "masks" / "a.png", tmp_path / "o" / "masks" / "linked.png")
    res = CliRunner().invoke(predict_command, [str(model), str(tmp_path / "linked.png"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "would overwrite the input" in res.output
    assert (q / "masks" / "a.png").read_bytes() == before


def _video(path: Path, count: int = 6, hw=(48, 64)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (hw[1], hw[0]))
    for i in range(count):
        writer.write(red_image(hw, (5, 20, 5 + i, 30 + i)))
    writer.release()
    return path


def test_save_video_or_report_over_the_input_video_is_refused(tmp_path):
    model = red_model(tmp_path / "red.onnx")
    video = _video(tmp_path / "in.avi")
    before = video.read_bytes()
    res = CliRunner().invoke(predict_command, [str(model), str(video), "--out", str(tmp_path / "p"),
                                               "--save-video", str(video)])  # fmt: skip
    assert res.exit_code == 1 and "would overwrite the input" in res.output
    assert video.read_bytes() == before


def test_save_video_makes_its_folder_and_writes_under_a_temporary_name(tmp_path):
    model = red_model(tmp_path / "red.onnx")
    video = _video(tmp_path / "in.avi")
    out = tmp_path / "new" / "deeper" / "overlay.mp4"
    res = CliRunner().invoke(predict_command, [str(model), str(video), "--out", str(tmp_path / "p"),
                                               "--save-video", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    cap = cv2.VideoCapture(str(out))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    assert [p.name for p in out.parent.iterdir()] == ["overlay.mp4"]


def test_kill_9_during_save_video_leaves_the_final_name_alone(tmp_path):
    model = red_model(tmp_path / "red.onnx")
    video = _video(tmp_path / "long.avi", count=400, hw=(240, 320))
    out = tmp_path / "overlay.mp4"
    out.write_bytes(b"the previous run's video")
    cmd = [sys.executable, "-m", "unet_deploy", "predict", str(model), str(video), "--out", str(tmp_path / "p"),
           "--save-video", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = tmp_path / "p" / "report.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not report.exists() or len(report.read_text().splitlines()) < 20):
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert out.read_bytes() == b"the previous run's video"
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".overlay.mp4.")]
    assert leftovers and remove_stale_temporaries(tmp_path) == leftovers


# ---------------------------------------------------------------------------- long names


def test_temporary_names_of_long_names_fit_the_file_system(tmp_path):
    for name in ("x" * 240 + ".png", "é" * 120 + ".json", "a" * 255):
        tmp = temporary_name(tmp_path / name)
        assert len(tmp.name.encode()) <= NAME_MAX
        assert atomic_write_text(tmp_path / name, "ok").read_text() == "ok"
        assert remove_stale_temporaries(tmp_path) == []  # nothing left behind, and the live name kept
    tmp.touch()
    assert tmp.exists() and remove_stale_temporaries(tmp_path) == []  # our own pid: live


def test_predict_and_labelme_take_a_240_character_file_name(tmp_path):
    stem = "n" * 240
    src = tmp_path / "src"
    src.mkdir()
    _annotated(src, stem, 90)
    res = CliRunner().invoke(labelme_command, [str(src), str(tmp_path / "ds"), "--classes", "spot"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ds" / "SegmentationClass" / f"{stem}.png").is_file()
    cv2.imwrite(str(src / f"{stem}.png"), red_image((3, 517)))
    res = CliRunner().invoke(predict_command, [str(red_model(tmp_path / "red.onnx")), str(src / f"{stem}.png"),
                                               "--out", str(tmp_path / "pred")])  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "pred" / "report.json").read_text())
    assert report["images"][0]["mask"] == f"masks/{stem}.png"


def test_output_names_made_from_long_input_names_stay_legal(tmp_path):
    """Two 250-character names in two folders (the second mask would be <250>_1.png, 256 bytes), and a
    labelme file two 200-character folders deep (its stem joins them: 401 characters)."""
    long = "m" * 250
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / f"{long}.png"), red_image((3, 517)))
    res = CliRunner().invoke(predict_command, [str(red_model(tmp_path / "red.onnx")), str(tmp_path / "a"),
                                               str(tmp_path / "b"), "--out", str(tmp_path / "pred")])  # fmt: skip
    assert res.exit_code == 0, res.output
    masks = json.loads((tmp_path / "pred" / "report.json").read_text())["images"]
    assert len({m["mask"] for m in masks}) == 2 and all((tmp_path / "pred" / m["mask"]).is_file() for m in masks)
    deep = tmp_path / "src" / ("d" * 200) / ("e" * 200)
    deep.mkdir(parents=True)
    _annotated(deep, "x", 70)
    res = CliRunner().invoke(labelme_command, [str(tmp_path / "src"), str(tmp_path / "ds"), "--classes", "spot"])
    assert res.exit_code == 0, res.output
    (image,) = (tmp_path / "ds" / "JPEGImages").iterdir()
    assert len(image.name.encode()) <= NAME_MAX and image.name.startswith("d" * 200 + "_eee")
