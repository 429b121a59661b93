"""The AVX2-only section of ``cpu_fast_path.py``, run in a child process whose oneDNN and ATen are capped at AVX2.

``ONEDNN_MAX_CPU_ISA=AVX2`` (OpenVINO's and torch's oneDNN) and ``ATEN_CPU_CAPABILITY=avx2`` make
this process compute with the kernels an AVX2-only CPU runs (``jit_avx2_I8`` for int8), and
``unet_deploy.cpu`` reports AVX2 too, so the int8 export is calibrated and gated for it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cpu_fast_path import MAX_DROP, MIN_AGREEMENT, REUSE, Row, Settings, _data, kernels, log, measure, timed_export

from unet_deploy import bench, cpu


def avx2_child(args: argparse.Namespace, s: Settings, work: Path) -> int:
    """The AVX2-only section, in a process whose oneDNN and ATen are capped at AVX2: JSON rows to ``args.avx2_child``."""
    from unet_deploy.checkpoint import load_checkpoint
    from unet_deploy.export import export_openvino
    from unet_deploy.formats.openvino import ir_path

    model, meta = load_checkpoint(args.checkpoint)
    meta.input_size = (s.img_size, s.img_size)
    calib_dir, val_dir, val, frame = _data(s, work, meta)
    lines: list[str] = []
    files: dict[str, Any] = {}
    record = work / "exports-avx2.json"
    if args.reuse and record.is_file():
        saved = json.loads(record.read_text())
        REUSE.update(saved["files"])
        lines = saved["lines"]
    timed_export("openvino int8 --int8-isa avx2", lambda: export_openvino(
        model, meta, ir_path(work / "ov-avx2", "model", "int8"), precision="int8", calib=calib_dir, val=val_dir,
        val_count=s.val, int8_isa="avx2", log=lambda line: (lines.append(line), log("avx2: " + line)),
        min_agreement=MIN_AGREEMENT, max_miou_drop=MAX_DROP), files)  # fmt: skip
    f = files["openvino int8 --int8-isa avx2"]
    record.write_text(json.dumps({"lines": lines, "files": {"openvino int8 --int8-isa avx2": f if isinstance(f, str) else
                                  {"path": str(f["path"]), "seconds": f["seconds"], "mb": f["mb"]}}}))  # fmt: skip
    files["openvino int8 (calibrated for VNNI)"] = {"path": ir_path(work / "ov", "model", "int8")}
    files["openvino fp32"] = {"path": ir_path(work / "ov", "model", "fp32")}
    from unet_deploy.runtime import Segmenter

    seg = Segmenter(args.checkpoint, device="cpu", input_size=meta.input_size, letterbox="top-left")
    plan = [(Row("eager fp32 (reference)", "fp32"), lambda: bench.Runner(seg), None),
            (Row("seed pipeline (PIL letterbox, eager fp32)", "fp32"), lambda: bench.SeedRunner(model, meta, "cpu"), None)]
    for key in ("openvino fp32", "openvino int8 (calibrated for VNNI)", "openvino int8 --int8-isa avx2"):
        for pad in ("top-left", "rect"):
            plan.append((Row(key.replace("openvino", "OpenVINO"), key.split()[1], pad),
                         lambda k=key, p=pad: bench.Runner(Segmenter(files[k]["path"], device="cpu", letterbox=p)), key))
    out, reference = [], None
    for row, make, key in plan:
        if key is not None and not isinstance(files.get(key), dict):
            row.status = f"not exported: {files.get(key)}"
        else:
            masks = measure(row, make(), frame, val, s, reference, meta.num_classes)
            reference = reference if reference is not None else masks
            log(f"avx2: {row.name} [{row.pad}]: {row.stages['end_to_end']:.0f} ms")
        out.append(row.__dict__)
    args.avx2_child.write_text(json.dumps({"rows": out, "gate_lines": lines, "isa": cpu.int8_isa(),
                                           "kernels": {k: kernels(files[k]["path"]) for k in files
                                                       if isinstance(files[k], dict) and k != "openvino fp32"}}))  # fmt: skip
    return 0
