"""The results page of ``run_gpu.py``: one Markdown page from its report dict, targets first."""
from __future__ import annotations

from typing import Any

# Issue 28's targets for the seed-size model on the H200.
TARGET_E2E_MS, TARGET_NET_MS, TARGET_IPS, TARGET_AGREE = 2.0, 0.5, 5000.0, 0.999


def _f(v: Any, fmt: str = ".2f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("**met**" if ok else "**not met**")


def to_markdown(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["sections"]
    mm = s.get("matmul_tflops") or {}
    inf = s.get("inference") or {}
    net = s.get("network_alone") or {}
    lines = [f"# GPU benchmark: {m.get('gpu') or 'no GPU (dry run)'}", "",
             f"- Date: {m.get('date')}; command: `{report['command']}`; budget {report['budget_s']:.0f} s"
             f"{' (quick)' if report.get('quick') else ''}; UNet base {report['base_channels']}",
             f"- Host CPU: {m.get('cpu')}, {m.get('cores')} cores; flags: {' '.join(m.get('cpu_flags', []))}",
             "- Software: " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
             + f"; cudnn.benchmark {report.get('cudnn_benchmark')}",
             "- Precisions: `fp32` = IEEE fp32 (TF32 off for convolutions and matmuls), `tf32` = torch's default "
             "for convolutions on Ampere and later, `fp16`/`bf16` = the weights cast (reduced_precision, channels-last).",
             "", "## Targets (seed-size model)", "", "| target | reached | verdict |", "|---|---|---|"]  # fmt: skip
    best_e2e = _best(inf, lambda r: (r.get("batch1_ms") or {}).get("end_to_end", {}).get("p50"))
    best_net = _best({k: v for k, v in net.items() if v.get("batch") == 1 and v["shape"].startswith("rect")},
                     lambda r: r.get("ms"))  # fmt: skip
    best_b64 = max(([v["images_per_s"], k] for k, v in net.items() if v.get("batch") == 64 and v["precision"] in ("fp16", "bf16")),
                   default=[None, None])  # fmt: skip
    agree = [inf[p]["agreement_with_fp32"] for p in ("fp16", "bf16") if p in inf]
    lines += [
        f"| batch-1 end to end from a 1080p frame, p50 <= {TARGET_E2E_MS} ms | {_f(best_e2e[0])} ms ({best_e2e[1]}) | "
        f"{_verdict(None if best_e2e[0] is None else best_e2e[0] <= TARGET_E2E_MS)} |",
        f"| the network alone with CUDA graphs (1080p rect input, batch 1) <= {TARGET_NET_MS} ms | {_f(best_net[0], '.3f')} ms "
        f"({best_net[1]}) | {_verdict(None if best_net[0] is None else best_net[0] <= TARGET_NET_MS)} |",
        f"| >= {TARGET_IPS:.0f} images/s at batch 64 in bf16 or fp16 (network) | {_f(best_b64[0], '.0f')} ({best_b64[1]}) | "
        f"{_verdict(None if best_b64[0] is None else best_b64[0] >= TARGET_IPS)} |",
        f"| fp16/bf16 mask agreement with fp32 >= {100 * TARGET_AGREE:.1f}% | "
        + ", ".join(f"{p} {100 * inf[p]['agreement_with_fp32']:.3f}% (worst image {100 * inf[p]['worst_image_agreement']:.3f}%)"
                    for p in ("fp16", "bf16") if p in inf)
        + f" | {_verdict(None if not agree else min(agree) >= TARGET_AGREE)} |",
    ]  # fmt: skip
    lines += ["", "## Matrix rate measured in this run (random data, 8192^3)", "",
              " ".join(f"{k} {v:.0f} TFLOP/s;" for k, v in mm.items()) or "-"]  # fmt: skip
    if inf:
        lines += ["", "## Segmenter on a 1080p frame (device pipeline), batch 1: ms per stage", "",
                  "| precision | pipeline | agreement with fp32 | preprocess p50 | inference p50 / p90 / p99 | postprocess p50 | "
                  "end to end p50 / p90 / p99 |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for p, r in inf.items():
            b = r.get("batch1_ms", {})
            lines.append(f"| {p} | {r.get('pipeline')} | {100 * r.get('agreement_with_fp32', float('nan')):.3f}% | "
                         f"{_f(b.get('preprocess', {}).get('p50'), '.3f')} | {_pct(b.get('inference'))} | "
                         f"{_f(b.get('postprocess', {}).get('p50'), '.3f')} | {_pct(b.get('end_to_end'))} |")  # fmt: skip
        lines += ["", "### Images/s of `predict_batch` (1080p frames in, masks and regions out)", "",
                  "| precision | " + " | ".join(f"batch {b}" for b in (1, 16, 64, 256)) + " | peak GPU MB (largest batch) |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for p, r in inf.items():
            t = r.get("throughput", {})
            peaks = [v.get("peak_mb") for v in t.values() if isinstance(v, dict) and v.get("peak_mb")]
            lines.append(f"| {p} | " + " | ".join(_f((t.get(str(b)) or {}).get("images_per_s"), ".0f") for b in (1, 16, 64, 256))
                         + f" | {_f(peaks[-1] if peaks else None, '.0f')} |")  # fmt: skip
    if net:
        lines += ["", "## The network alone under CUDA graphs", "",
                  "| input | precision | batch | ms | images/s | effective TFLOP/s | share of bf16 matmul rate | peak MB |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in net.values():
            share = r["tflops"] / mm["bf16"] if mm.get("bf16") else None
            lines.append(f"| {r['shape']} | {r['precision']} | {r['batch']} | {r['ms']:.3f} | {r['images_per_s']:.0f} | "
                         f"{r['tflops']:.1f} | {_f(None if share is None else 100 * share, '.1f')}% | {_f(r.get('peak_mb'), '.0f')} |")  # fmt: skip
    seed, host = s.get("seed_pipeline") or {}, s.get("host_pipeline") or {}
    if seed.get("end_to_end"):
        lines += ["", "## The tutorial's pipeline on the same GPU and weights (batch 1, 1080p)", "",
                  f"end to end p50 {_f(seed['end_to_end']['p50'])} ms (p90 {_f(seed['end_to_end']['p90'])}); "
                  + (f"ours best {_f(best_e2e[0])} ms -> **{seed['end_to_end']['p50'] / best_e2e[0]:.1f}x**" if best_e2e[0] else "")]  # fmt: skip
    if host.get("end_to_end"):
        lines += ["", f"Our host pipeline (numpy/Pillow letterbox) around the same bf16 network: end to end p50 "
                      f"{_f(host['end_to_end']['p50'])} ms, preprocess {_f(host['preprocess']['p50'])}, "
                      f"postprocess {_f(host['postprocess']['p50'])}."]  # fmt: skip
    tr, ts = s.get("training") or {}, s.get("training_step") or {}
    lines += ["", "## Training (bf16 AMP)", ""]
    if tr.get("epochs"):
        lines.append(f"- `unet_deploy.train.train`, {tr['images']} synthetic 480x270 frames, {tr['epochs']} epochs: "
                     f"{_f(tr['images_per_s_with_validation'], '.0f')} images/s (train + validation, data loading included), "
                     f"val mIoU {_f(tr.get('val_miou'), '.3f')}")  # fmt: skip
    if ts.get("images_per_s"):
        lines.append(f"- the training step alone (batch {ts['batch']}, 256x256, data on the device): {_f(ts['images_per_s'], '.0f')} images/s, "
                     f"peak {_f(ts.get('peak_mb'), '.0f')} MB")  # fmt: skip
    errors = {k: v for k, v in s.items() if isinstance(v, dict) and ("error" in v or "skipped" in v)}
    if errors:
        lines += ["", "## Sections that did not run", ""] + [f"- {k}: {v.get('error') or v.get('skipped')}" for k, v in errors.items()]
    return "\n".join(lines) + "\n"


def _best(rows: dict[str, Any], key: Any) -> tuple[float | None, str | None]:
    found = [(key(r), name) for name, r in rows.items() if isinstance(r, dict) and key(r) is not None]
    return min(found) if found else (None, None)


def _pct(d: dict | None) -> str:
    if not d:
        return "-"
    return f"{d['p50']:.3f} / {d['p90']:.3f} / {d['p99']:.3f}"
