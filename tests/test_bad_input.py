"""Bad input in labelme conversion, crop and predict: one line per bad file, exit 1, the other files kept."""
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.red import red_model
from unet_deploy import Segmenter, UnetDeployError
from unet_deploy.cli.crop import command as crop_command
from unet_deploy.cli.labelme import command as labelme_command
from unet_deploy.cli.predict import command as predict_command
from unet_deploy.data.classes import read_class_names
from unet_deploy.data.labelme import convert_folder, labelme_to_mask
from unet_deploy.data.palette import read_mask
from unet_deploy.fileio import read_image

ROOT = Path(__file__).resolve().parents[1]


def _doc(shapes, image="img.png", **extra):
    return {"version": "5.5.0", "shapes": shapes, "imagePath": image, "imageData": None, **extra}


def _shape(label, points, kind="polygon"):
    return {"label": label, "points": points, "shape_type": kind}


def _project(folder: Path, docs: dict[str, object], size=(32, 32)) -> Path:
    """``folder`` with a gray image ``img.png`` and one JSON (text or object) per name."""
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "img.png"), np.full((size[1], size[0], 3), 90, np.uint8))
    for name, doc in docs.items():
        (folder / f"{name}.json").write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return folder


GOOD = _doc([_shape("spot", [[2, 2], [20, 2], [20, 20]])])


def _labelme(*args):
    return CliRunner().invoke(labelme_command, [str(a) for a in args], catch_exceptions=False)


def _one_line_errors(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith(("error:", "Error:"))]


# ---------------------------------------------------------------------------- labelme: wrong results


def test_label_discovery_refuses_more_than_255_classes(tmp_path):
    shapes = [_shape(f"c{i}", [[0, 0], [4, 0], [4, 4]]) for i in range(260)]
    src = _project(tmp_path / "src", {"many": _doc(shapes)})
    res = _labelme(src, tmp_path / "out")
    assert res.exit_code == 1
    assert len(res.output.strip().splitlines()) == 1 and "255" in res.output
    assert not (tmp_path / "out" / "class_names.txt").exists()


@pytest.mark.parametrize("kind,points", [
    ("polygon", [[-2.2e9, -2.2e9], [2.2e9, -2.2e9], [2.2e9, 2.2e9], [-2.2e9, 2.2e9]]),
    ("rectangle", [[-2.2e9, -2.2e9], [2.2e9, 2.2e9]]),
    ("circle", [[16, 16], [16, 16 + 1e9]]),
    ("circle", [[16, 16], [16, 16 + 5e8]]),
    ("linestrip", [[-2.2e9, 16], [2.2e9, 16]]),
])  # fmt: skip
def test_huge_coordinates_cover_the_image_fast(tmp_path, kind, points, monkeypatch):
    """Fast = bounded work: PIL is only ever asked to draw near the 32x32 image, never at 2e9."""
    from PIL import ImageDraw

    extents: list[float] = []
    for method in ("polygon", "rectangle", "ellipse", "line"):
        original = getattr(ImageDraw.ImageDraw, method)

        def spy(self, xy, *args, _original=original, **kwargs):
            extents.extend(abs(float(v)) for v in np.asarray(xy, dtype=np.float64).ravel())
            return _original(self, xy, *args, **kwargs)

        monkeypatch.setattr(ImageDraw.ImageDraw, method, spy)
    src = _project(tmp_path, {"a": _doc([_shape("spot", points, kind)])})
    _, mask = labelme_to_mask(src / "a.json", {"_background_": 0, "spot": 1})
    assert max(extents, default=0.0) <= 32 + 100  # the image grown by a few line widths at most
    if kind == "linestrip":  # a 10 px line across the middle, as labelme draws one
        assert mask[16].all() and not mask[0].any() and 9 <= mask[:, 5].sum() <= 11
    else:
        assert mask.all()


def test_huge_polygon_keeps_the_part_inside_the_image(tmp_path):
    # a band x in [3, 16] reaching far above and below: the same pixels as the band ending just outside
    far = [[3, -2.2e9], [16, -2.2e9], [16, 2.2e9], [3, 2.2e9]]
    near = [[3, -5], [16, -5], [16, 40], [3, 40]]
    src = _project(tmp_path, {"far": _doc([_shape("spot", far)]), "near": _doc([_shape("spot", near)])})
    ids = {"_background_": 0, "spot": 1}
    far_mask = labelme_to_mask(src / "far.json", ids)[1]
    assert far_mask[:, 3:17].all() and not far_mask[:, :3].any() and not far_mask[:, 17:].any()
    assert np.array_equal(far_mask, labelme_to_mask(src / "near.json", ids)[1])


@pytest.mark.parametrize("label", ["sc\nratch", " x ", "x ", "a\tb", "\x1b[31m", None, ["a"]])
def test_bad_labels_are_refused_in_one_line(tmp_path, label):
    src = _project(tmp_path / "src", {"bad": _doc([_shape(label, [[0, 0], [9, 0], [9, 9]])]), "good": GOOD})
    res = _labelme(src, tmp_path / "out", "--classes", "spot")
    assert res.exit_code == 1
    errors = _one_line_errors(res.output)
    assert len(errors) == 1 and "bad.json" in errors[0]
    assert (tmp_path / "out" / "SegmentationClass" / "good.png").is_file()
    # discovery skips the bad file; class_names.txt is never corrupted
    res = _labelme(src, tmp_path / "out2")
    assert res.exit_code == 1
    assert read_class_names(tmp_path / "out2") == ["_background_", "spot"]


@pytest.mark.parametrize("points", [
    ["12", "34", "56"], [["12", "34"], ["5", "6"], ["7", "8"]], [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
    [[1], [2], [3]], [[True, 2], [3, 4], [5, 6]], "abc", {"x": 1}, [[1, 2], [3, 4], [None, 6]],
])  # fmt: skip
def test_points_that_are_not_pairs_of_numbers_are_refused(tmp_path, points):
    src = _project(tmp_path, {"a": _doc([_shape("spot", points)])})
    with pytest.raises(UnetDeployError, match="points") as e:
        labelme_to_mask(src / "a.json", {"_background_": 0, "spot": 1})
    assert "\n" not in str(e.value)


def test_classes_must_be_text_or_names(tmp_path):
    src = _project(tmp_path / "src", {"good": GOOD})
    with pytest.raises(UnetDeployError, match="classes"):
        convert_folder(src, tmp_path / "out", classes=[1, 2], progress=False)


def test_a_declared_size_that_disagrees_with_the_image_is_refused(tmp_path):
    doc = _doc(GOOD["shapes"], imageHeight=40, imageWidth=32)
    src = _project(tmp_path / "src", {"other": doc, "good": _doc(GOOD["shapes"], imageHeight=32, imageWidth=32)})
    res = _labelme(src, tmp_path / "out", "--classes", "spot")
    assert res.exit_code == 1
    errors = _one_line_errors(res.output)
    assert len(errors) == 1 and "other.json" in errors[0] and "another image" in errors[0]
    assert (tmp_path / "out" / "SegmentationClass" / "good.png").is_file()


# ---------------------------------------------------------------------------- EXIF: one rule


def test_exif_orientation_matches_the_runtime_and_predict(tmp_path):
    img = np.zeros((24, 40, 3), np.uint8)
    img[:, :8] = (0, 0, 255)  # red on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(img[:, :, ::-1]).save(src / "cam.jpg", exif=exif.tobytes(), quality=95)
    doc = _doc([_shape("spot", [[0, 0], [4, 0], [4, 4]])], image="cam.jpg")
    (src / "cam.json").write_text(json.dumps(doc))
    image, mask = labelme_to_mask(src / "cam.json", {"_background_": 0, "spot": 1})
    assert image.shape[:2] == mask.shape == (40, 24)  # rotated upright as labelme shows it
    assert np.array_equal(image, read_image(src / "cam.jpg"))
    model = red_model(tmp_path / "red.onnx")
    seg_mask = Segmenter(model)(str(src / "cam.jpg")).mask
    assert seg_mask.shape == (40, 24) and seg_mask[:8].mean() > 0.9 and seg_mask[-8:].mean() < 0.1
    res = CliRunner().invoke(predict_command, [str(model), str(src / "cam.jpg"), "--out", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    assert np.array_equal(read_mask(tmp_path / "pred" / "masks" / "cam.png"), seg_mask)
    out = tmp_path / "ds"
    convert_folder(src, out, classes="spot", progress=False)
    assert read_image(out / "JPEGImages" / "cam.jpg").shape[:2] == (40, 24)  # the dataset reads upright too


# ---------------------------------------------------------------------------- one bad file, the batch goes on


def test_hostile_files_fail_alone_also_during_discovery(tmp_path):
    docs = {
        "nested": "[" * 100_000 + "]" * 100_000,
        "bigint": '{"shapes": [], "imageHeight": ' + "9" * 5000 + "}",
        "bigcoord": json.dumps(_doc([_shape("spot", [[0, 0], [1, 0], [2, 2]])])).replace("[2, 2]", "[" + "9" * 400 + ", 2]"),
        "longpath": _doc(GOOD["shapes"], image="x" * 300 + ".png"),
        "good": GOOD,
    }  # fmt: skip
    docs["longpath"]["imagePath"] = "x" * 300 + ".png"
    src = _project(tmp_path / "src", docs)
    (src / "longpath.json").write_text(json.dumps(docs["longpath"]))
    res = _labelme(src, tmp_path / "out")  # no --classes: discovery reads every file first
    assert res.exit_code == 1, res.output
    errors = _one_line_errors(res.output)
    assert {e.split(":")[1].strip().split("/")[-1] for e in errors} == {"nested.json", "bigint.json", "bigcoord.json", "longpath.json"}
    assert "Traceback" not in res.output
    assert (tmp_path / "out" / "SegmentationClass" / "good.png").is_file()
    assert read_class_names(tmp_path / "out") == ["_background_", "spot"]


# ---------------------------------------------------------------------------- unwritable output


def _out_cases(tmp_path):
    masks_file = tmp_path / "o1"
    masks_file.mkdir()
    (masks_file / "masks").write_text("x")
    (masks_file / "SegmentationClass").write_text("x")
    report_dir = tmp_path / "o2"
    (report_dir / "report.json").mkdir(parents=True)
    (report_dir / "class_names.txt").mkdir()
    (report_dir / "crops.json").mkdir()
    existing = tmp_path / "o3"
    existing.write_text("x")
    return ["/proc/unet_out", "/sys/unet_out", "/dev/full", masks_file, report_dir, existing]


def test_unwritable_outputs_are_one_line_and_exit_1(tmp_path):
    model = red_model(tmp_path / "red.onnx")
    src = _project(tmp_path / "src", {"good": GOOD})
    for out in _out_cases(tmp_path):
        for command, args in [
            (predict_command, [model, src / "img.png", "--out", out]),
            (labelme_command, [src, out, "--classes", "spot"]),
            (crop_command, [src, out]),
        ]:
            if command is crop_command and Path(out).name == "o1":
                continue  # crop writes no sub-folder
            res = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
            lines = [ln for ln in res.output.splitlines() if ln.strip()]
            assert res.exit_code == 1, (command.name, out, res.output)
            assert lines[-1].startswith("Error: ") and "Traceback" not in res.output, (command.name, out, res.output)


# ---------------------------------------------------------------------------- leftovers, messages, report


def test_kill_9_of_predict_leaves_nothing_partial_after_the_next_run(tmp_path):
    model = red_model(tmp_path / "red.onnx")
    src = tmp_path / "big"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(src / f"b{i}.png"), rng.integers(0, 255, (1500, 2000, 3), np.uint8))
    out = tmp_path / "pred"
    main = "import sys; from unet_deploy.cli.predict import command; command(sys.argv[1:])"
    cmd = [sys.executable, "-c", main, str(model), str(src), "--out", str(out), "-b", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob("masks/*.png")):
        time.sleep(0.02)
    time.sleep(0.2)  # into the next image's writes
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    # a stale temporary as a kill during a write leaves it (pid 2**22 + 1 is no live process)
    (out / "masks" / ".b0.png.4194305.0123abcd.tmp").write_bytes(b"partial")
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    hidden = [p for p in out.rglob(".*")]
    assert hidden == []
    report = json.loads((out / "report.json").read_text())
    for entry in report["images"]:
        mask = read_mask(out / entry["mask"])
        assert mask.shape == (1500, 2000)
        assert (out / entry["overlay"]).is_file()


def test_newlines_in_file_names_cannot_split_error_lines(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "evil\nError: spoofed.json").write_text("{not json")
    (src / "good.json").write_text(json.dumps(GOOD))
    cv2.imwrite(str(src / "img.png"), np.zeros((32, 32, 3), np.uint8))
    res = _labelme(src, tmp_path / "out", "--classes", "spot")
    assert res.exit_code == 1
    assert not any("spoofed" in ln and not ln.startswith("error:") for ln in res.output.splitlines())
    assert len(_one_line_errors(res.output)) == 1
    bad_image = tmp_path / "pics" / "bad\nerror: spoof.png"
    bad_image.parent.mkdir()
    bad_image.write_bytes(b"not an image")
    res = CliRunner().invoke(predict_command, [str(red_model(tmp_path / "r.onnx")), str(bad_image), str(src / "img.png"),
                                               "--out", str(tmp_path / "pred")])  # fmt: skip
    assert res.exit_code == 1
    assert not any(ln.startswith(" spoof") or ln == "error: spoof.png" for ln in res.output.splitlines()), res.output


def test_report_entries_name_their_mask_and_overlay(tmp_path):
    model = red_model(tmp_path / "red.onnx")
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, colour in ((a, (0, 0, 255)), (b, (0, 0, 0))):
        folder.mkdir()
        cv2.imwrite(str(folder / "good1.png"), np.full((20, 30, 3), colour, np.uint8))
    res = CliRunner().invoke(predict_command, [str(model), str(a), str(b), "--out", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    entries = json.loads((tmp_path / "pred" / "report.json").read_text())["images"]
    assert [e["mask"] for e in entries] == ["masks/good1.png", "masks/good1_1.png"]
    assert [e["overlay"] for e in entries] == ["overlays/good1.jpg", "overlays/good1_1.jpg"]
    assert read_mask(tmp_path / "pred" / entries[0]["mask"]).all()
    assert not read_mask(tmp_path / "pred" / entries[1]["mask"]).any()


# ---------------------------------------------------------------------------- property-based runs

_junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
_coord = st.one_of(st.floats(-50, 80), st.sampled_from([2.2e9, -2.2e9, 1e300, 10**400, float("nan")]), _junk)
_point = st.one_of(st.lists(_coord, min_size=2, max_size=2), _junk)
_shape_doc = st.fixed_dictionaries(
    {"label": st.one_of(st.sampled_from(["spot", "_background_", "__ignore__", "x\n", None]), _junk),
     "points": st.one_of(st.lists(_point, max_size=6), _junk),
     "shape_type": st.one_of(st.sampled_from(["polygon", "rectangle", "circle", "line", "linestrip", "point",
                                              "mask", "oriented_rectangle", "bogus\n", None]), _junk)},
    optional={"mask": _junk},
)  # fmt: skip
_labelme_doc = st.fixed_dictionaries(
    {"shapes": st.one_of(st.lists(_shape_doc, max_size=4), _junk)},
    optional={"imagePath": st.one_of(st.just("img.png"), _junk), "imageData": _junk,
              "imageHeight": st.one_of(st.just(32), _junk), "imageWidth": st.one_of(st.just(32), _junk)},
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=_labelme_doc)
def test_any_labelme_document_gives_a_mask_or_one_line(tmp_path_factory, doc):
    folder = tmp_path_factory.getbasetemp() / "hypo_labelme"
    if not (folder / "img.png").exists():
        _project(folder, {})
    path = folder / "doc.json"
    try:
        path.write_text(json.dumps(doc))
    except (ValueError, OverflowError):  # NaN and 10**400 are fine for json.dumps; anything else is not a document
        return
    try:
        _, mask = labelme_to_mask(path, {"_background_": 0, "spot": 1})
    except UnetDeployError as e:
        assert "\n" not in str(e)
    else:
        assert mask.shape == (32, 32) and mask.dtype == np.uint8


_dtypes = st.sampled_from([np.int8, np.int32, np.bool_, np.float16, np.float64, np.uint8, np.uint16, object])


@st.composite
def _arrays(draw):
    dims = draw(st.integers(0, 4))
    shape = [draw(st.integers(0, 40)) for _ in range(min(dims, 2))]
    if dims >= 3:
        shape.append(draw(st.integers(0, 5)))
    if dims == 4:
        shape.insert(0, draw(st.integers(0, 3)))
    dtype = draw(_dtypes)
    return np.zeros(shape, dtype) if dtype is object else np.random.default_rng(0).integers(0, 255, shape).astype(dtype)


@pytest.fixture(scope="module")
def red_segmenter(tmp_path_factory):
    return Segmenter(red_model(tmp_path_factory.mktemp("red") / "red.onnx"))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(array=_arrays())
def test_any_array_gives_a_result_or_one_line(red_segmenter, array):
    for call in (lambda: [red_segmenter(array)], lambda: red_segmenter.predict_batch([array])):
        try:
            results = call()
        except UnetDeployError as e:
            assert "\n" not in str(e)
            continue
        for result in results:
            assert result.error is not None or result.mask.shape == array.shape[:2]


def test_crop_with_a_broken_annotation_fails_alone(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("bad", "good"):
        img = np.zeros((80, 80, 3), np.uint8)
        img[20:60, 20:60] = 255
        cv2.imwrite(str(src / f"{name}.png"), img)
    (src / "bad.json").write_text(json.dumps(_doc([_shape("spot", [["12", "x"], [1]])], image="bad.png")))
    (src / "good.json").write_text(json.dumps(_doc([_shape("spot", [[20, 20], [40, 20], [40, 40]])], image="good.png")))
    res = CliRunner().invoke(crop_command, [str(src), str(tmp_path / "out"), "--min-area", "100"])
    assert res.exit_code == 1
    errors = _one_line_errors(res.output)
    assert len(errors) == 1 and "bad" in errors[0]
    assert (tmp_path / "out" / "good_0.png").is_file() and (tmp_path / "out" / "good_0.json").is_file()
    assert not list((tmp_path / "out").glob("bad_*"))
