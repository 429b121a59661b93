"""Uncertainty-ranked selection against random selection in the labelling loop (issue 27).

Per seed: synthetic inspection images, a labelled set, an unlabelled pool (its truth kept aside)
and a held-back set. A first model is trained on the labelled set; then, for each strategy
(``ranked``: `unet-deploy select`'s order, most uncertain first; ``random``: the same near-duplicate
rule over a random order), ROUNDS rounds of: select COUNT of the remaining pool, pre-label them,
"correct" them with the truth (the share of pre-labelled pixels left unchanged is the work saved),
retrain from the previous model with the same epochs. After each round the held-back set is scored
by `unet-deploy eval` (mIoU, recall of defects under 1024 px). Also the cost of `select` per image.
Writes ``benchmarks/results/labelling_loop.md`` (and ``.json``).

    python benchmarks/labelling_loop.py               # 3 seeds; ~15 min on 2 quiet cores
    python benchmarks/labelling_loop.py --quick --out /tmp/loop.md
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unet_deploy.demo import TRAIN_OPTIONS  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "labelling_loop.md"
STRATEGIES = ("ranked", "random")


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_seed(work: Path, seed: int, cfg: dict) -> dict:
    """One seed: the first model, then ROUNDS rounds per strategy; the scores after each."""
    from unet_deploy.data.labelme import convert_folder, read_labels_file
    from unet_deploy.data.synthetic import generate
    from unet_deploy.labelling_loop import correct, hide_labels, merge_labelme_folders, scores, split_off
    from unet_deploy.runtime import Segmenter
    from unet_deploy.selection import select_to_folder
    from unet_deploy.train import train

    labelled, truth, holdout = work / "labelled", work / "truth", work / "holdout"
    generate(labelled, cfg["labelled"] + cfg["pool"], size=cfg["size"], seed=seed, progress=False)
    split_off(labelled, truth, cfg["pool"])
    generate(holdout, cfg["holdout"], size=cfg["size"], seed=seed + 10_000, progress=False)
    classes = read_labels_file(labelled / "labels.txt")
    args = dict(batch_size=cfg["batch"], img_size=cfg["img_size"], base_channels=cfg["base"], seed=seed,
                overwrite=True, progress=False, val_split=0, **TRAIN_OPTIONS)  # fmt: skip
    again = {**args, "lr": cfg["retrain_lr"]}  # fine-tuning from the previous model: a gentler start
    convert_folder(labelled, work / "voc0", labels_file=labelled / "labels.txt", progress=False)
    first = train(work / "voc0", work / "run0", epochs=cfg["epochs"], **args)
    (s0,) = scores([first], holdout)
    log(f"seed {seed}: first model mIoU {s0['miou']:.3f}, small-defect recall {s0['small_defect_recall']:.3f}")
    out = {"seed": seed, "first": s0, "rounds": {k: [] for k in STRATEGIES}}
    for strategy in STRATEGIES:
        pool = work / f"pool_{strategy}"
        hide_labels(truth, pool)
        model, folders = first, [labelled]
        for r in range(cfg["rounds"]):
            picked_dir = work / f"{strategy}_r{r}"
            t0 = time.perf_counter()
            sel = select_to_folder(Segmenter(model, device="cpu"), [str(pool)], picked_dir, cfg["count"],
                                   progress=False, random_seed=None if strategy == "ranked" else seed * 100 + r)  # fmt: skip
            select_s = time.perf_counter() - t0
            fixed = correct([p.image for p in sel.picks], picked_dir, truth, classes)
            for p in sel.picks:  # labelled now: out of the pool
                (pool / Path(p.candidate.file).name).unlink()
            folders.append(picked_dir)
            merged = merge_labelme_folders(folders, work / f"{strategy}_r{r}_all")
            convert_folder(merged, work / f"{strategy}_r{r}_voc", labels_file=merged / "labels.txt", progress=False)
            model = train(work / f"{strategy}_r{r}_voc", work / f"{strategy}_r{r}_run", epochs=cfg["retrain_epochs"],
                          init=str(model), **again)  # fmt: skip
            (sc,) = scores([model], holdout)
            row = {"round": r + 1, "miou": sc["miou"], "small_defect_recall": sc["small_defect_recall"],
                   "unchanged": fixed.unchanged_share, "defect_unchanged": fixed.defect_unchanged_share,
                   "picked_uncertainty": float(np.mean([p.candidate.uncertainty for p in sel.picks])),
                   "pool": len(sel.ranking), "select_s": select_s, "rank_ms_per_image": 1000 * sel.seconds["rank"] / len(sel.ranking),
                   "write_ms_per_pick": 1000 * sel.seconds["write"] / max(len(sel.picks), 1)}  # fmt: skip
            out["rounds"][strategy].append(row)
            log(f"seed {seed} {strategy} round {r + 1}: mIoU {sc['miou']:.3f}, small recall "
                f"{sc['small_defect_recall']:.3f}, unchanged {100 * fixed.unchanged_share:.1f}%")  # fmt: skip
        shutil.rmtree(pool)
    return out


def _ms(values: list[float]) -> str:
    a = np.asarray(values, float)
    return f"{a.mean():.3f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.3f}"


def write_markdown(results: list[dict], cfg: dict, path: Path, seconds: float) -> None:
    rounds = cfg["rounds"]
    lines = [
        "# Labelling loop: uncertainty-ranked vs random selection",
        "",
        f"`python benchmarks/labelling_loop.py` ({seconds / 60:.1f} min on this machine). Per seed "
        f"({', '.join(str(r['seed']) for r in results)}): {cfg['labelled']} labelled synthetic images "
        f"({cfg['size'][0]}x{cfg['size'][1]}), a pool of {cfg['pool']} unlabelled ones, {cfg['holdout']} held back; "
        f"UNet base {cfg['base']} at {cfg['img_size']} px, batch {cfg.get('batch', 8)}, first model {cfg['epochs']} epochs; "
        f"then {rounds} round(s) of {cfg['count']} picks, each retrained {cfg['retrain_epochs']} epochs from the previous "
        f"model at lr {cfg.get('retrain_lr', TRAIN_OPTIONS['lr'])} "
        "(same N and budget for both strategies). `ranked`: `unet-deploy select` (most uncertain first); "
        "`random`: the same near-duplicate rule over a random order. Scores by `unet-deploy eval` on the "
        "held-back images; small defects: under 1024 px. Mean ± standard deviation over seeds.",
        "",
        "| after | strategy | mIoU | small-defect recall | pre-label pixels unchanged (all / defect) | mean uncertainty of the picks |",
        "|---|---|---:|---:|---:|---:|",
        f"| first model | - | {_ms([r['first']['miou'] for r in results])} | "
        f"{_ms([r['first']['small_defect_recall'] for r in results])} | - | - |",
    ]  # fmt: skip
    for k in range(rounds):
        for s in STRATEGIES:
            rows = [r["rounds"][s][k] for r in results]
            lines.append(f"| round {k + 1} | {s} | {_ms([x['miou'] for x in rows])} | "
                         f"{_ms([x['small_defect_recall'] for x in rows])} | "
                         f"{100 * np.mean([x['unchanged'] for x in rows]):.1f}% / "
                         f"{100 * np.mean([x.get('defect_unchanged', np.nan) for x in rows]):.1f}% | "
                         f"{np.mean([x['picked_uncertainty'] for x in rows]):.3f} |")  # fmt: skip
    last = {s: np.array([r["rounds"][s][-1]["miou"] for r in results]) for s in STRATEGIES}
    recall = {s: np.array([r["rounds"][s][-1]["small_defect_recall"] for r in results]) for s in STRATEGIES}
    wins = int((last["ranked"] > last["random"]).sum())
    diff = last["ranked"] - last["random"]
    verdict = ("Ranking beats random on this data" if diff.mean() > diff.std(ddof=1) / np.sqrt(len(diff))
               else "Ranking does NOT beat random on this data (the difference is within the seeds' spread)") \
        if len(diff) > 1 else "One seed: no verdict"  # fmt: skip
    rank_ms = [x["rank_ms_per_image"] for r in results for s in STRATEGIES for x in r["rounds"][s]]
    write_ms = [x["write_ms_per_pick"] for r in results for s in STRATEGIES for x in r["rounds"][s]]
    lines += [
        "",
        f"**{verdict}**: after round {rounds}, ranked - random mIoU = {diff.mean():+.3f} ± {diff.std(ddof=1) if len(diff) > 1 else 0:.3f} "
        f"(ranked better in {wins} of {len(diff)} seeds); small-defect recall {recall['ranked'].mean():.3f} vs "
        f"{recall['random'].mean():.3f}.",
        "",
        f"Cost of `select` (CPU, base {cfg['base']} at {cfg['img_size']} px, {cfg['size'][0]}x{cfg['size'][1]} images): "
        f"{np.mean(rank_ms):.1f} ms per ranked image (inference, uncertainty, thumbnail), "
        f"{np.mean(write_ms):.1f} ms per pick written (copy, inference again, labelme JSON).",
        "",
        "Per seed (mIoU after each round, ranked / random):",
        "",
    ]  # fmt: skip
    for r in results:
        per = " · ".join(f"r{k + 1} {r['rounds']['ranked'][k]['miou']:.3f} / {r['rounds']['random'][k]['miou']:.3f}"
                         for k in range(rounds))  # fmt: skip
        lines.append(f"- seed {r['seed']}: first {r['first']['miou']:.3f} · {per}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps({"config": cfg, "results": results}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny run that checks the script")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULT)
    p.add_argument("--work", type=Path, help="folder for data and runs (default: temporary)")
    args = p.parse_args(argv)
    cfg = {"labelled": 16, "pool": 32, "holdout": 12, "count": 6, "rounds": 2, "size": (96, 96), "img_size": 96,
           "base": 8, "batch": 4, "epochs": 15, "retrain_epochs": 5, "retrain_lr": 1e-3}  # fmt: skip
    if args.quick:
        cfg.update(labelled=4, pool=8, holdout=2, count=2, rounds=1, size=(64, 64), img_size=64, epochs=1,
                   retrain_epochs=1)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="labelling_loop.") as tmp:
        for seed in range(1 if args.quick else args.seeds):
            work = (args.work or Path(tmp)) / f"seed{seed}"
            results.append(run_seed(work, seed, cfg))
            write_markdown(results, cfg, args.out, time.perf_counter() - t0)  # after each seed: a partial run counts
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
