"""C++ `unet_infer` against the Python reference functions on the same artefacts: the top-left and
rect letterboxes, tiled inference on a large image (and a --tile-scale override) and on labelme's real
example photos, EXIF-oriented
images, a comma-decimal locale, the report's mask/overlay names for same-stem inputs, the palette
PNG as Pillow decodes it, and one-line refusals of crafted metadata.

The model is tests/models.py's colour UNet (four classes over large areas) with every zeroed
weight given small random values, so that its answer depends on context: a tile's border, the
reflect padding and the blend weights change logits, and agreement means the same tiles were
blended the same way. The Python references are built from unet_deploy.preprocess, .tiling and
.postprocess directly, so they do not depend on how the runtime wires them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.models import color_image, color_meta, color_unet
from tests.conftest import one_torch_thread

pytestmark = pytest.mark.slow  # every test here needs the CMake build of export/cpp

AGREEMENT = 0.999  # issue 16: at least 99.9% of pixels, and the same region count


def context_unet(seed: int = 0):
    """The colour UNet with its zeroed paths set to small random weights: still four large classes, but
    each pixel's logits now depend on its neighbourhood (through all depths of the UNet)."""
    import torch

    model = color_unet()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and t.dim() == 4:
                t.add_(torch.randn(t.shape, generator=gen) * 0.02 * (t == 0))
    return model.eval()


def _export(tmp_path_factory, name: str, formats=("torchscript",), **meta_fields) -> dict[str, Path]:
    from unet_deploy.export import export_model
    from unet_deploy.meta import ModelMeta

    meta = ModelMeta(**{**color_meta().to_dict(), **meta_fields})
    with one_torch_thread():
        return export_model((context_unet(), meta), list(formats), out_dir=tmp_path_factory.mktemp(name), verbose=False)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """TorchScript exports of one context UNet: top-left letterbox, rect letterbox, tiling in the metadata."""
    return {
        "top-left": _export(tmp_path_factory, "topleft")["torchscript"],
        "rect": _export(tmp_path_factory, "rect", letterbox={"pad": "rect", "fill": 114})["torchscript"],
        "tiled": _export(tmp_path_factory, "tiled", tiling={"scale": 1.0, "overlap": 0.25})["torchscript"],
    }


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Generated PNGs (lossless: both sides decode the very same pixels): colour patches, an inspection
    photo, a 16:9 frame, and a large 1500x1000 frame for tiling."""
    from unet_deploy.data.synthetic import sample

    out = tmp_path_factory.mktemp("parity_photos")
    images = {
        "patches_300x200": color_image(0, (300, 200)),
        "photo_500x375": sample(0, 0, (500, 375)).image,
        "wide_640x360": color_image(2, (640, 360)),
        "large_1500x1000": color_image(3, (1500, 1000)),
        "photo_1500x1000": sample(1, 1, (1500, 1000)).image,
        "small_50x40": color_image(4, (50, 40)),
    }
    paths = {}
    for name, img in images.items():
        paths[name] = out / f"{name}.png"
        cv2.imwrite(str(paths[name]), img)
    return paths


def _reference(model_path: Path, image: np.ndarray, tiling: dict | None = "meta") -> np.ndarray:
    """The Python mask of ``image``: preprocess -> the artefact -> argmax -> back, or tiled_class_map."""
    import torch

    from unet_deploy.formats import sidecar_path
    from unet_deploy.meta import ModelMeta
    from unet_deploy.postprocess import argmax
    from unet_deploy.preprocess import preprocess, unletterbox_mask
    from unet_deploy.tiling import tiled_class_map

    meta = ModelMeta.load(sidecar_path(model_path))
    module = torch.jit.load(str(model_path)).eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(batch)).numpy()

    tiling = meta.tiling if tiling == "meta" else tiling
    with one_torch_thread():
        if tiling:
            return tiled_class_map(image, meta, predict, tiling["scale"], tiling["overlap"])
        x, t = preprocess(image, meta)
        return unletterbox_mask(argmax(predict(x[None]))[0], t)


def _cpp(exe: Path, model: Path, images: list[Path], out: Path, *args: str, env: dict | None = None):
    done = subprocess.run([str(exe), str(model), *map(str, images), "--out", str(out), "--threads", "1", *args],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _compare(out: Path, lines: list[dict], refs: list[np.ndarray], classes: list[str]) -> float:
    """Agreement over all images; asserts the region counts equal and returns the pixel fraction."""
    from unet_deploy.data.palette import read_mask
    from unet_deploy.postprocess import find_regions

    agree = total = 0
    for line, ref in zip(lines, refs):
        mask = read_mask(out / line["mask"])
        assert mask.shape == ref.shape, line["file"]
        agree += int((mask == ref).sum())
        total += ref.size
        assert len(line["regions"]) == len(find_regions(ref, classes)), f"{line['file']}: region counts differ"
        assert len(np.unique(ref)) >= 3, "the model must predict several classes for agreement to mean something"
    return agree / total


@pytest.mark.parametrize("variant", ["top-left", "rect"])
def test_letterbox_masks_match_python(variant, unet_infer, models, photos, tmp_path):  # noqa: F811
    from unet_deploy.fileio import read_image

    names = ["patches_300x200", "photo_500x375", "wide_640x360", "small_50x40"]
    images = [photos[n] for n in names]
    lines = _cpp(unet_infer, models[variant], images, tmp_path)
    refs = [_reference(models[variant], read_image(p)) for p in images]
    agreement = _compare(tmp_path, lines, refs, color_meta().classes)
    print(f"{variant} letterbox: C++ and Python masks agree on {agreement:.6%} of pixels")
    assert agreement >= AGREEMENT


def test_tiled_masks_match_python_on_a_large_image(unet_infer, models, photos, tmp_path):  # noqa: F811
    """Tiling from the metadata (1500x1000 at scale 1: 31 x 21 tiles of 64 px), and the CLI override
    --tile-scale 0.5 --overlap 0.4 (resized, mapped back) on the letterbox model."""
    from unet_deploy.fileio import read_image

    images = [photos["large_1500x1000"], photos["photo_1500x1000"], photos["small_50x40"]]
    lines = _cpp(unet_infer, models["tiled"], images, tmp_path / "meta")
    refs = [_reference(models["tiled"], read_image(p)) for p in images]
    native = _compare(tmp_path / "meta", lines, refs, color_meta().classes)
    override = {"scale": 0.5, "overlap": 0.4}
    lines = _cpp(unet_infer, models["top-left"], images[:2], tmp_path / "cli", "--tile-scale", "0.5", "--overlap", "0.4")
    refs = [_reference(models["top-left"], read_image(p), override) for p in images[:2]]
    scaled = _compare(tmp_path / "cli", lines, refs, color_meta().classes)
    letterboxed = _reference(models["top-left"], read_image(images[0]), None)
    print(f"tiled masks agree on {native:.6%} (scale 1) and {scaled:.6%} (scale 0.5) of pixels; "
          f"the letterbox differs from tiling on {(letterboxed != refs[0]).mean():.2%}")
    assert native >= AGREEMENT and scaled >= AGREEMENT
    lines = _cpp(unet_infer, models["tiled"], images[:1], tmp_path / "notile", "--no-tile")
    from unet_deploy.data.palette import read_mask

    assert (read_mask(tmp_path / "notile" / lines[0]["mask"]) == _reference(models["tiled"], read_image(images[0]), None)).mean() >= AGREEMENT


def test_tiled_masks_match_python_on_real_photos(unet_infer, models, labelme_dir, tmp_path):  # noqa: F811
    """labelme's example photos (PASCAL VOC, an APC2016 shelf, video frames), tiled from the metadata.

    Each JPEG is decoded once here and handed to both sides as PNG, so that the comparison is of
    the tiling, not of two libjpeg builds."""
    from unet_deploy.fileio import read_image, write_image

    jpegs = sorted(labelme_dir.glob("semantic_segmentation/*.jpg")) + [labelme_dir / "tutorial" / "apc2016_obj3.jpg",
                                                                       sorted(labelme_dir.glob("video_annotation/*.jpg"))[0]]
    images = []
    for jpeg in jpegs:
        images.append(tmp_path / f"{jpeg.stem}.png")
        write_image(images[-1], read_image(jpeg))
    lines = _cpp(unet_infer, models["tiled"], images, tmp_path / "out")
    refs = [_reference(models["tiled"], read_image(p)) for p in images]
    agreement = _compare(tmp_path / "out", lines, refs, color_meta().classes)
    print(f"tiled masks on {len(images)} real photos agree on {agreement:.6%} of pixels")
    assert agreement >= AGREEMENT


def _exif(orientation: int) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_exif_orientation_is_applied_as_python_reads_it(suffix, unet_infer, models, tmp_path):  # noqa: F811
    """A 40x24 (W x H) picture saved with Orientation 6/8/3: C++ segments it the way fileio.read_image turns it."""
    from PIL import Image

    from unet_deploy.fileio import read_image

    paths = []
    for orientation in (6, 8, 3):
        rgb = color_image(orientation, (40, 24))[:, :, ::-1]
        path = tmp_path / f"turned{orientation}{suffix}"
        Image.fromarray(np.ascontiguousarray(rgb)).save(path, exif=_exif(orientation), quality=95, lossless=True)
        paths.append(path)
    lines = _cpp(unet_infer, models["top-left"], paths, tmp_path / "out")
    for path, line in zip(paths, lines):
        image = read_image(path)
        turned = "3" not in path.stem
        assert image.shape[:2] == ((40, 24) if turned else (24, 40))  # Python really applies the tag
        assert line["size"] == list(image.shape[:2]), path.name
        ref = _reference(models["top-left"], image)
        from unet_deploy.data.palette import read_mask

        mask = read_mask(tmp_path / "out" / line["mask"])
        # JPEG: the system's libjpeg and opencv-python's may differ by a grey level; PNG/WebP lossless: exact pixels
        assert (mask == ref).mean() >= (0.98 if suffix == ".jpg" else 1.0), path.name


def _german_locale() -> str | None:
    """A de_DE.UTF-8 locale name the C library accepts (generated with localedef if missing), else None."""
    def usable() -> bool:
        done = subprocess.run(["locale", "-a"], capture_output=True, text=True)
        return any(n.lower().replace("-", "") in ("de_de.utf8",) for n in done.stdout.split())

    if not usable() and shutil.which("localedef"):
        subprocess.run(["localedef", "-i", "de_DE", "-f", "UTF-8", "de_DE.UTF-8"], capture_output=True, timeout=120)
    return "de_DE.UTF-8" if usable() else None


def test_a_comma_decimal_locale_changes_nothing(unet_infer, models, photos, tmp_path):  # noqa: F811
    """unet_infer takes the user's locale as host programs do (setlocale(LC_ALL, "")); under de_DE
    (decimal comma) the metadata's 0.25 and 114, --overlap 0.4 and the report's numbers read the same."""
    locale = _german_locale()
    if locale is None:
        pytest.skip("no de_DE.UTF-8 locale and localedef cannot make one (apt install locales)")
    images = [photos["patches_300x200"], photos["small_50x40"]]
    args = ("--tile-scale", "1", "--overlap", "0.4")
    plain = _cpp(unet_infer, models["rect"], images, tmp_path / "c", *args, env={**os.environ, "LC_ALL": "C"})
    german = _cpp(unet_infer, models["rect"], images, tmp_path / "de", *args,
                  env={**os.environ, "LC_ALL": locale, "LC_NUMERIC": locale})
    from unet_deploy.data.palette import read_mask

    for a, b in zip(plain, german):
        assert a["regions"] == b["regions"]
        assert (read_mask(tmp_path / "c" / a["mask"]) == read_mask(tmp_path / "de" / b["mask"])).all()
    json.loads((tmp_path / "de" / "report.json").read_text())  # strict JSON, no decimal commas


def test_report_names_each_mask_and_palette_pngs_decode_in_pillow(unet_infer, models, photos, tmp_path):  # noqa: F811
    """Same-stem inputs get predict.output_stems' names in their report entries; the mask PNGs are
    palette images whose palette is the VOC map and whose indices are the class ids."""
    from PIL import Image

    from unet_deploy.data.palette import voc_palette
    from unet_deploy.fileio import read_image
    from unet_deploy.predict import output_stems

    inputs = []
    for folder in ("a", "b", "c"):
        (tmp_path / folder).mkdir()
        inputs.append(tmp_path / folder / "part.png")
        shutil.copy(photos["patches_300x200" if folder != "b" else "wide_640x360"], inputs[-1])
    lines = _cpp(unet_infer, models["top-left"], inputs, tmp_path / "out")
    stems = output_stems(inputs)
    assert [line["mask"] for line in lines] == [f"masks/{s}.png" for s in stems]
    assert [line["overlay"] for line in lines] == [f"overlays/{s}.jpg" for s in stems]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["images"] == lines
    for path, line in zip(inputs, lines):
        with Image.open(tmp_path / "out" / line["mask"]) as png:
            assert png.mode == "P"
            palette = np.array(png.getpalette(), np.uint8).reshape(-1, 3)
            indices = np.asarray(png)
        assert (palette[:256] == voc_palette(256)[: len(palette)]).all()
        ref = _reference(models["top-left"], read_image(path))
        assert (indices == ref).mean() >= AGREEMENT and len(np.unique(indices)) >= 3
        assert cv2.imread(str(tmp_path / "out" / line["overlay"])).shape[:2] == ref.shape


BAD_METADATA = {
    "fractional input size": ('"input_size": [64.5, 64]', "input size"),
    "classes a string": ('"classes": "abc"', "classes"),
    "huge base_channels": ('"arch": {"base_channels": 1000000}', "base_channels"),
    "hex float": ('"scale": 0x1p3', "not valid JSON"),
    "infinity": ('"scale": Infinity', "not valid JSON"),
    "letterbox a list": ('"letterbox": ["top-left"]', "letterbox"),
    "overlap 1": ('"tiling": {"scale": 1.0, "overlap": 1}', "overlap"),
    "input too large": ('"input_size": 65536', "8192"),
    "unknown pad": ('"letterbox": {"pad": "middle"}', "letterbox.pad"),
    "gray on 3 channels": ('"color": "GRAY"', "in_channels"),
    "300 classes": ('"classes": [' + ", ".join(f'"c{i}"' for i in range(300)) + "]", "255"),
}


@pytest.fixture(scope="session")
def bare_torchscript(tmp_path_factory) -> Path:
    """The colour UNet as TorchScript without the unet_deploy.json extra file (metadata from a sidecar)."""
    import torch

    path = tmp_path_factory.mktemp("bare") / "m.torchscript.pt"
    with warnings.catch_warnings():  # the traced shape checks become constants: fine for one input size
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.jit.save(torch.jit.trace(color_unet(), torch.zeros(1, 3, 64, 64)), str(path))
    return path


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_crafted_metadata_gives_one_line_and_exit_1(case, unet_infer, bare_torchscript, photos, tmp_path):  # noqa: F811
    """A TorchScript file without its extra file and a crafted <stem>.json sidecar beside it."""
    field, expected = BAD_METADATA[case]
    model = tmp_path / "m.torchscript.pt"
    shutil.copy(bare_torchscript, model)
    base = {"classes": ["background", "dark", "bright", "warm"], "input_size": [64, 64]}
    key = field.split(":")[0].strip('"')
    rest = ", ".join(f'"{k}": {json.dumps(v)}' for k, v in base.items() if k != key)
    (tmp_path / "m.json").write_text("{" + rest + ", " + field + "}")
    done = subprocess.run([str(unet_infer), str(model), str(photos["small_50x40"])], capture_output=True, text=True,
                          timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ") and "m.json" in lines[0] and expected in lines[0], lines[0]
    assert done.stdout == ""


def test_aoti_rect_and_tiles_match_python(unet_infer, models, photos, tmp_path_factory, tmp_path):  # noqa: F811
    """The same context UNet as an AOTInductor package (rect letterbox in its metadata): one image per
    call (the package's least batch, read from its input checks, is padded to) and tiles in batches
    of 8, against the Python masks of the TorchScript export of the same weights."""
    from unet_deploy.fileio import read_image

    package = _export(tmp_path_factory, "aoti_rect", ("aoti",), letterbox={"pad": "rect", "fill": 114})["aoti"]
    images = [photos["wide_640x360"], photos["photo_500x375"], photos["large_1500x1000"]]
    lines = _cpp(unet_infer, package, images[:2], tmp_path / "rect")
    refs = [_reference(models["rect"], read_image(p)) for p in images[:2]]
    rect = _compare(tmp_path / "rect", lines, refs, color_meta().classes)
    tiles = {"scale": 1.0, "overlap": 0.25}
    lines = _cpp(unet_infer, package, images[2:], tmp_path / "tiled", "--tile-scale", "1")
    refs = [_reference(models["rect"], read_image(images[2]), tiles)]
    tiled = _compare(tmp_path / "tiled", lines, refs, color_meta().classes)
    print(f"AOTI vs Python (TorchScript of the same weights): rect {rect:.6%}, tiled {tiled:.6%} of pixels agree")
    assert rect >= AGREEMENT and tiled >= AGREEMENT


def _score_diffs(lines: list[dict], results: list) -> tuple[list[float], int, int]:
    """|C++ score - Python score| of the regions both found (same class, box and area), and the counts."""
    diffs, both, total = [], 0, 0
    for line, res in zip(lines, results):
        python = {(r.class_id, tuple(r.bbox), r.area): r.score for r in res.regions}
        total += len(python)
        for g in line["regions"]:
            key = (g["class_id"], tuple(g["bbox"]), g["area"])
            if key in python:
                both += 1
                diffs.append(abs(g["score"] - python[key]))
    return diffs, both, total


def test_region_scores_match_python_on_real_photos(unet_infer, models, labelme_dir, tmp_path):  # noqa: F811
    """Region.score from C++ (per-pixel mean over each region, in double) and from the Python runtime
    (block-weighted on the network map) on labelme's example photos: letterboxed (top-left, rect) and
    tiled; and --min-score drops exactly the regions below it."""
    from unet_deploy.fileio import read_image, write_image
    from unet_deploy.runtime import Segmenter

    jpegs = sorted(labelme_dir.glob("semantic_segmentation/*.jpg")) + [labelme_dir / "tutorial" / "apc2016_obj3.jpg"]
    images = []
    for jpeg in jpegs:
        images.append(tmp_path / f"{jpeg.stem}.png")
        write_image(images[-1], read_image(jpeg))
    worst = {}
    for variant in ("top-left", "rect", "tiled"):
        lines = _cpp(unet_infer, models[variant], images, tmp_path / variant)
        with one_torch_thread():
            results = Segmenter(models[variant], device="cpu").predict_batch(images, batch_size=1)
        diffs, both, total = _score_diffs(lines, results)
        assert total >= 10 and both >= 0.9 * total, f"{variant}: {both} of {total} regions found by both"
        worst[variant] = max(diffs)
        assert worst[variant] <= 1e-3, variant
        assert len({round(d, 2) for d in [g["score"] for ln in lines for g in ln["regions"]]}) > 5  # scores vary
    print(f"C++ vs Python region scores on {len(images)} real photos, max |diff|: {worst}")
    lines = _cpp(unet_infer, models["top-left"], images[:2], tmp_path / "all")
    cut = float(np.median([g["score"] for ln in lines for g in ln["regions"]]))
    kept = _cpp(unet_infer, models["top-left"], images[:2], tmp_path / "cut", "--min-score", str(cut))
    for a, b in zip(lines, kept):
        assert b["regions"] == [g for g in a["regions"] if g["score"] >= cut]
