"""The model ladder's page (benchmarks/ladder_report.py): the Pareto frontier and issue 29's target verdicts,
on hand-made rungs whose answers are known."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from ladder_report import pareto, write_report  # noqa: E402


def test_pareto_keeps_the_points_nothing_beats_on_both_axes():
    points = {"big": (10.0, 0.90), "mid": (30.0, 0.88), "worse": (25.0, 0.80), "tie": (30.0, 0.85), "fast": (80.0, 0.70)}
    assert pareto(points) == ["big", "mid", "fast"]  # "worse" is beaten by "mid", "tie" by "mid" at the same speed


def _rung(gflop: float, miou: float, small: float, fps: float, pre: float, inf: float, post: float) -> dict:
    ev = {"miou": miou, "recall_by_size": {"<64": small, "64-1023": 0.9, ">=1024": 1.0},
          "truth_by_size": {"<64": 3, "64-1023": 30, ">=1024": 5}, "false_alarms": 2,
          "small_set": {"recall": small, "false_alarms": 1, "miou": miou, "defects": 40}}  # fmt: skip
    train = {"epochs": 10, "best_val_miou": miou, "cpu_s_per_epoch": 1.0, "checkpoint": "x"}
    speed = {"preprocess": pre, "inference": inf, "postprocess": post, "end_to_end": pre + inf + post}
    return {"arch": {"base_channels": 8, "upsample": "transpose", "params": 1e6, "gflop_square": gflop, "gflop_rect": gflop / 2},
            "epochs": train, "budget": train, "eval": {"epochs": ev, "budget": ev, "epochs_int8": ev}, "speed": speed, "fps": fps}  # fmt: skip


@pytest.mark.parametrize("case, verdicts", [
    # GFLOP share 0.25, mIoU -1.0 pt, small recall -2.0 pt, 60 frames/s, pre+post 1+0.5 of 15 ms = 10%: all on the line
    (dict(gflop=25.0, miou=0.79, small=0.48, fps=60.0, pre=1.0, inf=13.5, post=0.5), ["ok"] * 5 + ["**all met**"]),
    (dict(gflop=26.0, miou=0.75, small=0.40, fps=59.0, pre=3.0, inf=6.0, post=1.0), ["no"] * 5 + ["no"]),
])  # fmt: skip
def test_targets_are_judged_against_the_seed_rung(case, verdicts, tmp_path):
    rungs = {"b64": _rung(100.0, 0.80, 0.50, 20.0, 3.0, 40.0, 1.0), "small": _rung(**case)}
    state = {"args": {"train_count": 10, "size": 64, "test_count": 5, "epochs": 10, "budget_s": 60.0, "max_epochs": 9,
                      "speed_rounds": 1, "stream_frames": 8},
             "machine": {"cpu": "test", "cores": 2}, "load": [[1.0], [1.0]],
             "rungs": {n: {k: v for k, v in r.items() if k not in ("speed", "fps")} for n, r in rungs.items()},
             "speed": {f"{n} {p}": r["speed"] for n, r in rungs.items() for p in ("int8", "bf16")},
             "stream": {n: {"fps": r["fps"]} for n, r in rungs.items()}}  # fmt: skip
    write_report(state, tmp_path / "ladder", "test")
    row = next(line for line in (tmp_path / "ladder.md").read_text().splitlines() if line.startswith("| small |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert [c.split()[-1] for c in cells[:-1]] + cells[-1:] == verdicts
    assert (tmp_path / "ladder.png").stat().st_size > 0 and (tmp_path / "ladder.json").is_file()
