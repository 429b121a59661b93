"""rect letterbox vs the square one on a model trained on square-letterboxed 16:9 frames (issue 17's default decision).

A UNet (base 16) is trained with the seed's square letterbox (``pad: top-left``, 256x256) on
synthetic 16:9 frames; held-back 16:9 frames are then segmented by the same weights with the
square letterbox and with ``rect`` (pad only to the next multiple of 16: 256x144). Reports pixel
agreement of rect with square, the worst image, both mIoUs and the drop, and whether the bar for
making rect the default of new exports (agreement >= 99.5%, drop <= 0.3) is met. Writes
``benchmarks/results/rect_letterbox.md``.

    python benchmarks/rect_letterbox.py            # ~6 min on 2 cores with AMX, longer elsewhere
    python benchmarks/rect_letterbox.py --quick --out /tmp/rect.md
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cpu_fast_path import log, write_voc  # noqa: E402

from unet_deploy import accuracy, bench, cpu, metrics  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "rect_letterbox.md"
BAR_AGREEMENT, BAR_DROP = 99.5, 0.3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny run that checks the script")
    p.add_argument("--out", type=Path, default=RESULT)
    p.add_argument("--work", type=Path, help="folder for data and the run (default: temporary)")
    args = p.parse_args(argv)
    size = (192, 108) if args.quick else (480, 270)
    count, val_count, epochs, base = (16, 4, 1, 8) if args.quick else (160, 24, 10, 16)
    from unet_deploy.data.synthetic import CLASSES
    from unet_deploy.runtime import Segmenter
    from unet_deploy.train import train

    with tempfile.TemporaryDirectory(prefix="rect_letterbox.") as tmp:
        work = args.work or Path(tmp)
        data = write_voc(work / "train", seed=0, count=count, size=size)
        (data / "class_names.txt").write_text("\n".join(CLASSES) + "\n")
        val_dir = write_voc(work / "val", seed=1, count=val_count, size=size)
        t0 = time.perf_counter()
        best = train(data, work / "run", epochs=epochs, img_size=256, base_channels=base, batch_size=8, lr=1e-3,
                     val_split=0.1, loss="ce+dice", class_weights="auto", pad="top-left", overwrite=True)  # fmt: skip
        train_s = time.perf_counter() - t0
        log(f"trained {best} in {train_s:.0f} s")
        samples = accuracy.load_samples(accuracy.dataset_images(val_dir))
        seg = Segmenter(best, device="cpu")
        square = [seg(s.image).mask for s in samples]
        rect_seg = Segmenter(best, device="cpu", letterbox="rect")
        rect = [rect_seg(s.image).mask for s in samples]
        c = metrics.compare_masks(square, rect, [s.mask for s in samples], seg.meta.num_classes)
        miou, agree = [c.miou_reference, c.miou], c.agreement
        frame = bench.source_image(*size, seed=2)
        shapes = {pad: dataclasses.replace(seg.meta, letterbox={**seg.meta.letterbox, "pad": pad}) for pad in ("top-left", "rect")}
        from unet_deploy.preprocess import preprocess

        net = {pad: "x".join(map(str, preprocess(frame, m)[0].shape[1:])) for pad, m in shapes.items()}
    drop = c.miou_drop
    met = agree >= BAR_AGREEMENT and drop <= BAR_DROP
    text = "\n".join([
        "# rect letterbox vs square on a model trained square",
        "",
        f"Machine: {cpu.features().summary()}. {bench.hardware_info()['date']}.",
        f"Model: UNet base {base} trained {epochs} epochs ({train_s:.0f} s) on {count} synthetic {size[0]}x{size[1]} "
        f"frames with the seed's square letterbox (top-left, 256x256). Held back: {val_count} frames of another seed.",
        f"Network input for a {size[0]}x{size[1]} frame: square {net['top-left']}, rect {net['rect']}.",
        "",
        "| letterbox | mIoU | agreement with square % | worst image % |",
        "|---|---|---|---|",
        f"| square (top-left) | {miou[0]:.2f} | 100.00 | 100.00 |",
        f"| rect | {miou[1]:.2f} | {agree:.2f} | {c.worst_agreement:.2f} |",
        "",
        f"mIoU drop {drop:.2f} points. Bar for making rect the default of new exports: agreement >= {BAR_AGREEMENT}% "
        f"and drop <= {BAR_DROP}: **{'met' if met else 'not met'}**.",
        "",
        f"Command: `python benchmarks/rect_letterbox.py{' --quick' if args.quick else ''}`.",
        "",
    ])
    from unet_deploy.fileio import atomic_write_text

    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
