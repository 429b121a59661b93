"""`unet-predict`: the output layout, a corrupt file among good ones, sources, --json; the inspection example."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.red import RECTS, red_image, red_model
from unet_deploy import Segmenter
from unet_deploy.data.palette import read_mask
from unet_deploy.data.synthetic import sample
from unet_deploy.cli.predict import command
from unet_deploy.predict import collect_images, output_stems

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def model(tmp_path):
    return red_model(tmp_path / "red.onnx")


def _photos(folder: Path, names: list[str], size: tuple[int, int] = (160, 120)) -> list[Path]:
    """Real-looking JPEGs (synthetic inspection images) named ``names`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in names]
    for i, p in enumerate(paths):
        cv2.imwrite(str(p), sample(7, i, size).image)
    return paths


def _run(*args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def test_output_layout_on_odd_sizes(tmp_path, model):
    src = tmp_path / "src"
    src.mkdir()
    for h, w in RECTS:
        cv2.imwrite(str(src / f"r{h}x{w}.png"), red_image((h, w)))
    out = tmp_path / "out"
    result = _run(model, src, "--out", out, "--batch-size", 3)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert (report["model"], report["backend"], report["device"]) == (str(model), "onnxruntime", "cpu")
    seg = Segmenter(model)
    for (h, w), entry in zip(sorted(RECTS, key=lambda hw: f"r{hw[0]}x{hw[1]}"), report["images"]):
        stem = f"r{h}x{w}"
        assert entry["file"] == str(src / f"{stem}.png") and entry["size"] == [h, w]
        with Image.open(out / "masks" / f"{stem}.png") as png:
            assert png.mode == "P" and png.size == (w, h)
        mask = read_mask(out / "masks" / f"{stem}.png")
        assert np.array_equal(mask, seg(src / f"{stem}.png").mask)
        assert entry["regions"][0]["class_name"] == "red" and entry["regions"][0]["area"] == int(mask.sum())
        x, y, bw, bh = entry["regions"][0]["bbox"]
        assert mask[y : y + bh, x : x + bw].all()
        overlay = cv2.imread(str(out / "overlays" / f"{stem}.jpg"))
        assert overlay.shape == (h, w, 3)
        assert set(entry["timings"]) == {"preprocess", "inference", "postprocess"}


def test_a_corrupt_file_is_reported_in_one_line_and_the_rest_is_written(tmp_path, model):
    src = tmp_path / "parts"
    good = _photos(src, ["a.jpg", "b.jpg", "b2.jpg"])  # sorted before broken.jpg
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (src / "notes.txt").write_text("not an image, not picked up from a folder")
    out = tmp_path / "out"
    result = _run(model, src, "--out", out)
    assert result.exit_code == 1
    error_lines = result.stderr.strip().splitlines()
    assert error_lines == [f"error: {src / 'broken.jpg'}: not a readable image (corrupt or unsupported format)"]
    assert "3 of 4 image(s)" in result.stdout and "1 failed" in result.stdout
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(p.stem + ".png" for p in good)
    assert len(list((out / "overlays").iterdir())) == len(good)
    images = json.loads((out / "report.json").read_text())["images"]
    assert [("error" in e) for e in images] == [False, False, False, True]
    broken = src / "broken.jpg"
    assert images[3] == {"file": str(broken), "error": f"{broken}: not a readable image (corrupt or unsupported format)"}


def test_sources_globs_files_and_json_lines(tmp_path, model):
    _photos(tmp_path / "seg", ["2011_000003.jpg", "2011_000006.jpg", "2011_000025.jpg"])
    a = _photos(tmp_path / "video", ["00000100.jpg", "00000101.jpg"])
    result = _run(model, str(tmp_path / "seg" / "2011_00000*.jpg"), a[0], a[1], a[0],
                  "--out", tmp_path / "o", "--json", "--min-area", 50, "--no-overlays")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(d["file"]).name for d in lines] == ["2011_000003.jpg", "2011_000006.jpg", a[0].name, a[1].name]
    assert all(r["area"] >= 50 for d in lines for r in d["regions"])
    assert "onnxruntime on cpu" in result.stderr  # info goes to stderr when stdout carries JSON
    assert not (tmp_path / "o" / "overlays").exists()
    assert lines == json.loads((tmp_path / "o" / "report.json").read_text())["images"]


def test_bad_sources_and_models_are_one_line_errors(tmp_path, model):
    for args, message in [
        ((model, tmp_path / "nope", "--out", tmp_path / "o"), "no such file or folder"),
        ((model, str(tmp_path / "*.png"), "--out", tmp_path / "o"), "no images"),
        ((tmp_path / "missing.onnx", model, "--out", tmp_path / "o"), "model file not found"),
    ]:
        result = _run(*args)
        assert result.exit_code == 1 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_repeated_stems_get_distinct_outputs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        cv2.imwrite(str(tmp_path / d / "x.png"), np.zeros((4, 4, 3), np.uint8))
    paths = collect_images([str(tmp_path / "**" / "*.png")])
    assert [p.parent.name for p in paths] == ["a", "b"] and output_stems(paths) == ["x", "x_1"]


def test_the_standalone_command_runs(tmp_path, model):
    (image,) = _photos(tmp_path / "in", ["part.jpg"])
    exe = Path(sys.executable).with_name("unet-predict")
    proc = subprocess.run([str(exe), str(model), str(image), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "masks" / f"{image.stem}.png").is_file()


def test_inspection_example_passes_and_fails_parts(tmp_path, model):
    parts = tmp_path / "parts"
    parts.mkdir()
    cv2.imwrite(str(parts / "clean.png"), np.full((120, 160, 3), 90, np.uint8))
    cv2.imwrite(str(parts / "small.png"), red_image((120, 160), (10, 20, 10, 30)))  # 10x20 = 200 px
    cv2.imwrite(str(parts / "large.png"), red_image((120, 160), (10, 90, 10, 150)))
    (parts / "corrupt.png").write_bytes(b"nope")
    log = tmp_path / "inspection.csv"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "inspect_folder.py"), str(model), str(parts),
         "--max-area", "red=1000", "--csv", str(log), "--save-failed", str(tmp_path / "failed")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # one part failed
    with log.open(newline="") as f:
        rows = {r["file"]: r for r in csv.DictReader(f)}
    assert {name: r["verdict"] for name, r in rows.items()} == {
        "clean.png": "PASS", "corrupt.png": "ERROR", "large.png": "FAIL", "small.png": "PASS"}
    assert rows["small.png"]["red"] == "200" and int(rows["large.png"]["red"]) > 1000
    assert "not a readable image" in rows["corrupt.png"]["detail"]
    assert (tmp_path / "failed" / "large.jpg").is_file()
    assert "large.png FAIL" in proc.stdout
