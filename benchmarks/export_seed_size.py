"""Time the export of the seed-size UNet (base 64, 3 classes, 256x256) to every format -> results/export_cpu.md.

Each format is exported on its own (``unet_deploy.export.export_model``, parity check on), so
the page gives per format the export seconds, the parity-check seconds, the file size and the
parity numbers, plus the machine and its load average (export is CPU-bound: other processes on
the same cores stretch the seconds, the sizes do not change).

    python benchmarks/export_seed_size.py                     # -> benchmarks/results/export_cpu.md
    python benchmarks/export_seed_size.py --portable --out /tmp/export.md   # adds an AVX2 aoti package
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_cpu import random_checkpoint  # noqa: E402

from unet_deploy import bench, formats  # noqa: E402
from unet_deploy.export import export_model  # noqa: E402

CLASSES = ("background", "scratch", "spot")
# Stage lines of the export log with the seconds each exporter states ("exported in 2.9 s",
# OpenVINO's "converted in 10.8 s"; "parity ok in 19.0 s, ..." or OpenVINO's "parity ... (10.5 s)").
_EXPORTED = re.compile(r": (?:exported|converted) in (?P<s>[\d.]+) s")
_PARITY = re.compile(r"parity (?:ok in (?P<a>[\d.]+) s, )?(?P<numbers>.*?)(?: \((?P<b>[\d.]+) s\))?$")


def _load() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def run(out_md: Path, portable: bool, size: int) -> None:
    info = bench.hardware_info()
    cases = [(f.name, {}) for f in formats.exportable()] + ([("aoti", {"portable": True})] if portable else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="unet-export-bench-") as tmp:
        ckpt = random_checkpoint(Path(tmp) / "seed64.pt", 64, CLASSES, size)
        for fmt, options in cases:
            lines: list[str] = []

            def log(line: str) -> None:
                print(line, file=sys.stderr, flush=True)
                lines.append(line)

            load_before = _load()
            t0 = time.perf_counter()
            out = Path(tmp) / f"{fmt}{'-portable' if options else ''}"
            export_model(ckpt, fmt, out_dir=out, log=log, **options)
            total = time.perf_counter() - t0
            export_s = next(float(m["s"]) for m in map(_EXPORTED.search, lines) if m)
            checked = next(m for m in map(_PARITY.search, lines) if m)
            check_s, parity = float(checked["a"] or checked["b"]), checked["numbers"]
            size_mb = sum(p.stat().st_size for p in out.iterdir() if p.suffix != ".json") / 1e6  # .xml + .bin
            name = fmt + (" --portable" if options else "")
            files = " + ".join(f"`{p.name}`" for p in sorted(out.iterdir()) if p.suffix != ".json")
            rows.append((name, export_s, check_s, total, files, size_mb, parity, load_before, _load()))

    text = [
        "# Export of the seed-size UNet (CPU)",
        "",
        f"`python benchmarks/export_seed_size.py` on {info['date']}: {info['cpu']}, {info['cores']} cores, "
        f"torch {info['versions'].get('torch', '?')} (CPU capability {info.get('torch_cpu_capability', '?')}). "
        "Model: UNet base 64, 3 classes (37.66 M parameters, the seed's), "
        f"input {size}x{size}, dynamic N/H/W, fp32, random weights with warmed BatchNorm (sizes and times "
        "do not depend on the weights). Each format exported alone with the parity check on (eager vs "
        f"artefact at {size}x{size} and {size + 16}x{size + 32}, batch 1 and 3).",
        "",
        "| format | export s | parity check s | total s (load, eager reference, export, check) | files | size MB | parity "
        "| load avg before -> after |",
        "|---|---:|---:|---:|---|---:|---|---|",
    ]
    for name, export_s, check_s, total, file, size_mb, parity, before, after in rows:
        parity = parity.split(" at ")[0].replace("|", "\\|")
        text.append(f"| {name} | {export_s:.1f} | {check_s:.1f} | {total:.1f} | {file} | {size_mb:.1f} | "
                    f"{parity} | {before} -> {after} |")  # fmt: skip
    text += [
        "",
        "The load average (1/5/15 min) is that of the whole machine: it was shared with other jobs, so "
        "the seconds are upper bounds; on a quiet machine they are shorter. AOTInductor's time is its "
        "C++ code generation and compilation (once per export); the package then loads in milliseconds.",
        "",
    ]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(text))
    print(f"wrote {out_md}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export_cpu.md")
    parser.add_argument("--portable", action="store_true", help="also export an AVX2 (x86-64-v3) aoti package")
    parser.add_argument("--size", type=int, default=256, help="input size (multiple of 16)")
    args = parser.parse_args()
    run(args.out, args.portable, args.size)


if __name__ == "__main__":
    main()
