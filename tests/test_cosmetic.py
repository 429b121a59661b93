"""Small things that said nothing or the wrong thing (issue #30): empty videos, stale sidecars, an
empty repository, and temporary folders left by a kill or a failed load."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.test_runtime import red_model
from tests.test_wrong_answers import mjpeg_avi
from unet_deploy import Segmenter, UnetDeployError
from unet_deploy.cli.predict import command as predict_command
from unet_deploy.fileio import private_tempdir, remove_stale_tempdirs
from unet_deploy.meta import ModelMeta

ROOT = Path(__file__).resolve().parents[1]


def test_a_video_without_frames_is_a_broken_stream_not_a_silent_success(tmp_path):
    model = red_model(tmp_path / "red.onnx")
    video = mjpeg_avi(tmp_path / "empty.avi", [])
    res = CliRunner().invoke(predict_command, [str(model), str(video), "--out", str(tmp_path / "p")])
    assert res.exit_code == 1, res.output
    assert "empty.avi: no frame in this video" in res.output


def test_a_sidecar_that_disagrees_with_the_file_is_said_and_loses(tmp_path):
    path = red_model(tmp_path / "red.onnx")  # metadata inside: classes background, red
    ModelMeta(classes=["background", "rust"], input_size=(64, 64)).save(tmp_path / "red.json")
    with pytest.warns(RuntimeWarning, match=r"red\.json: disagrees with the metadata inside red\.onnx \(classes\)"):
        seg = Segmenter(path)
    assert seg.classes == ["background", "red"]
    ModelMeta(classes=["background", "red"], input_size=(64, 64)).save(tmp_path / "red.json")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an agreeing sidecar: not a word
        Segmenter(path)


def test_serve_on_a_folder_without_a_model_says_so(tmp_path):
    from unet_deploy.cli.serve import command as serve_command

    (tmp_path / "repo").mkdir()
    res = CliRunner().invoke(serve_command, [str(tmp_path / "repo"), "--port", "0", "--grpc-port", "0",
                                             "--metrics-port", "0"])  # fmt: skip
    assert res.exit_code == 1 and "repo: no model in this folder" in res.output and "models: ;" not in res.output


def test_temporary_folders_of_a_killed_process_are_removed_by_the_next(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = ("import os, time; from unet_deploy.fileio import private_tempdir; d = private_tempdir('serve'); "
            "print(d.name, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "TMPDIR": str(tmp_path),
                                                               "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    left = Path(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert left.is_dir() and left.name.startswith(f"unet-serve-{proc.pid}-")
    (tmp_path / "unet-serve-notapid-x").mkdir()  # not ours by name: kept
    with private_tempdir("triton-onnx") as mine:
        assert Path(mine).name.startswith(f"unet-triton-onnx-{os.getpid()}-")
        assert not left.exists() and (tmp_path / "unet-serve-notapid-x").is_dir()
        assert remove_stale_tempdirs(tmp_path) == [] and Path(mine).is_dir()  # a live process's: kept


def test_a_failed_package_load_leaves_no_extracted_folder(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def extract_then_fail(path):
        (tmp_path / "aotinductor_abc123").mkdir()
        (tmp_path / "aotinductor_abc123" / "model.so").write_bytes(b"\x7fELF")
        raise RuntimeError("dlopen failed: wrong ELF class")

    monkeypatch.setattr(torch._inductor, "aoti_load_package", extract_then_fail)
    (tmp_path / "aotinductor_other").mkdir()  # someone else's, there before: kept
    (tmp_path / "m.pt2").write_bytes(b"stand-in")
    with pytest.raises(UnetDeployError, match="not a loadable AOTInductor package"):
        Segmenter(tmp_path / "m.pt2", trust_code=True)
    assert sorted(p.name for p in tmp_path.glob("aotinductor_*")) == ["aotinductor_other"]


def test_a_zero_frame_stream_from_the_library_ends_broken(tmp_path):
    video = mjpeg_avi(tmp_path / "empty.avi", [])
    with Segmenter(red_model(tmp_path / "red.onnx")).stream(video) as frames:
        assert list(frames) == []
    assert frames.end.broken and "no frame in this video" in frames.end.message
