"""unet-train: metrics, checkpoints with ModelMeta, exact resume after kill -9, torchrun DDP, user errors."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.test_dataset import CLASSES, make_voc
from unet_deploy.checkpoint import load_checkpoint, read_checkpoint
from unet_deploy.data.dataset import SegmentationDataset, split_samples
from unet_deploy.cli.train import command
from unet_deploy.train import evaluate, read_metrics_csv, train
from unet_deploy.train.schedule import lr_scheduler

TINY = ["--img-size", "64", "--base-channels", "8", "--batch-size", "4"]
TINY_KW = dict(img_size=64, base_channels=8, batch_size=4, progress=False)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return make_voc(tmp_path_factory.mktemp("voc"), count=12)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine OpenMP threads that
    spin-wait slow every step tenfold; subprocesses get OMP_NUM_THREADS=1 alike (same arithmetic)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cli(args: list) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def _same_metrics(a: list[dict], b: list[dict]) -> bool:
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    return strip(a) == strip(b)


def _python(*args, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_lr_schedule_warms_up_decays_to_the_floor_and_resumes_exactly():
    total, base = 100, 2e-3
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sched = lr_scheduler(opt, total)
    lrs = []
    for _ in range(total + 5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    warmup = 3  # 3% of 100 steps
    assert lrs[:warmup] == pytest.approx([base / 3, 2 * base / 3, base])
    assert lrs[warmup + 47] == pytest.approx(base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 47 / 97))))
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))  # decay never rises again
    assert lrs[total:] == pytest.approx([0.01 * base] * 5)  # steps beyond the plan stay at the floor

    # resume as last.pt does: optimizer and scheduler state saved at step 40, loaded into fresh ones
    first = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    first_sched = lr_scheduler(first, total)
    for _ in range(40):
        first.step()
        first_sched.step()
    again = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    resumed = lr_scheduler(again, total)
    again.load_state_dict(first.state_dict())
    resumed.load_state_dict(first_sched.state_dict())
    tail = []
    for _ in range(40, total + 5):
        tail.append(again.param_groups[0]["lr"])
        again.step()
        resumed.step()
    assert tail == lrs[40:]  # bit for bit


@pytest.mark.slow
def test_two_epochs_then_resume_a_third(voc, tmp_path):
    run = tmp_path / "run"
    best = train(voc, run, epochs=2, dropout=0.1, **TINY_KW)
    assert best == run / "best.pt"
    assert len(read_metrics_csv(run / "metrics.csv")) == 2

    result = _cli([voc, "--resume", run / "last.pt", "--epochs", 3])
    assert result.exit_code == 0, result.output
    rows = read_metrics_csv(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "miou", *[f"iou_{c}" for c in CLASSES],
                             *[f"dice_{c}" for c in CLASSES], "lr", "seconds"]
    for r in rows:  # one metrics rule: mIoU is the mean over classes present; Dice follows from IoU
        iou = np.array([r[f"iou_{c}"] for c in CLASSES])
        assert r["miou"] == pytest.approx(np.nanmean(iou), abs=2e-6) and r["train_loss"] > 0
        dice = np.array([r[f"dice_{c}"] for c in CLASSES])
        np.testing.assert_allclose(dice, 2 * iou / (1 + iou), atol=2e-6)
    # epoch 3 runs past the 2-epoch plan the schedule was made for: at its 1% floor
    assert rows[0]["lr"] > rows[1]["lr"] and rows[2]["lr"] == pytest.approx(0.01 * 1e-3, rel=1e-4)
    for name in ("best.pt", "last.pt"):
        model, meta = load_checkpoint(run / name)
        assert meta.classes == list(CLASSES) and meta.input_size == (64, 64)
        assert meta.arch["base_channels"] == 8 and model.out.out_channels == 3
        assert meta.tiling is None  # without --tile-scale: letterboxed whole images, as before
    last = read_checkpoint(run / "last.pt")  # weights_only=True: all training state is plain data
    assert last["epoch"] == 3 and last["config"]["epochs"] == 3 and len(last["history"]) == 3
    assert last["config"]["dropout"] == 0.1  # a resumed run keeps its settings
    best_row = max(rows, key=lambda r: r["miou"])
    assert read_checkpoint(run / "best.pt")["metrics"]["miou"] == pytest.approx(best_row["miou"], abs=1e-6)
    assert sorted(p.name for p in (run / "samples").iterdir()) == [f"epoch_00{i}.jpg" for i in (1, 2, 3)]
    assert (run / "curves.png").stat().st_size > 0

    again = CliRunner().invoke(command, [str(voc), "--out", str(run), "--epochs", "1"])
    assert again.exit_code == 1 and "--resume" in again.output and "Traceback" not in again.output

    # a last.pt from before the torch schedulers (LambdaLR state) is refused in one line, pointing at --init
    old = dict(last, scheduler={"base_lrs": [1e-3], "last_epoch": 9, "lr_lambdas": [{"total": 9, "warmup": 1}]})
    torch.save(old, tmp_path / "old_last.pt")
    refused = CliRunner().invoke(command, [str(voc), "--resume", str(tmp_path / "old_last.pt")])
    assert refused.exit_code == 1 and "--init" in refused.output and "Traceback" not in refused.output


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_run(voc, tmp_path):
    opts = ["--epochs", 3, "--loss", "ce+dice", "--class-weights", "auto", "--seed", 5, *TINY]
    whole = tmp_path / "whole"
    train(voc, whole, epochs=3, loss="ce+dice", class_weights="auto", seed=5, **TINY_KW)

    run = tmp_path / "killed"
    state, _ = _kill_after_first_epoch(voc, run, opts)  # last.pt never half-written
    assert 1 <= state["epoch"] < 3

    result = _cli([voc, "--resume", run / "last.pt"])  # --epochs 3 comes from the checkpoint
    assert result.exit_code == 0, result.output
    rows = read_metrics_csv(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert _same_metrics(rows, read_metrics_csv(whole / "metrics.csv")), "resume was not exact"
    assert not list(run.glob(".*.tmp"))


@pytest.mark.slow
def test_torchrun_two_processes_agree_with_what_rank0_wrote(voc, tmp_path):
    run = tmp_path / "ddp"
    proc = _python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", 2,
                   "-m", "unet_deploy.train", voc, "--out", run, "--epochs", 1, "--no-augment", *TINY)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    (row,) = read_metrics_csv(run / "metrics.csv")
    state = read_checkpoint(run / "last.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["metrics"]["miou"] == pytest.approx(row["miou"], abs=1e-6)
    # The validation both ranks computed together equals one process evaluating rank 0's checkpoint.
    model, meta = load_checkpoint(run / "best.pt")
    _, val = split_samples(voc, 0.2, seed=0)
    scores = evaluate(model, SegmentationDataset(voc, meta=meta, files=val), batch_size=4)
    assert scores["miou"] == pytest.approx(row["miou"], abs=2e-3)
    assert scores["iou_background"] == pytest.approx(row["iou_background"], abs=2e-3)
    assert output.count("best checkpoint:") == 2 and output.count("epoch 1/1 ") == 1  # rank 0 reports


@pytest.mark.slow  # trains twice, once in bf16 (emulated on CPUs without native bf16)
def test_init_from_a_checkpoint_with_other_classes_and_bf16(voc, tiny_checkpoint, tmp_path):
    data = tmp_path / "four"
    make_voc(data, count=4)
    (data / "class_names.txt").write_text("\n".join([*CLASSES, "dent"]) + "\n")
    run = tmp_path / "init"
    # In a fresh process: bf16 autocast training segfaulted (exit 139, no Python traceback) inside a
    # pytest process that had run OpenVINO int8/bf16 models first on an AMX Xeon (2026-12-02); alone
    # it passes. Both oneDNN copies (torch's, OpenVINO's) use AMX there.
    args = [data, "--out", run, "--epochs", 1, "--init", tiny_checkpoint, "--amp", "--val-split", 0,
            "--img-size", 64, "--workers", 1]
    result = subprocess.run([sys.executable, "-m", "unet_deploy", "train", *map(str, args)], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "TQDM_DISABLE": "1"})  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "head 3 -> 4 classes: kept background, scratch, spot; new (fresh rows): dent" in output
    assert ", bf16," in output
    model, meta = load_checkpoint(run / "last.pt")
    assert meta.classes == [*CLASSES, "dent"] and meta.arch["base_channels"] == 8  # width from --init
    assert not torch.equal(model.c1.layer[0].weight, load_checkpoint(tiny_checkpoint)[0].c1.layer[0].weight)


@pytest.mark.parametrize("args, message", [
    (["--device", "cuda"], "no CUDA GPU"),
    (["--class-weights", "1,2"], "2 values for 3 classes"),
    (["--img-size", "50"], "not a multiple of 16"),
    (["--val-split", "1.5"], "must lie in [0, 1)"),
    (["--dropout", "1"], "must lie in [0, 1)"),
    (["--tile-scale", "0"], "--tile-scale 0.0 must lie in"),
    (["--tile-scale", "1", "--overlap", "1"], "--overlap 1.0 must lie in [0, 1)"),
])
def test_user_errors_are_one_line(voc, tmp_path, args, message):
    result = CliRunner().invoke(command, [str(voc), "--out", str(tmp_path / "r"), "--epochs", "1", *args])
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_resume_needs_a_training_checkpoint(voc, tiny_checkpoint):
    result = CliRunner().invoke(command, [str(voc), "--resume", str(tiny_checkpoint)])
    assert result.exit_code == 1 and "not a training checkpoint" in result.output


@pytest.fixture(scope="module")
def tile_run(voc, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("tiles") / "run"
    result = _cli([voc, "--out", run, "--epochs", 1, "--tile-scale", 0.5, "--overlap", 0.4, "--no-amp",
                   "--img-size", 32, "--base-channels", 8, "--batch-size", 4])
    assert result.exit_code == 0, result.output
    return run


def test_tile_scale_trains_on_crops_and_validates_whole_images_tiled(voc, tile_run):
    from unet_deploy.data.palette import read_mask
    from unet_deploy.fileio import read_image
    from unet_deploy.metrics import confusion, summary
    from unet_deploy.tiling import tiled_class_map

    model, meta = load_checkpoint(tile_run / "last.pt")
    assert meta.tiling == {"scale": 0.5, "overlap": 0.4} and meta.input_size == (32, 32)
    assert read_checkpoint(tile_run / "last.pt")["config"]["tile_scale"] == 0.5  # --resume keeps it
    # the epoch's metrics are whole validation images through the runtime's tiler, at their stored size
    (row,) = read_metrics_csv(tile_run / "metrics.csv")
    _, val = split_samples(voc, 0.2, seed=0)
    model.eval()
    conf = 0
    for stem in val:
        image = read_image(voc / "JPEGImages" / f"{stem}.jpg")
        mask = read_mask(voc / "SegmentationClass" / f"{stem}.png")
        with torch.no_grad():
            pred = tiled_class_map(image, meta, lambda x: model(torch.from_numpy(x)).numpy(), 0.5, 0.4)
        assert pred.shape == mask.shape == (60, 80)
        conf = conf + confusion(mask, pred, len(CLASSES))
    expected = summary(conf, list(CLASSES))
    for key in ("miou", *[f"iou_{c}" for c in CLASSES]):
        assert row[key] == pytest.approx(expected[key], abs=1e-6, nan_ok=True), key


@pytest.mark.slow  # a tiled training run, then an ONNX export
def test_tile_scale_is_in_the_onnx_export(tile_run, tmp_path):
    import json

    import onnx

    from unet_deploy.export import export_model
    from unet_deploy.meta import METADATA_KEY

    paths = export_model(tile_run / "best.pt", "onnx", tmp_path / "exp", verbose=False)
    props = {p.key: p.value for p in onnx.load(str(paths["onnx"]), load_external_data=False).metadata_props}
    assert json.loads(props[METADATA_KEY])["tiling"] == {"scale": 0.5, "overlap": 0.4}



def _kill_after_first_epoch(voc, run, opts) -> tuple[dict, str]:
    """Start training in a subprocess, SIGKILL it once epoch 1 is fully written; (last.pt state, output)."""
    proc = _python("-m", "unet_deploy.train", voc, "--out", run, *opts)
    while not (run / "curves.png").exists() and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    output, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, output
    return read_checkpoint(run / "last.pt"), output

@pytest.mark.slow
def test_tile_scale_kill_9_then_resume_matches_an_uninterrupted_run(voc, tmp_path):
    opts = ["--epochs", 2, "--tile-scale", 1.0, "--no-amp", "--seed", 3, *TINY, "--img-size", 32]
    whole = tmp_path / "whole"
    assert _cli([voc, "--out", whole, *opts]).exit_code == 0
    run = tmp_path / "killed"
    state, output = _kill_after_first_epoch(voc, run, opts)
    assert state["epoch"] == 1, output
    result = _cli([voc, "--resume", run / "last.pt"])  # crops, tiling and --epochs come from the checkpoint
    assert result.exit_code == 0, result.output
    rows = read_metrics_csv(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert _same_metrics(rows, read_metrics_csv(whole / "metrics.csv")), "resume was not exact"
    assert load_checkpoint(run / "last.pt")[1].tiling == {"scale": 1.0, "overlap": 0.25}
