"""unet-bench: the table and the JSON report on an exported ONNX model and on a checkpoint, the seed baseline, and a registered format."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.seed_net import seed_letterbox
from unet_deploy import bench, formats
from unet_deploy.checkpoint import load_checkpoint, save_checkpoint
from unet_deploy.cli.bench import command
from unet_deploy.runtime import Segmenter
from unet_deploy.runtime.torch_backends import CheckpointBackend

FAST = ["--runs", "3", "--warmup", "1", "--batch", "1,2", "--source-size", "320", "180", "--threads", "1"]


def _invoke(*args: str):
    return CliRunner().invoke(command, list(args), catch_exceptions=False)


def _check_ok_row(row: dict, batches=(1, 2)) -> None:
    """Every measurement the issue asks for is in the row, and the numbers agree with each other."""
    assert row["status"] == "ok", row["status"]
    lat = row["latency_ms"]
    for stage in bench.STAGES:
        s = lat[stage]
        assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"], (stage, s)
    # The stages are the Segmenter's own timers, inside the call that end to end times: they add up to
    # no more than it (the rest is the call's own bookkeeping), run by run and so in the mean.
    parts = lat["preprocess"]["mean"] + lat["inference"]["mean"] + lat["postprocess"]["mean"]
    assert parts <= lat["end_to_end"]["mean"] * (1 + 1e-9)
    pre_post = (lat["preprocess"]["p50"] + lat["postprocess"]["p50"]) / lat["end_to_end"]["p50"]
    assert row["pre_post_share"] == pytest.approx(pre_post)
    assert row["runs"] == 3
    tput = {t["batch"]: t for t in row["throughput"]}
    assert list(tput) == list(batches) and all(t["status"] == "ok" for t in tput.values())
    for b, t in tput.items():  # images/s is the batch over its own measured end-to-end p50
        assert t["images_per_s"] == pytest.approx(1000.0 * b / t["latency_ms"]["end_to_end"]["p50"])
    assert tput[1]["latency_ms"] == lat
    assert row["load_ms"] > 0 and row["first_call_ms"] > 0
    assert row["first_result_ms"] == pytest.approx(row["load_ms"] + row["first_call_ms"])
    assert row["memory_mb"]["rss_peak_delta"] is not None
    assert row["size_mb"] > 0


def _check_head(report: dict, classes=("background", "scratch", "spot")) -> None:
    m = report["machine"]
    assert m["cpu"] and m["cores"] >= 1 and isinstance(m["cpu_flags"], list) and "gpu" in m and m["date"]
    assert report["source"]["size"] == [180, 320]
    assert report["model"]["classes"] == list(classes)
    assert report["model"]["gflops"] > 0


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint, tmp_path_factory):
    """``tiny_checkpoint`` exported to ONNX alone (the formats other tests need, without AOTI's compile)."""
    from unet_deploy.export import export_model

    return export_model(tiny_checkpoint, "onnx", out_dir=tmp_path_factory.mktemp("onnx"), check=False, verbose=False)["onnx"]


def test_bench_on_exported_onnx_prints_the_table_and_writes_every_field(tiny_onnx, tmp_path):
    onnx = tiny_onnx
    out, md = tmp_path / "bench.json", tmp_path / "b.md"
    result = _invoke(str(onnx), *FAST, "--json", str(out), "--markdown", str(md))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split()[:4] == ["onnxruntime", "fp32", "cpu", "ok"] for line in lines), result.output
    assert "e2e p50" in result.output and "img/s b2" in result.output
    report = json.loads(out.read_text())
    _check_head(report)
    rows = {r["backend"]: r for r in report["results"]}
    _check_ok_row(rows["onnxruntime"])
    # The only result is its own reference; the seed baseline needs the weights.
    assert report["reference"] == "onnxruntime fp32 cpu"
    assert rows["seed"]["status"].startswith("skipped: needs the checkpoint")
    assert set(rows) == {"onnxruntime", "seed"}
    table = [[c.strip() for c in line.strip("|").split("|")] for line in md.read_text().splitlines() if line.startswith("|")]
    assert ["onnxruntime", "fp32", "cpu", "ok"] in [r[:4] for r in table]


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
    assert report["reference"] == "eager fp32 cpu"
    assert ok["torchscript"]["pixel_agreement"] > 0.999  # the same weights, exported
    assert ok["seed"]["pixel_agreement"] > 0.5  # the seed resamples the letterbox its own way
    assert ok["torchscript"]["artefact"].endswith(".torchscript.pt") and "torchscript cpu fp32" in report["export_ms"]
    # The summary names the fastest measured row of ours and its ratio to the measured seed row.
    measured = [r for r in report["results"] if r["status"] == "ok" and r["device"] == "cpu"]
    ours = min((r for r in measured if r["backend"] != "seed"), key=lambda r: r["latency_ms"]["end_to_end"]["p50"])
    seed_ms = ok["seed"]["latency_ms"]["end_to_end"]["p50"]
    summary = report["summary"]["cpu"]
    assert summary["best"] == f"{ours['backend']} {ours['precision']}"
    assert summary["speedup_vs_seed"] == pytest.approx(seed_ms / ours["latency_ms"]["end_to_end"]["p50"])
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
    stages, mask = bench.seed_predict(model, Image.open(path).convert("RGB"), meta, "cpu")
    assert set(stages) == set(bench.STAGES) and stages["end_to_end"] > 0
    x = torch.from_numpy(np.array(seed_letterbox(path, (64, 64)))).permute(2, 0, 1).float()[None] / 255
    with torch.no_grad():
        net = torch.argmax(model(x), dim=1)[0].numpy().astype(np.uint8)
    expected = cv2.resize(net, (320, 320), interpolation=cv2.INTER_NEAREST)[:180, :320]
    np.testing.assert_array_equal(mask, expected)


# ----------------------------------------------------------------------------- a registered format
class SkewedBackend(CheckpointBackend):
    """A checkpoint run eagerly whose logits for classes 0 and 1 are swapped on the left half of the input."""

    name = "skewed"

    def forward(self, batch: np.ndarray) -> np.ndarray:
        logits = super().forward(batch).copy()
        half = logits.shape[-1] // 2
        logits[:, [0, 1], :, :half] = logits[:, [1, 0], :, :half]
        return logits


def write(model, example, path, meta, opts) -> None:
    """The skewed format's writer: the weights as a checkpoint under the format's suffix."""
    save_checkpoint(path, model, meta)


SKEWED = formats.Format(
    name="skewed", title="Skewed", suffixes=(".skewed",), backend="skewed",
    backend_class=f"{__name__}:SkewedBackend", exporter=f"{__name__}:write", precisions=("fp32",), devices=("cpu",),
    needs_torch=True, requires=("torch",), options=frozenset(), note="a test format that disagrees on purpose",
)  # fmt: skip


@pytest.fixture
def skewed_format(with_formats):
    with_formats(SKEWED)
    return SKEWED


def test_a_registered_format_is_offered_and_its_disagreement_measured(skewed_format, tiny_checkpoint, tmp_path):
    assert "skewed" in bench.backend_names()
    assert bench.Case("skewed", "fp32", "cpu", "skewed") in bench.cases()
    assert "skewed" not in [c.backend for c in bench.cases() if c.device == "cuda"]  # its devices say cpu only
    assert "skewed" in CliRunner().invoke(command, ["--help"]).output
    image = bench.source_image(320, 180)
    report = bench.run_benchmark(tiny_checkpoint, backends=["eager", "skewed"], device="cpu", runs=1, warmup=1,
                                 batches=(1,), image=image, threads=1)  # fmt: skip
    rows = {r["backend"]: r for r in report["results"]}
    assert rows["skewed"]["status"] == "ok" and rows["skewed"]["format"] == "skewed"
    assert rows["skewed"]["artefact"].endswith(".skewed")
    # The agreement is measured from the masks: the same share a user sees between the two Segmenters.
    ref = Segmenter(tiny_checkpoint, device="cpu")(image).mask
    from unet_deploy.export import export_model

    exported = export_model(tiny_checkpoint, "skewed", out_dir=tmp_path, check=False, verbose=False)["skewed"]
    skewed = Segmenter(exported, device="cpu")(image).mask
    expected = float((ref == skewed).mean())
    assert expected < 0.9
    assert rows["skewed"]["pixel_agreement"] == pytest.approx(expected)


def test_a_format_is_offered_only_while_in_the_table(monkeypatch):
    """Self-contained: offered while the table holds it, gone with the original table back."""
    with monkeypatch.context() as m:
        m.setattr(formats, "FORMATS", type(formats.FORMATS)({**formats.FORMATS, SKEWED.name: SKEWED}))
        assert "skewed" in bench.backend_names()
        assert "skewed" in CliRunner().invoke(command, ["--help"]).output
    assert "skewed" not in bench.backend_names()
    assert "skewed" not in CliRunner().invoke(command, ["--help"]).output


def test_bench_user_errors_are_one_line(tiny_checkpoint, tiny_onnx):
    for args, words in [
        ((str(tiny_checkpoint), "--backend", "tensorrt-ish"), "unknown"),
        ((str(tiny_checkpoint), "--precision", "fp8"), "unknown"),
        ((str(tiny_checkpoint), "--batch", "0"), "at least 1"),
        ((str(tiny_onnx), "--img-size", "128", "128"), "exported for 64x64"),
    ]:
        result = CliRunner().invoke(command, list(args))
        assert result.exit_code == 1, result.output
        assert words in result.output and "Traceback" not in result.output


def test_summarize_percentiles():
    s = bench.summarize([float(v) for v in range(1, 101)])
    assert (s["p50"], s["min"], s["mean"]) == (50.5, 1.0, 50.5)
    assert s["p90"] == pytest.approx(90.1) and s["p99"] == pytest.approx(99.01)


def _check_tiled_report(report: dict, backends: set[str], tiling: dict) -> None:
    """Letterbox and tiled rows for each backend; tile count from the grid; ms/MP from the row's own ms/frame."""
    from unet_deploy.tiling import scaled_size, tile_grid

    h, w = report["source"]["size"]
    ys, xs = tile_grid(scaled_size((h, w), tiling["scale"]), report["model"]["input_size"], tiling["overlap"])
    ok = [r for r in report["results"] if r["status"] == "ok"]
    assert {(r["backend"], r["mode"]) for r in ok} == {(b, m) for b in backends for m in ("letterbox", "tiled")}
    for r in ok:
        assert r["tiles"] == (len(ys) * len(xs) if r["mode"] == "tiled" else 1)
        assert r["ms_per_frame"] == r["latency_ms"]["end_to_end"]["p50"] > 0
        assert r["ms_per_megapixel"] == pytest.approx(r["ms_per_frame"] / (h * w / 1e6))
    tiled = {r["backend"]: r for r in ok if r["mode"] == "tiled"}
    letterbox = {r["backend"]: r for r in ok if r["mode"] == "letterbox"}
    for b in backends:  # the work, not its wall time: many network inputs against the letterbox's one
        assert tiled[b]["tiles"] == len(ys) * len(xs) > letterbox[b]["tiles"] == 1
    assert report["summary"]["cpu"]["best"].split()[0] in backends  # the summary ranks letterbox rows


def test_tiled_cases(tiny_checkpoint, tmp_path):
    """--tile-scale adds a tiled row beside each case's letterbox row, in the table and the JSON."""
    tiling = {"scale": 0.5, "overlap": 0.25}
    out = tmp_path / "bench.json"
    result = _invoke(str(tiny_checkpoint), "--backend", "eager,onnxruntime", "--device", "cpu", "--runs", "2",
                     "--warmup", "1", "--batch", "1", "--source-size", "512", "384", "--threads", "1",
                     "--tile-scale", "0.5", "--overlap", "0.25", "--json", str(out), "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["tiling"] == tiling
    _check_tiled_report(report, {"eager", "onnxruntime"}, tiling)
    assert "tiled" in result.output and "ms/MP" in result.output
    # the tiled mask at fp32 on both backends is the same map
    tiled = [r for r in report["results"] if r["mode"] == "tiled" and r["status"] == "ok"]
    assert all(r["pixel_agreement"] > 0.99 for r in tiled)


def test_model_tiling_is_the_default(tiny_checkpoint, tmp_path):
    """A model whose metadata says tiling is benchmarked tiled without asking; tiling=False turns it off."""
    model, meta = load_checkpoint(tiny_checkpoint)
    meta.tiling = {"scale": 0.5, "overlap": 0.5}
    path = save_checkpoint(tmp_path / "tiled.pt", model, meta, epoch=1)
    source = bench.source_image(512, 384)
    kw = dict(backends=["eager"], device="cpu", runs=2, warmup=1, batches=[1], image=source, threads=1)
    report = bench.run_benchmark(path, **kw)
    assert report["tiling"] == meta.tiling
    _check_tiled_report(report, {"eager"}, meta.tiling)
    plain = bench.run_benchmark(path, tiling=False, **kw)
    assert plain["tiling"] is None and {r["mode"] for r in plain["results"]} == {"letterbox"}


def test_peak_rss_counts_a_brief_allocation_between_samples():
    """200 MB held for a moment, freed long before the 10 s sampler looks: the kernel's reset
    high-water mark still counts it (the benchmark's memory figure, e.g. tiling an 8000x6000 frame)."""
    from unet_deploy.bench.measure import PeakRSS, release_memory

    release_memory()
    with PeakRSS(interval_s=10.0) as rss:
        block = np.ones(200 * 2**20 // 8)  # touched: resident
        del block
    if not rss.exact:
        pytest.skip("this kernel refuses /proc/self/clear_refs; PeakRSS samples only")
    assert 190 <= rss.delta_mb < 400, rss.delta_mb
    with PeakRSS(interval_s=10.0) as quiet:  # the mark was reset: the earlier block is not counted again
        pass
    assert quiet.delta_mb < 50, quiet.delta_mb
