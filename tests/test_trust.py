"""Nothing outside the folders the user gave: model names are names, code-carrying model files load
only on opt-in, and a labelme imagePath cannot reach out of the source folder (issue #30, security)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tests.test_runtime import red_model
from unet_deploy import Segmenter, UnetDeployError
from unet_deploy.cli.labelme import command as labelme_command
from unet_deploy.cli.predict import command as predict_command
from unet_deploy.data.labelme import convert_folder, labelme_to_mask
from unet_deploy.formats import TRUST_CODE_ENV
from unet_deploy.serve.repository import check_model_name, export_triton

# ---------------------------------------------------------------------------- serve --name

BAD_NAMES = ["..", ".", "../other", "", "a/b", "a\\b", "/abs", ".hidden", "-x", "x" * 65, "a\nb", "sp ace", "é"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_model_name_that_is_a_path_is_refused_and_nothing_is_deleted(tmp_path, name):
    """`--name ..` once emptied the temporary folder, `../other` replaced a sibling and `''` let a
    planted model load: each is now a one-line refusal before any file is touched."""
    model = red_model(tmp_path / "red.onnx")
    sibling = tmp_path / "other"
    sibling.mkdir()
    (sibling / "keep.txt").write_text("mine")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "planted.txt").write_text("someone else's")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(UnetDeployError, match="is not a Triton model name") as e:
        export_triton(model, repo, name=name)
    assert "\n" not in str(e.value).replace(repr(name), "")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_serve_cli_refuses_a_path_name_in_one_line(tmp_path):
    from unet_deploy.cli.serve import command as serve_command

    model = red_model(tmp_path / "red.onnx")
    res = CliRunner().invoke(serve_command, [str(model), "--name", "../x"])
    assert res.exit_code == 1, res.output
    assert "is not a Triton model name" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("name", ["unet", "Unet_2", "model-v1.2", "_x", "a" * 64])
def test_triton_model_names_pass(name):
    assert check_model_name(name) == name


def test_only_a_model_folder_this_package_wrote_is_replaced(tmp_path):
    model = red_model(tmp_path / "red.onnx")
    repo = tmp_path / "repo"
    (repo / "unet").mkdir(parents=True)
    (repo / "unet" / "notes.txt").write_text("a user's folder that happens to be called unet")
    with pytest.raises(UnetDeployError, match="was not written by unet-deploy"):
        export_triton(model, repo, name="unet")
    assert (repo / "unet" / "notes.txt").read_text().startswith("a user's")
    written = export_triton(model, repo, name="own")
    (written / "1" / "stale.txt").write_text("left by an older export")
    assert export_triton(model, repo, name="own") == written  # ours: replaced whole
    assert not (written / "1" / "stale.txt").exists() and (written / "config.pbtxt").is_file()


# ---------------------------------------------------------------------------- .pt2 runs native code


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A ``.pt2`` whose loading is recorded: ``(path, loads)``; the fake package answers like a real one."""
    import torch

    from unet_deploy.meta import ModelMeta

    meta = ModelMeta(classes=["background", "red"], input_size=(64, 64))
    loads: list[str] = []

    class Package:
        def get_metadata(self):
            return {"AOTI_DEVICE_KEY": "cpu", "unet_deploy": meta.to_json()}

        def __call__(self, x):
            return torch.stack([torch.zeros_like(x[:, 0]), x[:, 0] - 0.5], 1)

    def load(path, device_index=-1):
        loads.append(path)
        return Package()

    monkeypatch.setattr(torch._inductor, "aoti_load_package", load)
    monkeypatch.delenv(TRUST_CODE_ENV, raising=False)
    path = tmp_path / "m.pt2"
    path.write_bytes(b"stand-in for a package with a shared library")
    return path, loads


def test_a_pt2_is_not_loaded_unless_the_user_trusts_it(fake_package, monkeypatch):
    path, loads = fake_package
    for backend in ("auto", "aoti"):  # forcing the backend is no way round it
        with pytest.raises(UnetDeployError, match=r"m\.pt2: loading this AOTInductor file runs native code .*--trust-code"):
            Segmenter(path, backend=backend)
    assert loads == []
    assert Segmenter(path, trust_code=True).backend == "aoti" and len(loads) == 1
    monkeypatch.setenv(TRUST_CODE_ENV, "1")
    assert Segmenter(path).backend == "aoti" and len(loads) == 2


def test_predict_cli_needs_trust_code_for_a_pt2(fake_package, tmp_path):
    path, loads = fake_package
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((20, 30, 3), np.uint8))
    res = CliRunner().invoke(predict_command, [str(path), str(image), "--out", str(tmp_path / "pred")])
    assert res.exit_code == 1 and "runs native code" in res.output and "Traceback" not in res.output
    assert loads == [] and not (tmp_path / "pred").exists()
    res = CliRunner().invoke(predict_command, [str(path), str(image), "--out", str(tmp_path / "pred"), "--trust-code"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pred" / "report.json").is_file()


def test_serving_a_pt2_needs_trust_code_and_the_repository_carries_it(fake_package, tmp_path):
    from unet_deploy.serve import read_parameters

    path, loads = fake_package
    with pytest.raises(UnetDeployError, match="runs native code"):
        export_triton(path, tmp_path / "repo")
    assert loads == [] and not (tmp_path / "repo").exists()
    model_dir = export_triton(path, tmp_path / "repo", trust_code=True)
    assert read_parameters(model_dir / "config.pbtxt")["trust_code"] == "1"  # model.py passes it to Segmenter
    assert (model_dir / "1" / "m.pt2").read_bytes() == path.read_bytes()


def test_onnx_is_data_and_needs_no_opt_in(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_CODE_ENV, raising=False)
    assert Segmenter(red_model(tmp_path / "red.onnx")).backend == "onnxruntime"


# ---------------------------------------------------------------------------- labelme imagePath


def _square_doc(image_path: str) -> dict:
    shape = {"label": "spot", "points": [[2, 2], [20, 2], [20, 20]], "shape_type": "polygon"}
    return {"version": "5.5.0", "shapes": [shape], "imagePath": image_path, "imageData": None}


OUTSIDE = ["../secret.png", "..\\secret.png", "{abs}", "/etc/passwd", "/proc/self/environ",
           "C:\\Users\\x\\secret.png", "\\\\server\\share\\secret.png", "sub/../../secret.png"]


@pytest.mark.parametrize("image_path", OUTSIDE)
def test_an_image_path_that_leaves_src_is_not_read(tmp_path, image_path, monkeypatch):
    secret = tmp_path / "secret.png"
    cv2.imwrite(str(secret), np.full((32, 32, 3), 200, np.uint8))
    src = tmp_path / "src"
    src.mkdir()
    image_path = image_path.replace("{abs}", str(secret))
    (src / "a.json").write_text(json.dumps(_square_doc(image_path)))
    opened: list[str] = []
    real_read = Path.read_bytes

    def spy(self):
        opened.append(str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", spy)
    summary = convert_folder(src, tmp_path / "out", classes="spot", progress=False)
    assert summary.converted == [] and len(summary.failed) == 1
    assert "leaves" in summary.failed[0][1] and "--allow-outside-images" in summary.failed[0][1]
    assert not [p for p in opened if "secret" in p or p.startswith(("/etc", "/proc"))]
    with pytest.raises(UnetDeployError, match="leaves"):
        labelme_to_mask(src / "a.json", {"_background_": 0, "spot": 1})


def test_allow_outside_reads_it_and_relative_paths_inside_src_still_work(tmp_path):
    secret = tmp_path / "secret.png"
    cv2.imwrite(str(secret), np.full((32, 32, 3), 200, np.uint8))
    src = tmp_path / "src"
    (src / "ann").mkdir(parents=True)
    (src / "img").mkdir()
    cv2.imwrite(str(src / "img" / "b.png"), np.full((32, 32, 3), 90, np.uint8))
    (src / "ann" / "b.json").write_text(json.dumps(_square_doc("../img/b.png")))  # inside SRC: labelme's rule
    (src / "a.json").write_text(json.dumps(_square_doc("../secret.png")))
    res = CliRunner().invoke(labelme_command, [str(src), str(tmp_path / "out"), "--classes", "spot"])
    assert res.exit_code == 1 and "leaves" in res.output
    assert sorted(p.name for p in (tmp_path / "out" / "JPEGImages").iterdir()) == ["ann_b.png"]
    res = CliRunner().invoke(labelme_command, [str(src), str(tmp_path / "out2"), "--classes", "spot",
                                               "--allow-outside-images"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out2" / "JPEGImages").iterdir()) == ["a.png", "ann_b.png"]
    assert (tmp_path / "out2" / "JPEGImages" / "a.png").read_bytes() == secret.read_bytes()


def test_a_moved_project_finds_the_image_beside_the_json(tmp_path):
    """labelme's own fallback: an absolute imagePath from another machine, the image beside the JSON."""
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "c.png"), np.full((32, 32, 3), 90, np.uint8))
    (src / "c.json").write_text(json.dumps(_square_doc("C:\\Users\\someone\\project\\c.png")))
    image, mask = labelme_to_mask(src / "c.json", {"_background_": 0, "spot": 1})
    assert image.shape == (32, 32, 3) and mask.max() == 1
