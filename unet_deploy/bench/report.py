"""The report's views: the summary (best backend, speed-up over the seed), the text and Markdown tables, the JSON file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from tabulate import tabulate

from ..fileio import atomic_write_text
from .cases import DEVICES, SEED
from .machine import LIMIT_CAVEAT


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per device: the fastest of our letterbox cases (end-to-end p50 at batch 1) and its speed-up over the seed."""
    out: dict[str, Any] = {}
    for device in DEVICES:
        ok = [r for r in rows if r["device"] == device and r.get("status") == "ok" and r.get("mode") != "tiled"]
        ours = [r for r in ok if r["backend"] != SEED]
        if not ours:
            continue
        best = min(ours, key=lambda r: r["latency_ms"]["end_to_end"]["p50"])
        entry: dict[str, Any] = {"best": f"{best['backend']} {best['precision']}",
                                 "best_end_to_end_ms": best["latency_ms"]["end_to_end"]["p50"],
                                 "best_pre_post_share": best["pre_post_share"]}  # fmt: skip
        seed = [r for r in ok if r["backend"] == SEED]
        if seed:
            s = seed[0]["latency_ms"]["end_to_end"]["p50"]
            entry["seed_end_to_end_ms"] = s
            entry["speedup_vs_seed"] = s / entry["best_end_to_end_ms"]
        out[device] = entry
    return out


def _fmt(v: Any, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(report: dict[str, Any], reasons: bool) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, one row per case and, for the rows that did not run, ``backend prec dev: reason`` lines.

    ``reasons=True`` keeps the reason in the status cell; otherwise it says ``skipped``/``error``
    and the reason goes below the table, so that it does not widen the column.
    """
    batches = report["settings"]["batches"]
    head = ["backend", "prec", "dev", "status", "mode", "tiles", "ms/MP", "MB", "first ms", "pre", "infer", "post", "e2e p50", "p90", "p99",
            "pre+post", *[f"img/s b{b}" for b in batches], "peak MB", "agree"]  # fmt: skip
    rows, notes = [], []
    for r in report["results"]:
        if r.get("status") != "ok":
            status = r["status"] if reasons else r["status"].split(":")[0]
            rows.append([r["backend"], r["precision"], r["device"], status, r.get("mode", "letterbox")]
                        + [""] * (len(head) - 5))  # fmt: skip
            notes.append(f"{r['backend']} {r['precision']} {r['device']} {r.get('mode', 'letterbox')}: {r['status']}")
            continue
        lat = r["latency_ms"]
        tput = {t["batch"]: (_fmt(t["images_per_s"], 2) if t.get("status") == "ok" else "skip") for t in r["throughput"]}
        mem = r["memory_mb"]
        peak = mem.get("cuda_max_allocated") if r["device"] == "cuda" else mem.get("rss_peak_delta")
        agree = r.get("pixel_agreement")
        rows.append([
            r["backend"], r["precision"], r["device"], "ok", r.get("mode", "letterbox"), _fmt(r.get("tiles")),
            _fmt(r.get("ms_per_megapixel")), _fmt(r.get("size_mb")), _fmt(r["first_result_ms"], 0),
            _fmt(lat["preprocess"]["p50"]), _fmt(lat["inference"]["p50"]), _fmt(lat["postprocess"]["p50"]),
            _fmt(lat["end_to_end"]["p50"]), _fmt(lat["end_to_end"]["p90"]), _fmt(lat["end_to_end"]["p99"]),
            f"{100 * r['pre_post_share']:.1f}%" if r.get("pre_post_share") is not None else "-",
            *[tput.get(b, "-") for b in batches], _fmt(peak, 0),
            f"{100 * agree:.2f}%" if agree is not None else "-",
        ])  # fmt: skip
    return head, rows, notes


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The summary as sentences: best backend per device, its speed-up over the seed, the hardware limit."""
    lines = []
    for device, s in report.get("summary", {}).items():
        line = (f"{device}: best {s['best']} {s['best_end_to_end_ms']:.1f} ms end to end "
                f"(pre+post {100 * s['best_pre_post_share']:.1f}%)")  # fmt: skip
        if "speedup_vs_seed" in s:
            line += f"; seed pipeline {s['seed_end_to_end_ms']:.1f} ms -> {s['speedup_vs_seed']:.2f}x faster"
        lines.append(line)
    hw = report.get("hardware_limit")
    if hw:
        parts = [f"{k}: {v['matmul_gflops']:.3g} GFLOP/s -> {v['min_inference_ms']:.3g} ms"
                 for k, v in hw.items() if isinstance(v, dict)]  # fmt: skip
        lines.append(f"hardware limit ({hw['model_gflops']:.1f} GFLOPs/image at torch's matmul rate; "
                     f"{LIMIT_CAVEAT.split(' - ')[0]}): " + "; ".join(parts))
    return lines


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table (times in ms, p50 unless named), the skip reasons and the summary lines."""
    head, rows, notes = _table(report, reasons=False)
    m, s = report["model"], report["source"]
    title = (f"{Path(m['path']).name}: {m['kind']}, {len(m['classes'])} classes, input "
             f"{m['input_size'][0]}x{m['input_size'][1]}, base {m['base_channels']}; source {s['description']}; "
             f"{report['settings']['runs']} runs after {report['settings']['warmup']} warm-up")  # fmt: skip
    align = ["left"] * 5 + ["right"] * (len(head) - 5)
    table = tabulate(rows, headers=head, tablefmt="plain", disable_numparse=True, colalign=align)
    return "\n".join([title, table, *notes, *summary_lines(report)])


def to_markdown(report: dict[str, Any], title: str | None = None, level: int = 2) -> str:
    """The report as a Markdown section: a heading, the table, the summary and the reference used."""
    head, rows, _ = _table(report, reasons=True)
    m = report["model"]
    title = title or f"{Path(m['path']).name} ({m['input_size'][0]}x{m['input_size'][1]}, base {m['base_channels']})"
    gf = m.get("gflops")
    intro = (f"Model: {m['kind']}, {len(m['classes'])} classes, input {m['input_size'][0]}x{m['input_size'][1]}, "
             f"base_channels {m['base_channels']}" + (f", {m.get('parameters', 0):,} parameters, {gf:.2f} GFLOPs/image"
             if gf else "") + f". Source image: {report['source']['description']}. "
             f"{report['settings']['runs']} timed runs after {report['settings']['warmup']} warm-up; "
             f"accuracy = argmax pixel agreement with {report['reference']}. Times in ms (p50 unless named).")  # fmt: skip
    rows = [[c.replace("|", "/") for c in r] for r in rows]
    out = [f"{'#' * level} {title}", "", intro, "", tabulate(rows, headers=head, tablefmt="github", disable_numparse=True)]
    summary = summary_lines(report)
    if summary:
        out += [""] + [f"- {s}" for s in summary]
    return "\n".join(out) + "\n"


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(report, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
