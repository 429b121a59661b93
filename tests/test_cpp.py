"""The C++ consumer (export/cpp, `unet_infer`): built with CMake against the installed torch, it must
give the Python runtime's masks and regions on generated photos, for TorchScript and AOTInductor models.

The build goes to export/cpp/build (incremental: a second run only relinks what changed). The test
is skipped only when cmake, a C++ compiler, OpenCV's C++ package or nlohmann::json cannot be had;
any other build failure fails it.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import one_torch_thread, run_unet_infer, warm_batchnorm
from tests.models import color_image, color_meta, color_unet

pytestmark = pytest.mark.slow  # every test here needs the CMake build of export/cpp (tests/conftest.py: unet_infer)


@pytest.fixture(scope="session")
def cpp_inputs(tmp_path_factory) -> list[Path]:
    """Generated photos (JPEG and PNG; shrunk 2-20x, square, wide and tall, colour patches that the
    colour model splits into all its classes) plus variants that take the other letterbox paths:
    gray 8-bit (Pillow), BGRA (alpha dropped), 16-bit (Pillow's float mode) and a small crop
    (enlarged, not shrunk)."""
    from unet_deploy.data.synthetic import sample

    out = tmp_path_factory.mktemp("cpp_inputs")
    base = sample(0, 2, (1280, 720)).image
    images = {
        "metal_500x375.jpg": sample(0, 0, (500, 375)).image,
        "fabric_640x480.png": sample(0, 1, (640, 480)).image,
        "wide_1280x720.jpg": base,
        "tall_200x330.png": sample(0, 3, (200, 330)).image,
        "patches_300x200.jpg": color_image(0, (300, 200)),
        "patches_128x128.png": color_image(1, (128, 128)),
        "gray.png": cv2.cvtColor(base, cv2.COLOR_BGR2GRAY),
        "bgra.png": cv2.cvtColor(base, cv2.COLOR_BGR2BGRA),
        "deep16.png": base.astype(np.uint16) * 256 + 100,
        "small_crop.png": base[100:141, 200:253],
    }
    for name, img in images.items():
        cv2.imwrite(str(out / name), img, [cv2.IMWRITE_JPEG_QUALITY, 95] if name.endswith(".jpg") else [])
    return [out / name for name in images]


@pytest.fixture(scope="session")
def cpp_models(tmp_path_factory) -> dict[str, Path]:
    """The hand-built colour UNet (tests/models.py: dark, bright and warm areas), exported by
    `unet-export`'s export_model to TorchScript and AOTInductor (.pt2), ModelMeta inside each."""
    from unet_deploy.export import export_model

    with one_torch_thread():
        return export_model((color_unet(), color_meta()), ["torchscript", "aoti"],
                            out_dir=tmp_path_factory.mktemp("cpp_models"), verbose=False)


@pytest.fixture(scope="session")
def cpp_runs(unet_infer, cpp_models, cpp_inputs, tmp_path_factory) -> dict[str, tuple[Path, list[dict]]]:
    """Each model through `unet_infer` on every input: (output folder, JSON lines)."""
    runs = {}
    for fmt, model in cpp_models.items():
        out = tmp_path_factory.mktemp(f"cpp_out_{fmt}")
        done = run_unet_infer(unet_infer, model, *cpp_inputs, "--out", out, "--device", "cpu", "--save-input")
        assert done.returncode == 0, done.stderr
        runs[fmt] = (out, [json.loads(line) for line in done.stdout.splitlines()])
    return runs


@pytest.mark.parametrize("fmt", ["torchscript", "aoti"])
@one_torch_thread()
def test_cpp_masks_and_regions_match_the_python_runtime(fmt, cpp_runs, cpp_models, cpp_inputs):
    from unet_deploy.data.palette import read_mask
    from unet_deploy.runtime import Segmenter

    out, lines = cpp_runs[fmt]
    refs = Segmenter(cpp_models[fmt], device="cpu", trust_code=True).predict_batch(cpp_inputs, batch_size=8)
    assert [line["file"] for line in lines] == [str(p) for p in cpp_inputs]
    agree, total, region_count = 0, 0, 0
    for path, line, ref in zip(cpp_inputs, lines, refs):
        mask = read_mask(out / "masks" / f"{path.stem}.png")  # a palette PNG: pixel = class id
        assert mask.shape == ref.mask.shape and line["size"] == list(ref.size)
        agree += int((mask == ref.mask).sum())
        total += mask.size
        want = ref.to_dict()["regions"]
        assert _unscored(line["regions"]) == _unscored(want), f"{path.name}: regions differ"
        assert all(abs(g["score"] - w["score"]) <= 1e-3 for g, w in zip(line["regions"], want)), \
            f"{path.name}: region scores differ"  # fmt: skip
        assert set(line["timings"]) == {"preprocess", "inference", "postprocess"}
        region_count += len(line["regions"])
        overlay = cv2.imread(str(out / "overlays" / f"{path.stem}.jpg"))
        assert overlay.shape == (*ref.size, 3)
    print(f"{fmt}: masks agree on {agree / total:.6%} of {total} pixels; {region_count} regions")
    assert agree == total, f"masks differ on {total - agree} of {total} pixels"
    assert region_count >= 2 * len(cpp_inputs), "the model must find regions for this test to mean something"
    report = json.loads((out / "report.json").read_text())
    assert (report["backend"], report["device"]) == (fmt, "cpu")
    assert report["images"] == lines


def _unscored(regions: list[dict]) -> list[dict]:
    """Regions without their scores (compared within 1e-3, not exactly)."""
    return [{k: v for k, v in g.items() if k != "score"} for g in regions]


def test_cpp_letterbox_is_pythons(cpp_runs, cpp_models, cpp_inputs):
    """The letterboxed pixels (--save-input) against preprocess.letterbox on the same decoded image."""
    from unet_deploy.fileio import read_image
    from unet_deploy.formats import sidecar_path
    from unet_deploy.meta import ModelMeta
    from unet_deploy.preprocess import letterbox, to_model_color

    out, _ = cpp_runs["torchscript"]
    meta = ModelMeta.load(sidecar_path(cpp_models["torchscript"]))
    diffs = {}
    for path in cpp_inputs:
        image = read_image(path)
        if image.ndim == 3 and image.shape[2] == 4:
            image = to_model_color(image, "BGR")
        ref, _ = letterbox(image, meta.input_size, meta.pad, meta.letterbox["fill"])
        got = cv2.imread(str(out / "inputs" / f"{path.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert got.shape == ref.shape and got.dtype == ref.dtype, path.name
        diffs[path.name] = float(np.abs(got.astype(np.int64) - ref.astype(np.int64)).mean())
    print("mean |C++ - Python| letterbox pixel difference:", diffs)
    assert all(v == 0 for v in diffs.values()), diffs  # JPEG included: both decoders agree here


@one_torch_thread()
def test_cpp_follows_every_metadata_option(unet_infer, cpp_inputs, tmp_path):
    """The other ModelMeta paths: gray model input, centred padding, a non-square input, mean/std
    normalisation, a one-logit sigmoid head (random weights, warmed BatchNorm), and the metadata
    read from the <stem>.json sidecar of a TorchScript file that has no extra file."""
    import torch

    from unet_deploy.data.palette import read_mask
    from unet_deploy.fileio import read_image
    from unet_deploy.formats import sidecar_path
    from unet_deploy.meta import ModelMeta
    from unet_deploy.model import UNet
    from unet_deploy.preprocess import preprocess
    from unet_deploy.runtime import Segmenter

    meta = ModelMeta(classes=["background", "defect"], input_size=(48, 80), letterbox={"pad": "center", "fill": 114},
                     color="GRAY", mean=[0.45], std=[0.25], head="sigmoid",
                     arch={"base_channels": 8, "in_channels": 1})  # fmt: skip
    torch.manual_seed(1)
    model = UNet(1, in_channels=1, base_channels=8)
    warm_batchnorm(model, in_channels=1)
    with torch.no_grad():  # centre the logits so that both classes occur
        x = torch.from_numpy(np.stack([preprocess(read_image(p), meta)[0] for p in cpp_inputs]))
        model.out.bias -= model(x).median()
    path = tmp_path / "gray.torchscript.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    meta.save(sidecar_path(path))
    done = run_unet_infer(unet_infer, path, *cpp_inputs, "--out", tmp_path / "out", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    seg = Segmenter(path, device="cpu")
    agree = total = defect = 0
    for image, line in zip(cpp_inputs, map(json.loads, done.stdout.splitlines())):
        ref = seg(image)
        mask = read_mask(tmp_path / "out" / "masks" / f"{image.stem}.png")
        agree, total, defect = agree + int((mask == ref.mask).sum()), total + mask.size, defect + int(mask.sum())
        want = ref.to_dict()["regions"]
        assert _unscored(line["regions"]) == _unscored(want), image.name
        assert all(abs(g["score"] - w["score"]) <= 1e-3 for g, w in zip(line["regions"], want)), image.name
    print(f"gray/center/sigmoid model: masks agree on {agree / total:.6%}, {defect / total:.1%} defect pixels")
    assert agree == total, f"masks differ on {total - agree} of {total} pixels"
    assert 0.05 < defect / total < 0.95, "both classes must occur for this test to mean something"


def test_cpp_min_area_drops_small_regions(unet_infer, cpp_models, cpp_inputs, cpp_runs):
    _, lines = cpp_runs["torchscript"]
    areas = sorted(r["area"] for line in lines for r in line["regions"])
    min_area = areas[len(areas) // 2]
    done = run_unet_infer(unet_infer, cpp_models["torchscript"], *cpp_inputs, "--min-area", min_area, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    kept = [json.loads(line)["regions"] for line in done.stdout.splitlines()]
    for before, after in zip(lines, kept):
        assert after == [r for r in before["regions"] if r["area"] >= min_area]


def test_cpp_clear_errors(unet_infer, cpp_models, cpp_inputs, tmp_path, tiny_checkpoint):
    model = cpp_models["torchscript"]
    done = run_unet_infer(unet_infer, tmp_path / "missing.torchscript.pt", cpp_inputs[0])
    assert done.returncode == 1 and "missing.torchscript.pt: model file not found" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not done.stdout

    for state in (tiny_checkpoint, _state_dict(tiny_checkpoint, tmp_path / "weights.pth")):
        done = run_unet_infer(unet_infer, state, cpp_inputs[0])
        assert done.returncode == 1 and "not an exported model" in done.stderr and "unet-export" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1

    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    done = run_unet_infer(unet_infer, model, bad, tmp_path / "gone.jpg", cpp_inputs[0], "--device", "cpu")
    assert done.returncode == 1
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0] == {"file": str(bad), "error": f"{bad}: not a readable image (corrupt or unsupported format)"}
    assert "image file not found" in lines[1]["error"]
    assert "regions" in lines[2]  # the good image after the bad ones still went through

    done = run_unet_infer(unet_infer, model, cpp_inputs[0], "--min-area", "lots")
    assert done.returncode == 1 and "--min-area 'lots' is not an integer >= 0" in done.stderr
    done = run_unet_infer(unet_infer, cpp_models["aoti"], cpp_inputs[0], "--device", "cuda")
    assert done.returncode == 1 and ("compiled for cpu, not cuda" in done.stderr or "no CUDA device" in done.stderr)


def test_cpp_repeated_names_get_suffixes(unet_infer, cpp_models, cpp_inputs, tmp_path):
    image = cpp_inputs[0]
    done = run_unet_infer(unet_infer, cpp_models["torchscript"], image, image, "--out", tmp_path, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == [f"{image.stem}.png", f"{image.stem}_1.png"]


def _state_dict(checkpoint: Path, path: Path) -> Path:
    import torch

    from unet_deploy.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    torch.save(model.state_dict(), path)
    return path
