"""unet-bench: the table and the JSON report on an exported ONNX model and on a checkpoint, and the seed baseline."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.seed_net import seed_letterbox
from unet_deploy import bench
from unet_deploy.checkpoint import load_checkpoint

FAST = ["--runs", "2", "--warmup", "1", "--batch", "1,2", "--source-size", "320", "180", "--threads", "1"]
STAGE_STATS = ("p50", "p90", "p99")


def _invoke(*args: str):
    result = CliRunner().invoke(bench.command, list(args), catch_exceptions=False)
    return result


def _check_ok_row(row: dict, batches=(1, 2)) -> None:
    """Every measurement the issue asks for is in the row."""
    assert row["status"] == "ok", row["status"]
    for stage in bench.STAGES:
        assert all(row["latency_ms"][stage][k] >= 0 for k in STAGE_STATS), stage
    lat = row["latency_ms"]
    parts = lat["preprocess"]["p50"] + lat["inference"]["p50"] + lat["postprocess"]["p50"]
    assert lat["end_to_end"]["p50"] == pytest.approx(parts, rel=0.2, abs=2.0)
    assert row["runs"] == 2
    assert [t["batch"] for t in row["throughput"]] == list(batches)
    assert all(t["status"] == "ok" and t["images_per_s"] > 0 for t in row["throughput"])
    assert row["load_ms"] > 0 and row["first_call_ms"] > 0
    assert row["first_result_ms"] == pytest.approx(row["load_ms"] + row["first_call_ms"])
    assert row["memory_mb"]["rss_peak_delta"] is not None
    assert 0.0 <= row["pixel_agreement"] <= 1.0
    assert row["size_mb"] > 0
    assert 0 < row["pre_post_share"] < 1


def _check_head(report: dict) -> None:
    m = report["machine"]
    assert m["cpu"] and m["cores"] >= 1 and isinstance(m["cpu_flags"], list) and "gpu" in m and m["date"]
    assert report["source"]["size"] == [180, 320]
    assert report["model"]["classes"] == ["background", "scratch", "spot"]
    assert report["model"]["gflops"] > 0


def test_bench_on_exported_onnx_prints_the_table_and_writes_every_field(exported_tiny, tmp_path):
    out = tmp_path / "bench.json"
    result = _invoke(str(exported_tiny["onnx"]), *FAST, "--json", str(out), "--markdown", str(tmp_path / "b.md"))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split()[:3] == ["onnxruntime", "fp32", "cpu"] for line in lines), result.output
    assert "e2e p50" in result.output and "img/s b2" in result.output
    report = json.loads(out.read_text())
    _check_head(report)
    rows = {r["backend"]: r for r in report["results"]}
    _check_ok_row(rows["onnxruntime"])
    # The only result is its own reference; the seed baseline needs the weights.
    assert rows["onnxruntime"]["pixel_agreement"] == 1.0
    assert rows["seed"]["status"].startswith("skipped: needs the checkpoint")
    assert set(rows) == {"onnxruntime", "seed"}
    assert "| onnxruntime | fp32 | cpu | ok |" in (tmp_path / "b.md").read_text()


def test_bench_on_checkpoint_exports_and_compares_with_the_seed_pipeline(tiny_checkpoint, tmp_path):
    out = tmp_path / "bench.json"
    result = _invoke(str(tiny_checkpoint), *FAST, "--backend", "eager,seed,torchscript", "--device", "all",
                     "--json", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    _check_head(report)
    ok = {r["backend"]: r for r in report["results"] if r["device"] == "cpu" and r["precision"] == "fp32"}
    for name in ("eager", "seed", "torchscript"):
        _check_ok_row(ok[name])
    assert report["reference"] == "eager fp32 cpu" and ok["eager"]["pixel_agreement"] == 1.0
    assert ok["torchscript"]["pixel_agreement"] > 0.999  # the same weights, exported
    assert ok["seed"]["pixel_agreement"] > 0.5  # the seed resamples the letterbox its own way
    assert ok["torchscript"]["artefact"].endswith(".torchscript.pt") and "torchscript cpu fp32" in report["export_ms"]
    summary = report["summary"]["cpu"]
    assert summary["speedup_vs_seed"] == pytest.approx(summary["seed_end_to_end_ms"] / summary["best_end_to_end_ms"])
    assert f"{summary['speedup_vs_seed']:.2f}x faster" in result.output
    # Rows that cannot run here say why instead of vanishing.
    for row in report["results"]:
        if row["status"] != "ok":
            assert row["status"].startswith("skipped: "), row
    if not torch.cuda.is_available():
        assert {r["status"] for r in report["results"] if r["device"] == "cuda"} == {"skipped: no CUDA device"}


def test_seed_baseline_is_the_seeds_own_pipeline(tiny_checkpoint, tmp_path):
    """The seed runner predicts what the seed's keep_image_size_open_rgb + ToTensor + argmax predicts."""
    from PIL import Image

    path = tmp_path / "part.png"
    cv2.imwrite(str(path), bench.source_image(320, 180))
    model, meta = load_checkpoint(tiny_checkpoint)
    stages, mask = bench._seed_predict(model, Image.open(path).convert("RGB"), meta, "cpu")
    assert set(stages) == set(bench.STAGES) and stages["end_to_end"] > 0
    x = torch.from_numpy(np.array(seed_letterbox(path, (64, 64)))).permute(2, 0, 1).float()[None] / 255
    with torch.no_grad():
        net = torch.argmax(model(x), dim=1)[0].numpy().astype(np.uint8)
    expected = cv2.resize(net, (320, 320), interpolation=cv2.INTER_NEAREST)[:180, :320]
    np.testing.assert_array_equal(mask, expected)


def test_bench_user_errors_are_one_line(tiny_checkpoint, exported_tiny):
    for args, words in [
        ((str(tiny_checkpoint), "--backend", "tensorrt-ish"), "unknown"),
        ((str(tiny_checkpoint), "--precision", "fp8"), "unknown"),
        ((str(tiny_checkpoint), "--batch", "0"), "at least 1"),
        ((str(exported_tiny["onnx"]), "--img-size", "128", "128"), "exported for 64x64"),
    ]:
        result = CliRunner().invoke(bench.command, list(args))
        assert result.exit_code == 1, result.output
        assert words in result.output and "Traceback" not in result.output


def test_summarize_percentiles():
    s = bench.summarize([float(v) for v in range(1, 101)])
    assert (s["p50"], s["min"], s["mean"]) == (50.5, 1.0, 50.5)
    assert s["p90"] == pytest.approx(90.1) and s["p99"] == pytest.approx(99.01)
