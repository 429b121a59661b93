"""The page of ``model_ladder.py``: Markdown, the raw JSON and the Pareto plot, from its state dict."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REFERENCE = "b64"  # the seed-size rung
# Issue 29's targets
MAX_GFLOP_SHARE, MAX_MIOU_DROP, MAX_SMALL_RECALL_DROP, MIN_STREAM_FPS, MAX_PREPOST_SHARE = 0.25, 0.01, 0.02, 60.0, 0.10
EPS = 1e-9  # a value on a target's line meets it (0.79 - 0.80 is -0.0100000001 in floats)
SMALL = "<64"  # the held-back set's size bucket; the small-defect recall itself comes from the small-defect set


def _f(v: Any, fmt: str = ".3f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, (int, float)) else "-"


def pareto(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names of the points no other point beats on both axes (higher x and higher y), by x."""
    front = [n for n, (x, y) in points.items()
             if not any(x2 >= x and y2 >= y and (x2, y2) != (x, y) for x2, y2 in points.values())]  # fmt: skip
    return sorted(front, key=lambda n: points[n][0])


def rows(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per rung: the flat numbers the page shows."""
    out = {}
    for name, r in state["rungs"].items():
        ev, int8, bf16 = r.get("eval", {}), state["speed"].get(f"{name} int8", {}), state["speed"].get(f"{name} bf16", {})
        e2e = int8.get("end_to_end")
        prepost = (int8.get("preprocess", 0) + int8.get("postprocess", 0)) if e2e else None
        out[name] = {**r["arch"], "epochs": r["epochs"], "budget": r["budget"], "eval": ev,
                     "int8": int8, "bf16": bf16, "prepost_share": prepost / e2e if e2e else None,
                     "stream_fps": state.get("stream", {}).get(name, {}).get("fps")}  # fmt: skip
    return out


def targets(table: dict[str, dict[str, Any]]) -> list[str]:
    """The issue's three targets, checked on the measured rungs."""
    ref = table.get(REFERENCE)
    if ref is None:
        return ["No seed-size rung (b64) in this run: the targets need it."]
    ref_ev = ref["eval"]["epochs_int8"]
    lines = ["| rung | GFLOP vs b64 | int8 mIoU (b64: {0}) | small-defect recall (b64: {1}) | stream frames/s | pre+post share | all targets |".format(
        _f(ref_ev["miou"]), _pct(ref_ev["small_set"]["recall"])), "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in table.items():
        if name == REFERENCE:
            continue
        ev, share = r["eval"]["epochs_int8"], r["gflop_square"] / ref["gflop_square"]
        d_miou = ev["miou"] - ref_ev["miou"]
        small, ref_small = ev["small_set"]["recall"], ref_ev["small_set"]["recall"]
        d_small = small - ref_small if small is not None and ref_small is not None else None
        ok = [share <= MAX_GFLOP_SHARE + EPS, d_miou >= -MAX_MIOU_DROP - EPS,
              d_small is not None and d_small >= -MAX_SMALL_RECALL_DROP - EPS, (r["stream_fps"] or 0) >= MIN_STREAM_FPS - EPS,
              r["prepost_share"] is not None and r["prepost_share"] <= MAX_PREPOST_SHARE + EPS]  # fmt: skip
        lines.append(f"| {name} | {share:.3f} {'ok' if ok[0] else 'no'} | {_f(ev['miou'])} ({100 * d_miou:+.1f} pt) "
                     f"{'ok' if ok[1] else 'no'} | {_pct(small)} ({'-' if d_small is None else f'{100 * d_small:+.1f} pt'}) "
                     f"{'ok' if ok[2] else 'no'} | {_f(r['stream_fps'], '.1f')} {'ok' if ok[3] else 'no'} | "
                     f"{_pct(r['prepost_share'])} {'ok' if ok[4] else 'no'} | {'**all met**' if all(ok) else 'no'} |")  # fmt: skip
    return lines


def plot(table: dict[str, dict[str, Any]], path: Path) -> None:
    """int8 mIoU on held-back images against int8 stream frames/s, the Pareto frontier drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = {n: (r["stream_fps"], r["eval"]["epochs_int8"]["miou"]) for n, r in table.items() if r["stream_fps"]}
    budget = {n: (r["stream_fps"], r["eval"]["budget"]["miou"]) for n, r in table.items() if r["stream_fps"]}
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    ax.scatter(*zip(*pts.values()), s=60, label="same epochs (OpenVINO int8 on the held-back images)", zorder=3)
    ax.scatter(*zip(*budget.values()), s=40, marker="x", label="same CPU budget (checkpoint fp32)", zorder=3)
    xs, ys = zip(*pts.values())
    span = (max(xs) - min(xs) or 1.0, max(ys) - min(ys) or 1.0)
    placed: list[tuple[float, float]] = []
    for n, (x, y) in pts.items():  # a label near an earlier one goes below its point
        near = any(abs(x - px) < 0.08 * span[0] and abs(y - py) < 0.08 * span[1] for px, py in placed)
        ax.annotate(f"{n}\n{table[n]['gflop_square']:.1f} GFLOP", (x, y), textcoords="offset points",
                    xytext=(6, -24) if near else (6, 4), fontsize=8)
        placed.append((x, y))
    front = pareto(pts)
    ax.plot([pts[n][0] for n in front], [pts[n][1] for n in front], "--", color="grey", label="Pareto frontier (same epochs)")
    ax.set_xlabel("1080p stream, int8, frames/s on this CPU (higher is faster)")
    ax.set_ylabel("mIoU on held-back images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def hires_section(state: dict[str, Any]) -> list[str]:
    """The hires tiled set's ladder: accuracy of every rung trained and evaluated on native-pixel tiles."""
    hires, a = state.get("hires"), state["args"]
    if not hires:
        return []
    w, h = a["hires_size"]
    ref = hires.get(REFERENCE, {}).get("eval", {}).get("epochs_int8", {}).get("miou")
    lines = ["## The hires tiled set", "",
             f"{a['hires_frames']} frames {w}x{h} (`unet-deploy synth --preset hires` defects, 4-40 px across, "
             f"{a['hires_defects'][0]}-{a['hires_defects'][1]} per frame, on frames smaller than the preset's 2448x2048 for time; "
             f"seed 0, 20% the validation split) and {a['hires_test']} held-back frames (seed 99). Every rung trains on random "
             f"native-pixel {a['size']}x{a['size']} crops (`unet-train --tile-scale 1.0`, half of them on a defect), same options "
             f"as above, validates and is evaluated **tiled** on whole frames (overlap 0.25; `unet-deploy eval` follows the "
             f"model's tiling), its int8 IR calibrated on tiles. Recall by defect area in pixels at the frame's size.", "",
             "| rung | GFLOP per tile | epochs | CPU s per epoch | best val mIoU (tiled) | held-back mIoU fp32 | held-back mIoU int8 "
             "(vs b64) | defect recall int8 <64 / 64-1023 / >=1024 px | false alarms int8 | budget: epochs | budget: held-back "
             "mIoU | budget: recall <64 px |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in hires.items():
        ev, arch = r.get("eval"), state["rungs"].get(name, {}).get("arch", {})
        if not ev:
            continue
        i8, rs = ev["epochs_int8"], ev["epochs_int8"]["recall_by_size"]
        gflop = arch.get("gflop_square", 0) * (a["size"] / 256) ** 2 if arch else None
        delta = f" ({100 * (i8['miou'] - ref):+.1f} pt)" if ref is not None and name != REFERENCE else ""
        lines.append(
            f"| {name} | {_f(gflop, '.2f')} | {r['epochs']['epochs']} | {_f(r['epochs']['cpu_s_per_epoch'], '.1f')} | "
            f"{_f(r['epochs']['best_val_miou'])} | {_f(ev['epochs']['miou'])} | {_f(i8['miou'])}{delta} | "
            f"{' / '.join(_pct(v) for v in rs.values())} | {i8['false_alarms']} | {r['budget']['epochs']} | "
            f"{_f(ev['budget']['miou'])} | {_pct(ev['budget']['recall_by_size'].get(SMALL))} |"
        )  # fmt: skip
    truth = next(iter(r["eval"] for r in hires.values() if r.get("eval")))["epochs_int8"]["truth_by_size"]
    return lines + ["", "Held-back hires defects by area: " + ", ".join(f"{k} px: {v}" for k, v in truth.items()) + ".", ""]


def write_report(state: dict[str, Any], out: Path, command: str) -> None:
    """``out``.md, .json and .png from the ladder's state."""
    a, m, table = state["args"], state.get("machine", {}), rows(state)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(state, indent=1))
    plot(table, out.with_suffix(".png"))
    lines = [
        "# Model ladder: how big a UNet this inspection problem needs (CPU)", "",
        f"`{command}` — {m.get('date')}", "",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, flags {' '.join(m.get('cpu_flags', []))}; "
        + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
        + f". Load average (1 min) before/after the speed runs: {_f(state['load'][0][0], '.2f')} / {_f(state['load'][1][0], '.2f')}.", "",
        f"Data: {a['train_count']} synthetic inspection images {a['size']}x{a['size']} (`unet-deploy synth`, seed 0; 20% of them "
        f"the trainer's validation split), and {a['test_count']} held-back images (seed 99) that no training saw, scored by "
        f"`unet-deploy eval` (its Python API), and {a['test_count']} held-back images with small defects only (4-8 px across, "
        f"seed 98): their recall is the small-defect recall. Training: {a['size']}x{a['size']} input, batch 8, Adam 1e-3 (warm-up + cosine), "
        f"cross-entropy, dropout 0 for every rung, augmentation on, training seed {a.get('seed', 0)}, "
        f"{'bf16 autocast (the trainer default on a CPU with native bf16)' if m.get('native_bf16') else 'fp32'} on the CPU (2 threads, workers 0); first "
        f"**{a['epochs']} epochs for every rung**, then a second training of every rung with **the same CPU budget, "
        f"{a['budget_s']:.0f} CPU seconds** (the epoch count that fits it, at most {a['max_epochs']}). Speed: the equal-epoch "
        f"weights exported to OpenVINO int8 (calibrated on the training set) and bf16 at the seed's 256x256 letterbox "
        f"(rect 144x256 for a 1080p frame), `Segmenter` end to end on 1080p synthetic frames, "
        f"{a['speed_rounds']} rounds interleaved over rungs and precisions, medians; stream: `Segmenter.stream` of a "
        f"{a['stream_frames']}-frame 1080p MJPG video after a warm-up pass.", "",
        "## Targets (issue 29)", "", *targets(table), "",
        "## Accuracy", "",
        "| rung | base | up-sampling | parameters | GFLOP 256x256 | GFLOP 1080p rect | epochs | best val mIoU | held-back mIoU fp32 | held-back mIoU int8 | defect recall int8 <64 / 64-1023 / >=1024 px | false alarms int8 | small-defect recall int8 (false alarms) | budget: epochs | budget: held-back mIoU | budget: small-defect recall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, r in table.items():
        ev = r["eval"]
        rs = ev["epochs_int8"]["recall_by_size"]
        lines.append(
            f"| {name} | {r['base_channels']} | {r['upsample']} | {r['params'] / 1e6:.2f} M | {r['gflop_square']:.2f} | "
            f"{r['gflop_rect']:.2f} | {r['epochs']['epochs']} | {_f(r['epochs']['best_val_miou'])} | {_f(ev['epochs']['miou'])} | "
            f"{_f(ev['epochs_int8']['miou'])} | {' / '.join(_pct(v) for v in rs.values())} | {ev['epochs_int8']['false_alarms']} | "
            f"{_pct(ev['epochs_int8']['small_set']['recall'])} ({ev['epochs_int8']['small_set']['false_alarms']}) | "
            f"{r['budget']['epochs']} | {_f(ev['budget']['miou'])} | {_pct(ev['budget']['small_set']['recall'])} |"
        )  # fmt: skip
    truth = next(iter(table.values()))["eval"]["epochs_int8"]["truth_by_size"]
    lines += ["", "Held-back defects by size (pixels at the training size): "
              + ", ".join(f"{k}: {v}" for k, v in truth.items()) + "; small-defect set: "
              + f"{next(iter(table.values()))['eval']['epochs_int8']['small_set']['defects']} defects.", "",
              "## Speed on a 1080p frame (OpenVINO, 256x256 letterbox -> rect 144x256)", "",
              "| rung | int8 end to end ms | int8 pre / inference / post ms | pre+post share | int8 frames/s (1 / e2e) | bf16 end to end ms | int8 stream frames/s | CPU seconds per training epoch |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in table.items():
        i8, b16 = r["int8"], r["bf16"]
        lines.append(
            f"| {name} | {_f(i8.get('end_to_end'), '.2f')} | {_f(i8.get('preprocess'), '.2f')} / {_f(i8.get('inference'), '.2f')} / "
            f"{_f(i8.get('postprocess'), '.2f')} | {_pct(r['prepost_share'])} | {_f(1000 / i8['end_to_end'] if i8.get('end_to_end') else None, '.1f')} | "
            f"{_f(b16.get('end_to_end'), '.2f')} | {_f(r['stream_fps'], '.1f')} | {_f(r['epochs']['cpu_s_per_epoch'], '.1f')} |"
        )  # fmt: skip
    lines += ["", f"![mIoU against frames/s]({out.with_suffix('.png').name})", "", *hires_section(state)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
