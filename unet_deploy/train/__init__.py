"""Training: ``train(DATA, RUN)`` with validation metrics, checkpoints carrying ModelMeta, exact resume, AMP and DDP.

One epoch = train over the (augmented) training split, validate, then on rank 0: append a row
to ``RUN/metrics.csv``, write ``RUN/best.pt`` (best val mIoU) and ``RUN/last.pt`` atomically,
a sample sheet ``RUN/samples/epoch_NNN.jpg`` (input | ground truth | prediction) and the curves
``RUN/curves.png``. ``last.pt`` holds everything needed to continue bit for bit: optimizer,
scheduler, grad scaler, RNG states (one per rank), history. With ``tile_scale`` the model is
trained for tiled inference: ``data.dataset.TileDataset`` crops at that scale, validation
metrics from whole images through ``tiling.tiled_class_map``, ``ModelMeta.tiling`` in every
checkpoint (so in every export). Run it under
``torchrun --nproc_per_node N -m unet_deploy.train ...`` for DistributedDataParallel.

Modules: ``options`` (settings, resume), ``distributed`` (rank, device, precision),
``schedule`` (learning rate), ``evaluate`` (loss, validation), ``curves`` (metrics.csv,
curves.png) and ``trainer`` (the run). The command is ``unet_deploy.cli.train``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import UnetDeployError
from .curves import plot_curves, read_metrics_csv, write_metrics_csv
from .evaluate import evaluate, segmentation_loss
from .options import DEFAULT_EPOCHS, LOSSES, TrainOptions
from .trainer import set_dropout

__all__ = ["DEFAULT_EPOCHS", "LOSSES", "TrainOptions", "evaluate", "plot_curves", "read_metrics_csv",
           "segmentation_loss", "set_dropout", "train", "write_metrics_csv"]


def train(data: str | Path, out: str | Path | None = None, **options: Any) -> Path:
    """Train a UNet on the VOC-style folder ``data`` into the run folder ``out``; return ``out/best.pt``.

    ``options`` are the fields of ``TrainOptions`` (the CLI options with underscores, e.g.
    ``epochs=20, base_channels=32, resume="runs/a/last.pt"``). With ``resume`` the run continues
    from its ``last.pt`` up to ``epochs`` in total, with the settings stored in it; ``out``
    defaults to the checkpoint's folder. Under ``torchrun`` every process calls this and trains
    its share (DDP); only rank 0 writes files. Progress goes to tqdm, log lines to ``tqdm.write``.

    Args:
        data: a dataset written by ``unet-deploy labelme`` (JPEGImages/, SegmentationClass/, class_names.txt).
        out: the run folder (metrics.csv, best.pt, last.pt, samples/, curves.png).
        **options: ``TrainOptions`` fields, among them ``epochs``, ``batch_size``, ``lr``, ``img_size``,
            ``base_channels`` (64: the seed's network), ``device`` (``auto``/``cpu``/``cuda``/``cuda:N``),
            ``amp`` and ``amp_dtype`` (``auto``: bf16 where the device has it, else fp16 on CUDA),
            ``tile_scale``, ``loss``, ``class_weights``, ``dropout``, ``resume`` and ``init`` (start from a
            model's weights; a head for new classes grows, rows of known classes kept by name).
    """
    import torch

    from .distributed import Distributed
    from .options import read_resume, resumed_options
    from .trainer import Trainer

    opts = TrainOptions(**options)
    state = read_resume(opts) if opts.resume else None
    if state is not None:
        opts = resumed_options(opts, state["config"])
        out = out if out is not None else Path(opts.resume).parent
    if out is None:
        raise UnetDeployError("no run folder given; pass --out RUN")
    previous = torch.are_deterministic_algorithms_enabled()
    dist = Distributed.start(opts.device)
    try:
        if opts.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = not opts.deterministic
        return Trainer(Path(data), Path(out), opts, dist, state).run()
    finally:
        torch.use_deterministic_algorithms(previous)
        dist.close()
