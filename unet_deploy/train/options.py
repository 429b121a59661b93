"""Training settings: ``TrainOptions`` (the CLI options), what a resumed run keeps, and class weights."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UnetDeployError
from ..meta import DEFAULT_OVERLAP, MAX_TILE_SCALE, MIN_TILE_SCALE, PAD_MODES, UPSAMPLE_MODES

if TYPE_CHECKING:  # pragma: no cover
    from ..data.dataset import SegmentationDataset

LOSSES = ("ce", "ce+dice")
# `unet-train --preset`: the rungs of benchmarks/results/model_ladder.md (measured there, chosen in the README).
# "seed" is the tutorial's network (its unet.pth loads); the narrow rungs train without dropout.
PRESETS: dict[str, dict[str, Any]] = {
    "seed": {"base_channels": 64, "upsample": "transpose"},
    "balanced": {"base_channels": 16, "upsample": "transpose", "dropout": 0.0},
    "fast": {"base_channels": 8, "upsample": "bilinear", "dropout": 0.0},
}
DEFAULT_ARCH = PRESETS["seed"]  # the default network stays the seed's: seed compatibility is a promise
DEFAULT_EPOCHS = 50
# Settings a resumed run may change; every other one comes from the checkpoint.
RESUMABLE_OVERRIDES = ("epochs", "device", "workers")


@dataclass
class TrainOptions:
    """Every training setting (the CLI options). ``epochs`` is the total, ``None`` = 50 or the resumed run's."""

    epochs: int | None = None
    batch_size: int = 8
    lr: float = 1e-3
    img_size: int = 256
    base_channels: int | None = None  # None: the preset's, else 64
    upsample: str | None = None  # None: the preset's, else "transpose"
    preset: str | None = None
    pad: str = "top-left"
    tile_scale: float | None = None
    overlap: float = DEFAULT_OVERLAP
    val_split: float = 0.2
    val_data: str | None = None
    loss: str = "ce"
    class_weights: str | None = None
    augment: bool = True
    dropout: float | None = None
    device: str = "auto"
    amp: bool | None = None
    amp_dtype: str = "auto"
    workers: int | None = None
    seed: int = 0
    deterministic: bool = True
    resume: str | None = None
    init: str | None = None
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("val_data", "resume", "init"):
            value = getattr(self, name)
            setattr(self, name, None if value is None else str(value))
        if self.loss not in LOSSES:
            raise UnetDeployError(f"loss {self.loss!r} must be one of {LOSSES}")
        self._apply_preset()
        if self.base_channels < 1:
            raise UnetDeployError(f"--base-channels {self.base_channels} must be at least 1 (64: the seed's network)")
        if self.upsample not in UPSAMPLE_MODES:
            raise UnetDeployError(f"upsample {self.upsample!r} must be one of {UPSAMPLE_MODES}")
        if self.pad not in PAD_MODES:
            raise UnetDeployError(f"pad {self.pad!r} must be one of {PAD_MODES}")
        if self.tile_scale is not None and not MIN_TILE_SCALE <= self.tile_scale <= MAX_TILE_SCALE:
            raise UnetDeployError(
                f"--tile-scale {self.tile_scale} must lie in [{MIN_TILE_SCALE:g}, {MAX_TILE_SCALE:g}] (1.0 = native pixels)"
            )
        if not 0.0 <= self.overlap < 1.0:
            raise UnetDeployError(f"--overlap {self.overlap} must lie in [0, 1) (a fraction of a tile)")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise UnetDeployError(f"--dropout {self.dropout} must lie in [0, 1)")
        if self.epochs is not None and self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UnetDeployError("--epochs, --batch-size and --lr must be positive")


    def _apply_preset(self) -> None:
        """Fill the network's settings from ``preset`` (a differing explicit one is an error), else the seed's."""
        self.arch_given = any(v is not None for v in (self.preset, self.base_channels, self.upsample))
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise UnetDeployError(f"--preset {self.preset!r} must be one of {', '.join(PRESETS)}")
            for key, value in PRESETS[self.preset].items():
                mine = getattr(self, key)
                if mine is None:
                    setattr(self, key, value)
                elif mine != value and key in DEFAULT_ARCH:  # an explicit --dropout may differ
                    flag = "--" + key.replace("_", "-")
                    raise UnetDeployError(f"--preset {self.preset} means {flag} {value}, not {mine}; give one of the two")
        for key, value in DEFAULT_ARCH.items():
            if getattr(self, key) is None:
                setattr(self, key, value)


def read_resume(opts: TrainOptions) -> dict[str, Any]:
    """The training state in ``opts.resume`` (a ``last.pt``); a one-line error for any other checkpoint."""
    from ..checkpoint import read_checkpoint

    state = read_checkpoint(opts.resume)
    needed = {"config", "optimizer", "scheduler", "epoch", "history", "state_dict", "meta"}
    if not needed <= set(state):
        raise UnetDeployError(
            f"{opts.resume}: not a training checkpoint (no optimizer state); resume from RUN/last.pt, "
            "or start a new run from these weights with --init"
        )
    return state


def resumed_options(opts: TrainOptions, config: dict[str, Any]) -> TrainOptions:
    """The stored run's settings, with only ``RESUMABLE_OVERRIDES`` (and progress) taken from ``opts``."""
    known = {f.name for f in fields(TrainOptions)}
    merged = {k: v for k, v in config.items() if k in known}
    for name in RESUMABLE_OVERRIDES:
        if getattr(opts, name) is not None:
            merged[name] = getattr(opts, name)
    merged.update(resume=opts.resume, init=None, overwrite=True, progress=opts.progress)
    return TrainOptions(**merged)


def class_weights(spec: str | None, train_set: "SegmentationDataset") -> list[float] | None:
    """``None``/"none" -> no weights; "auto" -> inverse square root of pixel frequency (mean 1); else a list."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    n = len(train_set.classes)
    if spec.strip().lower() == "auto":
        counts = train_set.class_pixel_counts().astype(np.float64)  # resized whole masks in tile mode
        w = np.where(counts > 0, np.sqrt(counts.sum() / np.maximum(counts, 1)), 0.0)
        w = np.where(counts > 0, w / w[counts > 0].mean(), 1.0)
        return [round(float(v), 6) for v in w]
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        raise UnetDeployError(f"--class-weights {spec!r}: give 'auto' or {n} comma-separated numbers") from None
    if len(values) != n or min(values) < 0:
        raise UnetDeployError(
            f"--class-weights {spec!r}: {len(values)} values for {n} classes {train_set.classes}; give {n} non-negative numbers"
        )
    return values
