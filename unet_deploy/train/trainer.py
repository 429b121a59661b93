"""One training run: set up model, data and optimizer; loop over epochs; write checkpoints, csv, samples, curves."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .. import metrics
from ..errors import UnetDeployError
from ..fileio import remove_stale_temporaries
from ..meta import ModelMeta
from .curves import plot_curves, write_metrics_csv
from .distributed import Distributed, amp_dtype, autocast
from .evaluate import evaluate_sums, segmentation_loss, tiled_confusion
from .options import DEFAULT_EPOCHS, TrainOptions, class_weights
from .schedule import lr_scheduler

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..data.dataset import SegmentationDataset

SAMPLE_ROWS = 4


SHOW_LOSS_EVERY = 20  # steps between progress-bar loss updates (each one is a device sync)


@dataclass
class _Run:
    """What the epoch loop works with (built by ``Trainer.setup``)."""

    model: Any  # the UNet whose weights are saved
    net: Any  # ``model`` or its DistributedDataParallel wrapper
    meta: ModelMeta
    classes: list[str]
    train_set: "SegmentationDataset"
    val_set: "SegmentationDataset"
    sampler: Any
    train_loader: Any
    val_loader: Any
    loss_weight: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    start: int = 0
    history: list[dict] | None = None
    best: float = -1.0


class Trainer:
    """Trains ``data`` into the run folder ``out`` with ``opts``; ``state`` is a ``last.pt`` to resume."""

    def __init__(self, data: Path, out: Path, opts: TrainOptions, dist: Distributed, state: dict | None) -> None:
        self.data, self.out, self.opts, self.dist, self.state = data, out, opts, dist, state
        self.device = dist.device
        self.amp_dtype = amp_dtype(self.device, opts.amp, opts.amp_dtype)
        self.epochs = opts.epochs or DEFAULT_EPOCHS

    def log(self, message: str) -> None:
        if self.dist.main:
            from tqdm import tqdm

            tqdm.write(message)

    def run(self) -> Path:
        """Set up, train the remaining epochs and return ``out/best.pt``."""
        run = self.setup()
        self.loop(run)
        self.dist.barrier()
        best_path = self.out / "best.pt"
        if not best_path.exists():
            raise UnetDeployError(f"{best_path}: not written; the run has no finished epoch")
        return best_path

    # -- setup ---------------------------------------------------------------------------
    def setup(self) -> _Run:
        import torch

        from ..data.labelme import read_class_names

        opts, dist = self.opts, self.dist
        last_path = self.out / "last.pt"
        if self.state is None and last_path.exists() and not opts.overwrite:
            raise UnetDeployError(
                f"{last_path}: a run is already there; continue it with --resume {last_path}, "
                "or choose another --out (or pass --overwrite)"
            )
        torch.manual_seed(opts.seed)
        classes = read_class_names(self.data)
        model, meta = self._model(classes)
        if dist.rank:
            torch.manual_seed(opts.seed + dist.rank)  # dropout differs per rank; weights come from rank 0
        train_set, val_set, sampler, train_loader, val_loader = self._data(meta)
        weights = class_weights(opts.class_weights, train_set)
        loss_weight = torch.tensor(weights, device=self.device) if weights else None

        if opts.dropout is not None:
            set_dropout(model, opts.dropout)
        model.to(self.device)
        net = model
        if dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        optimizer = torch.optim.Adam(net.parameters(), lr=opts.lr)
        scheduler = lr_scheduler(optimizer, self.epochs * len(train_loader))
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        run = _Run(model, net, meta, classes, train_set, val_set, sampler, train_loader, val_loader, loss_weight,
                   optimizer, scheduler, scaler, history=[])
        if self.state is not None:
            self._restore(run)
        if dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.out)  # a killed run's partial files; a live writer's are kept
        amp_name = {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.amp_dtype]
        self.log(
            f"training {len(train_set)} images, validating {len(val_set)} ({len(classes)} classes) on "
            f"{self.device} x{dist.world}, {amp_name}, epochs {run.start + 1}..{self.epochs} -> {self.out}"
        )
        if run.start >= self.epochs:
            self.log(f"{opts.resume}: already trained {run.start} epochs (--epochs {self.epochs}); nothing to do")
        return run

    def _data(self, meta: ModelMeta) -> tuple[Any, Any, Any, Any, Any]:
        """Train and validation sets, the distributed sampler and both loaders (validation split by rank)."""
        import torch

        from ..data.dataset import SegmentationDataset, TileDataset, split_samples

        opts, dist = self.opts, self.dist
        if opts.val_data:
            train_files, val_root, val_files = None, Path(opts.val_data), None
        else:
            train_files, val_files = split_samples(self.data, opts.val_split, opts.seed)
            val_root = self.data
        if meta.tiling is None:
            train_set = SegmentationDataset(self.data, meta=meta, augment=opts.augment, files=train_files,
                                            seed=opts.seed)
            val_set = SegmentationDataset(val_root, meta=meta, files=val_files)
        else:  # crops to train on; validation: one fixed crop per image (loss, samples), whole images tiled (metrics)
            train_set = TileDataset(self.data, meta, augment=opts.augment, files=train_files, seed=opts.seed)
            val_set = TileDataset(val_root, meta, files=val_files, seed=opts.seed, crops_per_image=1)
        workers = opts.workers if opts.workers is not None else (0 if train_set.cached else min(4, os.cpu_count() or 1))
        loader_args = dict(num_workers=workers, pin_memory=self.device.type == "cuda", batch_size=opts.batch_size)
        sampler = torch.utils.data.DistributedSampler(
            train_set, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=opts.seed
        )
        train_loader = torch.utils.data.DataLoader(train_set, sampler=sampler, **loader_args)
        val_part = torch.utils.data.Subset(val_set, range(dist.rank, len(val_set), dist.world))
        val_loader = torch.utils.data.DataLoader(val_part, **loader_args)
        return train_set, val_set, sampler, train_loader, val_loader

    def _model(self, classes: list[str]) -> tuple["torch.nn.Module", ModelMeta]:
        from ..checkpoint import build_model, load_checkpoint, transfer_weights

        opts = self.opts
        meta_args: dict[str, Any] = {}
        init_state = None
        arch = {"base_channels": opts.base_channels, "upsample": opts.upsample, "in_channels": 3}
        if self.state is not None:
            stored = ModelMeta.from_dict(dict(self.state["meta"]), str(opts.resume))
            if stored.classes != classes:
                raise UnetDeployError(
                    f"{opts.resume}: trained on classes {stored.classes} but {self.data} has {classes}; resume on the same dataset"
                )
            return _load_state(build_model(stored), self.state["state_dict"], opts.resume), stored
        if opts.init:
            init_model, init_meta = load_checkpoint(opts.init)
            mine = {k: arch[k] for k in ("base_channels", "upsample")}
            if opts.arch_given and mine != {k: init_meta.arch.get(k, arch[k]) for k in mine}:
                raise UnetDeployError(
                    f"{opts.init}: a UNet with base_channels {init_meta.arch.get('base_channels')} and upsample "
                    f"{init_meta.arch.get('upsample')}, not {mine['base_channels']} and {mine['upsample']}: its weights fix "
                    "the network, so drop --preset/--base-channels/--upsample, or train from scratch without --init"
                )
            arch = dict(init_meta.arch)
            meta_args = {k: getattr(init_meta, k) for k in ("color", "mean", "std", "scale")}
            init_state = init_model.state_dict()
        tiling = None if opts.tile_scale is None else {"scale": opts.tile_scale, "overlap": opts.overlap}
        meta = ModelMeta(classes=classes, input_size=opts.img_size, letterbox={"pad": opts.pad, "fill": 0},
                         arch=arch, tiling=tiling, **meta_args)
        model = build_model(meta)
        if init_state is not None:  # a grown head keeps the rows of the classes it knew
            self.log(f"{opts.init}: {transfer_weights(model, init_state, init_meta.classes, classes)}")
        return model, meta

    def _restore(self, run: _Run) -> None:
        import torch

        s = self.state
        run.optimizer.load_state_dict(s["optimizer"])
        if "_schedulers" not in s["scheduler"]:
            raise UnetDeployError(
                f"{self.opts.resume}: written by an older unet-train whose LR schedule cannot be resumed; "
                f"start a new run from its weights with --init {self.opts.resume}"
            )
        run.scheduler.load_state_dict(s["scheduler"])
        if s.get("scaler"):
            run.scaler.load_state_dict(s["scaler"])
        rng = s.get("rng") or []
        if len(rng) == self.dist.world:
            mine = rng[self.dist.rank]
            torch.set_rng_state(mine["cpu"])
            if self.device.type == "cuda" and mine.get("cuda") is not None:
                torch.cuda.set_rng_state(mine["cuda"], self.device)
        else:
            self.log(f"{self.opts.resume}: saved by {len(rng)} process(es), resumed by {self.dist.world}: "
                     "dropout draws differ from an uninterrupted run")
        run.start, run.history, run.best = int(s["epoch"]), [dict(r) for r in s["history"]], float(s.get("best_miou", -1.0))

    # -- the loop ------------------------------------------------------------------------
    def loop(self, run: _Run) -> None:
        """Train, validate and (rank 0) write the outputs of each remaining epoch."""
        from tqdm import tqdm

        bar = tqdm(range(run.start + 1, self.epochs + 1), desc="epochs", unit="epoch", dynamic_ncols=True,
                   disable=not (self.dist.main and self.opts.progress), initial=run.start, total=self.epochs)
        for epoch in bar:
            row = self._epoch(run, epoch)
            run.history.append(row)
            rng = self.dist.gather(_rng_state())  # collective: every rank takes part
            if self.dist.main:
                self.outputs(run, epoch, rng)
                bar.set_postfix(miou=f"{row['miou']:.3f}", val_loss=f"{row['val_loss']:.3f}")

    def _epoch(self, run: _Run, epoch: int) -> dict[str, Any]:
        """Train one epoch, validate on every rank's share; the metrics row of this epoch."""
        import torch

        t0 = time.perf_counter()
        run.sampler.set_epoch(epoch)
        run.train_set.set_epoch(epoch)
        train_loss = self._train_epoch(run, epoch)
        self.dist.broadcast_buffers(run.model)
        sums, conf = evaluate_sums(run.model, run.val_loader, len(run.classes), self.device, self.amp_dtype,
                                   run.loss_weight, self.opts.loss == "ce+dice")
        if run.meta.tiling is not None:  # metrics from whole images through the runtime's tiled inference
            mine = range(self.dist.rank, len(run.val_set.samples), self.dist.world)
            conf = tiled_confusion(run.model, run.val_set, mine, self.device, self.amp_dtype)
        self.dist.all_reduce(sums)
        conf = self.dist.all_reduce(torch.from_numpy(conf).to(self.device)).cpu().numpy()
        return {"epoch": epoch, "train_loss": train_loss, "val_loss": float(sums[0] / sums[1]),
                **metrics.summary(conf, run.classes), "lr": run.optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0}

    def _train_epoch(self, run: _Run, epoch: int) -> float:
        import torch
        from tqdm import tqdm

        run.net.train()
        dice = self.opts.loss == "ce+dice"
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        shown = self.dist.main and self.opts.progress
        batches = tqdm(run.train_loader, desc=f"epoch {epoch}/{self.epochs}", unit="batch", leave=False,
                       dynamic_ncols=True, disable=not shown)
        for step, (x, y) in enumerate(batches):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with autocast(self.device, self.amp_dtype):
                logits = run.net(x)
            loss = segmentation_loss(logits, y, run.loss_weight, dice)
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.scheduler.step()
            sums[0] += loss.detach().double() * x.shape[0]
            sums[1] += x.shape[0]
            if shown and step % SHOW_LOSS_EVERY == 0:  # reading the loss waits for the GPU: not every step
                batches.set_postfix(loss=f"{float(loss.detach()):.4f}")
        self.dist.all_reduce(sums)
        return float(sums[0] / sums[1])

    # -- outputs (rank 0) ----------------------------------------------------------------
    def outputs(self, run: _Run, epoch: int, rng: list[dict[str, Any]]) -> None:
        """Write best.pt (when mIoU improved), last.pt, metrics.csv, the sample sheet and curves.png."""
        row = run.history[-1]
        if row["miou"] > run.best:
            run.best = row["miou"]
            self._save(self.out / "best.pt", run, epoch)
        self._save(self.out / "last.pt", run, epoch, optimizer=run.optimizer.state_dict(),
                   scheduler=run.scheduler.state_dict(), scaler=run.scaler.state_dict(), rng=rng)
        write_metrics_csv(self.out / "metrics.csv", run.history)
        self._samples(run, epoch)
        plot_curves(run.history, self.out / "curves.png")
        self.log(_summary(row, run.classes, self.epochs))

    def _save(self, path: Path, run: _Run, epoch: int, **extra: Any) -> None:
        from ..checkpoint import save_checkpoint

        config = {k: v for k, v in asdict(self.opts).items() if k not in ("resume", "overwrite", "progress")}
        config["epochs"] = self.epochs
        save_checkpoint(path, run.model, run.meta, epoch=epoch, metrics=run.history[-1], history=run.history,
                        best_miou=run.best, config=config, world_size=self.dist.world, **extra)

    def _samples(self, run: _Run, epoch: int) -> None:
        """``samples/epoch_NNN.jpg``: input | ground truth | prediction for the first validation images."""
        import cv2
        import torch

        from ..fileio import write_image
        from ..postprocess import colorize, to_bgr8

        val_set, rows = run.val_set, []
        picks = range(min(SAMPLE_ROWS, len(val_set)))
        x = torch.stack([val_set[i][0] for i in picks]).to(self.device)
        run.model.eval()
        with torch.no_grad(), autocast(self.device, self.amp_dtype):
            pred = run.model(x).argmax(1).to(torch.uint8).cpu().numpy()
        for i, p in zip(picks, pred):
            image, mask = val_set.load(i)
            image = image[:, :, ::-1] if val_set.meta.color == "RGB" else image  # to OpenCV's BGR
            rows.append(np.hstack([to_bgr8(np.ascontiguousarray(image)), colorize(mask), colorize(p)]))
        write_image(self.out / "samples" / f"epoch_{epoch:03d}.jpg", np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 92])


def set_dropout(model: "torch.nn.Module", p: float) -> None:
    """Set the rate of every Dropout2d (the seed's blocks use 0.3); weights and exports are unaffected."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout2d):
            module.p = p


def _load_state(model, state_dict, source) -> Any:
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise UnetDeployError(f"{source}: weights do not fit the stored model description ({str(e)[:160]})") from None
    return model


def _rng_state() -> dict[str, Any]:
    """This process's torch RNG states as tensors (loadable with weights_only=True)."""
    import torch

    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _summary(row: dict[str, Any], classes: Sequence[str], epochs: int) -> str:
    per_class = " ".join(f"{c} {row[f'iou_{c}']:.3f}" for c in classes)
    return (f"epoch {row['epoch']}/{epochs}  train {row['train_loss']:.4f}  val {row['val_loss']:.4f}  "
            f"mIoU {row['miou']:.4f} ({per_class})  lr {row['lr']:.2e}  {row['seconds']:.1f}s")
