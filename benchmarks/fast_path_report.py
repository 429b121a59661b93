"""The Markdown page of ``cpu_fast_path.py``: the side-by-side table, the int8 variants, rect vs square, AVX2, acceptance."""
from __future__ import annotations

from typing import Any

from unet_deploy import bench, cpu

SPEEDUP = {"int8": 7.0, "bf16": 4.0, "avx2 int8": 2.0}  # x the seed pipeline (issue 17)
MIN_AGREEMENT, MIN_WORST, MAX_DROP = 99.5, 98.0, 0.5  # int8's accuracy bar (issue 17)
RECT_AGREEMENT, RECT_DROP = 99.5, 0.3  # rect becomes the default for new exports only above this


def _f(v: float | None, digits: int = 0) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _get(rows: list[Any], name: str, pad: str = "top-left") -> Any:
    return next((r for r in rows if _attr(r, "name").startswith(name) and _attr(r, "pad") == pad and _attr(r, "stages")), None)


def _attr(r: Any, key: str) -> Any:
    return r[key] if isinstance(r, dict) else getattr(r, key)


def table(rows: list[Any], seed: Any, ref: Any) -> list[str]:
    """The rows with stage medians, speed-ups, agreement with the reference and mIoU drop."""
    out = [
        "| path | letterbox | end to end ms | pre | inference | post | pre+post share | vs seed | agreement % | worst image % | mIoU | mIoU drop | MB | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name, pad, st = _attr(r, "name"), _attr(r, "pad"), _attr(r, "stages")
        if not st:
            out.append(f"| {name} | {pad} | | | | | | | | | | | | {_attr(r, 'status')} |")
            continue
        e2e = st["end_to_end"]
        share = 100.0 * (st["preprocess"] + st["postprocess"]) / e2e
        seed_e2e = _attr(seed, "stages")["end_to_end"] if seed else None
        drop = _attr(ref, "miou") - _attr(r, "miou") if ref else None
        out.append(
            f"| {name} | {pad} | **{e2e:.1f}** | {st['preprocess']:.1f} | {st['inference']:.1f} | {st['postprocess']:.1f} | "
            f"{share:.0f}% | {_f(seed_e2e / e2e if seed_e2e else None, 2)}x | {_f(_attr(r, 'agreement'), 2)} | "
            f"{_f(_attr(r, 'worst'), 2)} | {_f(_attr(r, 'miou'), 2)} | {_f(drop, 2)} | {_f(_attr(r, 'mb'), 1)} | {_attr(r, 'note')} |"
        )
    return out


def _check(ok: bool, text: str) -> str:
    return f"{'PASS' if ok else 'FAIL'} {text}"


def _acceptance(name: str, r: Any, seed: Any, ref: Any, target: float, accuracy: bool = True) -> str:
    if r is None or seed is None:
        return f"- {name}: not measured"
    st = _attr(r, "stages")
    speed = _attr(seed, "stages")["end_to_end"] / st["end_to_end"]
    checks = [_check(speed >= target, f"{speed:.2f}x the seed pipeline (target >= {target:g}x)")]
    if accuracy:
        drop = _attr(ref, "miou") - _attr(r, "miou")
        checks += [_check(_attr(r, "agreement") >= MIN_AGREEMENT, f"agreement {_attr(r, 'agreement'):.2f}% (>= {MIN_AGREEMENT})"),
                   _check(_attr(r, "worst") >= MIN_WORST, f"worst image {_attr(r, 'worst'):.2f}% (>= {MIN_WORST})"),
                   _check(drop <= MAX_DROP, f"mIoU drop {drop:.2f} (<= {MAX_DROP})")]  # fmt: skip
    share = 100.0 * (st["preprocess"] + st["postprocess"]) / st["end_to_end"]
    checks.append(_check(share <= 10.0, f"pre+post {share:.1f}% of end to end (<= 10%)"))
    return f"- {name} [{_attr(r, 'pad')}]: " + "; ".join(checks)


def report(*, rows: list[Any], files: dict[str, Any], variants: list[dict[str, Any]], avx2: dict[str, Any] | None,
           gate_lines: list[str], s: Any, meta: Any, origin: str, kernels: str, seconds: float, command: str) -> str:  # fmt: skip
    import nncf
    import onnxruntime
    import openvino

    info = bench.hardware_info()
    seed, ref = _get(rows, "seed pipeline"), _get(rows, "eager fp32 (reference)")
    out = [
        "# CPU fast path: int8 and bf16 against the seed pipeline, square and rect letterbox",
        "",
        f"Machine: {cpu.features().summary()}; native bf16: {'yes' if cpu.has_native_bf16() else 'no'}, int8 ISA: "
        f"{cpu.int8_isa()}. torch {info['versions'].get('torch')}, openvino {openvino.__version__.split('-')[0]}, "
        f"nncf {nncf.__version__}, onnxruntime {onnxruntime.__version__}. {info['date']}.",
        f"Model: UNet base {meta.arch['base_channels']}, classes {', '.join(meta.classes)}, input "
        f"{meta.input_size[0]}x{meta.input_size[1]}; weights {origin}.",
        f"Timed input: one {s.frame[0]}x{s.frame[1]} synthetic frame, end to end (letterbox + inference + argmax + mapping "
        f"back + contours), median of {s.runs} runs after {s.warmup} warm-up, batch 1, default threads. Accuracy: "
        f"{s.val} held-back {s.frame[0]}x{s.frame[1]} synthetic images (seed 1): pixel agreement with eager fp32 on the "
        f"square letterbox, mIoU against ground truth. Calibration: {s.calib} of {s.calib_more} training-distribution "
        f"frames (seed 0). int8/bf16 exports are the package's own, gated at agreement >= {MIN_AGREEMENT}% and mIoU drop "
        f"<= {MAX_DROP} on the held-back images (the acceptance's bar; the gate's defaults are 99% / 1 point); the "
        "accuracy-control fallback scores candidates on calibration images only. OpenVINO int8 kernels here: "
        f"{kernels or 'n/a'}.",
        "",
    ]
    out += table(rows, seed, ref)
    out += ["", "## int8 recipes (OpenVINO, square letterbox, each quantized then measured with the gate off)", "",
            "| recipe | calib images | agreement % | worst image % | mIoU drop | inference ms 256x256 | inference ms rect | export s |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for v in variants:
        if "error" in v:
            out.append(f"| {v['name']} | | | | | | | {v['error']} |")
            continue
        out.append(f"| {v['name']} | {v['calib']} | {v['agreement']:.2f} | {v['worst']:.2f} | {v['drop']:.2f} | "
                   f"{v['ms']:.1f} | {v['ms_rect']:.1f} | {v['export_s']:.0f} |")  # fmt: skip
    shipped = files.get("openvino int8")
    if isinstance(shipped, dict):
        rec = shipped["meta"].extra.get("int8", {})
        control = rec.get("accuracy_control")
        acc = shipped["meta"].extra.get("accuracy", {})
        out.append(f"| **the package's export** (first conv fp32{', then accuracy control' if control else ''}) | "
                   f"{rec.get('calib_images')} | {acc.get('agreement', 0):.2f} | {acc.get('worst_agreement', 0):.2f} | "
                   f"{acc.get('miou_drop') or 0:.2f} | | | {shipped['seconds']:.0f} |")  # fmt: skip
        if control:
            out.append("")
            out.append(f"Accuracy control kept {control['quantizers_before'] - rec['quantizers']} of "
                       f"{control['quantizers_before']} quantizers' layers in fp32 ({control['seconds']} s).")  # fmt: skip
    r_sq, r_rect = ref, _get(rows, "eager fp32", "rect")
    out += ["", "## rect letterbox against the square one", ""]
    if r_sq and r_rect:
        drop = _attr(r_sq, "miou") - _attr(r_rect, "miou")
        ok = _attr(r_rect, "agreement") >= RECT_AGREEMENT and drop <= RECT_DROP
        out.append(f"eager fp32, rect vs square on the held-back frames: agreement {_attr(r_rect, 'agreement'):.2f}% "
                   f"(worst image {_attr(r_rect, 'worst'):.2f}%), mIoU {_attr(r_sq, 'miou'):.2f} -> {_attr(r_rect, 'miou'):.2f} "
                   f"(drop {drop:.2f}). Bar for making rect the default of new exports: agreement >= {RECT_AGREEMENT}% and "
                   f"drop <= {RECT_DROP}: **{'met' if ok else 'not met'}**.")  # fmt: skip
    out += ["", "## Acceptance (issue 17)", ""]
    for pad in ("top-left", "rect"):
        out.append(_acceptance("OpenVINO int8", _get(rows, "OpenVINO int8", pad), seed, ref, SPEEDUP["int8"]))
        out.append(_acceptance("ONNX Runtime int8 (the package's)", _get(rows, "ONNX Runtime int8 (the package's", pad),
                               seed, ref, SPEEDUP["int8"]))  # fmt: skip
        out.append(_acceptance("OpenVINO bf16", _get(rows, "OpenVINO bf16", pad), seed, ref, SPEEDUP["bf16"], accuracy=False))
    if avx2:
        arows = avx2["rows"]
        aseed, aref = _get(arows, "seed pipeline"), _get(arows, "eager fp32 (reference)")
        out += ["", "## AVX2-only CPU, emulated (child process with ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2)", "",
                "The kernels are the AVX2 ones (listed below), so the accuracy is what an AVX2-only CPU computes; the "
                "speed is this CPU's cores at AVX2, not an AVX2-only EPYC's.", ""]  # fmt: skip
        out += table(arows, aseed, aref)
        out += [""] + [f"- kernels of {k}: {v}" for k, v in avx2["kernels"].items()]
        for pad in ("top-left", "rect"):
            out.append(_acceptance("AVX2: OpenVINO int8 --int8-isa avx2", _get(arows, "OpenVINO int8 --int8-isa avx2", pad),
                                   aseed, aref, SPEEDUP["avx2 int8"]))  # fmt: skip
        out += ["", "Gate lines of the AVX2 export:", ""] + [f"    {line}" for line in avx2["gate_lines"]]
    out += ["", "## Exports", ""]
    for what, f in files.items():
        out.append(f"- {what}: " + (f"{f['mb']:.1f} MB, {f['seconds']:.0f} s" if isinstance(f, dict) else f"failed: {f}"))
    out += ["", "Gate and quantization lines (export log):", ""]
    keep = ("accuracy gate", "int8:", "OpenVINO --", "ONNX --")
    out += [f"    {line}" for line in gate_lines if line.removeprefix("(earlier run) ").startswith(keep)]
    out += ["", f"Run time {seconds:.0f} s (training excluded). Command: `{command}`.", ""]
    return "\n".join(out)
