"""The learning-rate schedule: linear warm-up over 3% of the steps, cosine decay to 1%, then 1% (torch schedulers).

Stepped once per optimizer step. Its ``state_dict`` (saved in ``last.pt``) restores the
position and the planned length, so a resumed run continues the same curve; a run resumed
with more ``--epochs`` than planned trains the extra steps at the 1% floor.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

WARMUP_SHARE = 0.03
FLOOR = 0.01  # the final learning rate, as a share of --lr


def lr_scheduler(optimizer: "torch.optim.Optimizer", total_steps: int) -> "torch.optim.lr_scheduler.SequentialLR":
    """Warm-up (``LinearLR``), decay (``CosineAnnealingLR``) and floor over ``total_steps`` for ``optimizer``."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    warmup = max(1, round(WARMUP_SHARE * total_steps))
    decay = max(1, total_steps - warmup)
    base = optimizer.param_groups[0]["lr"]
    parts = [
        LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=max(1, warmup - 1)),
        CosineAnnealingLR(optimizer, T_max=decay, eta_min=FLOOR * base),
        LinearLR(optimizer, start_factor=FLOOR, end_factor=FLOOR, total_iters=1),
    ]
    return SequentialLR(optimizer, parts, milestones=[warmup, warmup + decay])
