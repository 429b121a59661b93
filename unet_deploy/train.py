"""Training: `unet-train DATA --out RUN` with validation metrics, checkpoints carrying ModelMeta, exact resume, AMP and DDP.

One epoch = train over the (augmented) training split, validate, then on rank 0: append a row
to ``RUN/metrics.csv``, write ``RUN/best.pt`` (best val mIoU) and ``RUN/last.pt`` atomically,
a sample sheet ``RUN/samples/epoch_NNN.jpg`` (input | ground truth | prediction) and the curves
``RUN/curves.png``. ``last.pt`` holds everything needed to continue bit for bit: optimizer,
scheduler, grad scaler, RNG states (one per rank), history. Run it under
``torchrun --nproc_per_node N -m unet_deploy.train ...`` for DistributedDataParallel.
"""
from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import click
import numpy as np

from .errors import UnetDeployError
from .meta import PAD_MODES, UPSAMPLE_MODES, ModelMeta

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .data.dataset import SegmentationDataset

IGNORE_INDEX = 255
LOSSES = ("ce", "ce+dice")
DEFAULT_EPOCHS = 50
SAMPLE_ROWS = 4
# Settings a resumed run may change; every other one comes from the checkpoint.
RESUMABLE_OVERRIDES = ("epochs", "device", "workers")


@dataclass
class TrainOptions:
    """Every training setting (the CLI options). ``epochs`` is the total, ``None`` = 50 or the resumed run's."""

    epochs: int | None = None
    batch_size: int = 8
    lr: float = 1e-3
    img_size: int = 256
    base_channels: int = 64
    upsample: str = "transpose"
    pad: str = "top-left"
    val_split: float = 0.2
    val_data: str | None = None
    loss: str = "ce"
    class_weights: str | None = None
    augment: bool = True
    dropout: float | None = None
    device: str = "auto"
    amp: bool | None = None
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
        if self.upsample not in UPSAMPLE_MODES:
            raise UnetDeployError(f"upsample {self.upsample!r} must be one of {UPSAMPLE_MODES}")
        if self.pad not in PAD_MODES:
            raise UnetDeployError(f"pad {self.pad!r} must be one of {PAD_MODES}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise UnetDeployError(f"--dropout {self.dropout} must lie in [0, 1)")
        if self.epochs is not None and self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UnetDeployError("--epochs, --batch-size and --lr must be positive")


def train(data: str | Path, out: str | Path | None = None, **options: Any) -> Path:
    """Train a UNet on the VOC-style folder ``data`` into the run folder ``out``; return ``out/best.pt``.

    ``options`` are the fields of ``TrainOptions`` (the CLI options with underscores, e.g.
    ``epochs=20, base_channels=32, resume="runs/a/last.pt"``). With ``resume`` the run continues
    from its ``last.pt`` up to ``epochs`` in total, with the settings stored in it; ``out``
    defaults to the checkpoint's folder. Under ``torchrun`` every process calls this and trains
    its share (DDP); only rank 0 writes files.
    """
    import torch

    opts = TrainOptions(**options)
    state = _read_resume(opts) if opts.resume else None
    if state is not None:
        opts = _resumed_options(opts, state["config"])
        out = out if out is not None else Path(opts.resume).parent
    if out is None:
        raise UnetDeployError("no run folder given; pass --out RUN")
    previous = torch.are_deterministic_algorithms_enabled()
    dist = _Distributed.start(opts.device)
    try:
        if opts.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = not opts.deterministic
        return _Trainer(Path(data), Path(out), opts, dist, state).run()
    finally:
        torch.use_deterministic_algorithms(previous)
        dist.close()


# ---------------------------------------------------------------------------------- setup


class _Distributed:
    """Rank, world size and device of this process; a process group when run under torchrun."""

    def __init__(self, rank: int, world: int, device: "torch.device", owns_group: bool) -> None:
        self.rank, self.world, self.device, self._owns_group = rank, world, device, owns_group

    @classmethod
    def start(cls, device: str) -> "_Distributed":
        import torch
        import torch.distributed as tdist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = _resolve_device(device, local_rank if world > 1 else None)
        owns = False
        if world > 1 and not tdist.is_initialized():
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
            owns = True
        rank = tdist.get_rank() if world > 1 else 0
        return cls(rank, world, dev, owns)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: "torch.Tensor") -> "torch.Tensor":
        """Sum ``t`` over all ranks (in place) and return it."""
        if self.world > 1:
            import torch.distributed as tdist

            tdist.all_reduce(t)
        return t

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order."""
        if self.world == 1:
            return [obj]
        import torch.distributed as tdist

        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, model: "torch.nn.Module") -> None:
        """Give every rank rank 0's BatchNorm statistics, so all validate the model rank 0 saves."""
        if self.world > 1:
            import torch.distributed as tdist

            for b in model.buffers():
                tdist.broadcast(b, 0)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as tdist

            tdist.barrier()

    def close(self) -> None:
        if self._owns_group:
            import torch.distributed as tdist

            tdist.destroy_process_group()


def _resolve_device(name: str, local_rank: int | None) -> "torch.device":
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is a user error."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UnetDeployError(f"--device {name}: no CUDA GPU is visible to torch; use --device cpu (or auto)")
        if local_rank is not None:
            return torch.device("cuda", local_rank)
        return torch.device(name)
    if name != "cpu":
        raise UnetDeployError(f"--device {name!r} is not one of auto, cpu, cuda, cuda:N")
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX512-BF16 or AMX), so bf16 autocast pays off."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _amp_dtype(device: "torch.device", amp: bool | None) -> "torch.dtype | None":
    """fp16 on CUDA, bf16 on CPU (auto: only where the CPU has native bf16), or None for fp32."""
    import torch

    if device.type == "cuda":
        return torch.float16 if amp is not False else None
    if amp is None:
        amp = cpu_supports_bf16()
    return torch.bfloat16 if amp else None


def _autocast(device: "torch.device", dtype: "torch.dtype | None") -> Any:
    """``torch.autocast`` to ``dtype``, or a no-op for fp32."""
    import contextlib

    import torch

    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _read_resume(opts: TrainOptions) -> dict[str, Any]:
    from .checkpoint import read_checkpoint

    state = read_checkpoint(opts.resume)
    needed = {"config", "optimizer", "scheduler", "epoch", "history", "state_dict", "meta"}
    if not needed <= set(state):
        raise UnetDeployError(
            f"{opts.resume}: not a training checkpoint (no optimizer state); resume from RUN/last.pt, "
            "or start a new run from these weights with --init"
        )
    return state


def _resumed_options(opts: TrainOptions, config: dict[str, Any]) -> TrainOptions:
    known = {f.name for f in fields(TrainOptions)}
    merged = {k: v for k, v in config.items() if k in known}
    for name in RESUMABLE_OVERRIDES:
        if getattr(opts, name) is not None:
            merged[name] = getattr(opts, name)
    merged.update(resume=opts.resume, init=None, overwrite=True, progress=opts.progress)
    return TrainOptions(**merged)


def _class_weights(spec: str | None, train_set: "SegmentationDataset") -> list[float] | None:
    """``None``/"none" -> no weights; "auto" -> inverse square root of pixel frequency (mean 1); else a list."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    n = len(train_set.classes)
    if spec.strip().lower() == "auto":
        counts = train_set.class_pixel_counts().astype(np.float64)
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


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 1% of the base learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))


class _LrSchedule:
    """The LR factor of step n for LambdaLR (an object, so a resumed run rebuilds it from the step count)."""

    def __init__(self, total: int, warmup: int) -> None:
        self.total, self.warmup = total, warmup

    def __call__(self, step: int) -> float:
        return _lr_factor(step, self.total, self.warmup)


def segmentation_loss(
    logits: "torch.Tensor", target: "torch.Tensor", weight: "torch.Tensor | None" = None, dice: bool = False
) -> "torch.Tensor":
    """Cross-entropy ignoring 255 (the seed's loss, optionally class-weighted), plus ``1 - soft Dice`` if ``dice``."""
    import torch.nn.functional as F

    logits = logits.float()
    loss = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX)
    if dice:
        valid = (target != IGNORE_INDEX).unsqueeze(1)
        probs = logits.softmax(1) * valid
        onehot = F.one_hot(target.masked_fill(~valid[:, 0], 0), logits.shape[1]).permute(0, 3, 1, 2) * valid
        inter = (probs * onehot).sum((0, 2, 3))
        denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
        loss = loss + 1.0 - ((2 * inter + 1.0) / (denom + 1.0)).mean()
    return loss


# ---------------------------------------------------------------------------------- metrics


def confusion_matrix(pred: "torch.Tensor", target: "torch.Tensor", num_classes: int) -> "torch.Tensor":
    """``num_classes`` x ``num_classes`` int64 counts (row = truth, column = prediction); 255 skipped."""
    import torch

    valid = target != IGNORE_INDEX
    index = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def metrics_from_confusion(confusion: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Per-class IoU and Dice and their mean over classes present (``miou``, background included, as VOC)."""
    conf = np.asarray(confusion, np.float64)
    tp = np.diag(conf)
    fp, fn = conf.sum(0) - tp, conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
        dice = 2 * tp / (2 * tp + fp + fn)
    present = ~np.isnan(iou)
    out = {"miou": float(iou[present].mean()) if present.any() else 0.0}
    out.update({f"iou_{c}": float(v) for c, v in zip(classes, iou)})
    out.update({f"dice_{c}": float(v) for c, v in zip(classes, dice)})
    return out


def _evaluate_sums(model, loader, num_classes, device, amp_dtype, loss_weight, dice) -> tuple[Any, Any]:
    """(tensor [loss * images, images], confusion) over ``loader``, summed on this process only."""
    import torch

    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, amp_dtype):
                logits = model(x)
            sums[0] += segmentation_loss(logits, y, loss_weight, dice).double() * x.shape[0]
            sums[1] += x.shape[0]
            conf += confusion_matrix(logits.argmax(1), y, num_classes)
    return sums, conf


def evaluate(
    model: "torch.nn.Module",
    dataset: "SegmentationDataset",
    batch_size: int = 8,
    device: str = "cpu",
    amp: bool | None = False,
) -> dict[str, float]:
    """Validation metrics of ``model`` on ``dataset``: ``loss`` (cross-entropy), ``miou``, ``iou_<class>``, ``dice_<class>``."""
    import torch

    dev = _resolve_device(device, None)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    sums, conf = _evaluate_sums(model.to(dev), loader, len(dataset.classes), dev, _amp_dtype(dev, amp), None, False)
    return {"loss": float(sums[0] / max(1.0, float(sums[1]))), **metrics_from_confusion(conf.cpu().numpy(), dataset.classes)}


# ---------------------------------------------------------------------------------- the run


class _Trainer:
    def __init__(self, data: Path, out: Path, opts: TrainOptions, dist: _Distributed, state: dict | None) -> None:
        self.data, self.out, self.opts, self.dist, self.state = data, out, opts, dist, state
        self.device = dist.device
        self.amp_dtype = _amp_dtype(self.device, opts.amp)
        self.epochs = opts.epochs or DEFAULT_EPOCHS

    def log(self, message: str) -> None:
        if self.dist.main:
            from tqdm import tqdm

            tqdm.write(message)

    def run(self) -> Path:
        import torch

        from .data.dataset import SegmentationDataset, split_samples
        from .data.labelme import read_class_names

        opts, dist = self.opts, self.dist
        best_path, last_path = self.out / "best.pt", self.out / "last.pt"
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

        if opts.val_data:
            train_files, val_root, val_files = None, Path(opts.val_data), None
        else:
            train_files, val_files = split_samples(self.data, opts.val_split, opts.seed)
            val_root = self.data
        train_set = SegmentationDataset(self.data, meta=meta, augment=opts.augment, files=train_files, seed=opts.seed)
        val_set = SegmentationDataset(val_root, meta=meta, files=val_files)
        workers = opts.workers if opts.workers is not None else (0 if train_set.cached else min(4, os.cpu_count() or 1))
        loader_args = dict(num_workers=workers, pin_memory=self.device.type == "cuda", batch_size=opts.batch_size)
        sampler = torch.utils.data.DistributedSampler(
            train_set, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=opts.seed
        )
        train_loader = torch.utils.data.DataLoader(train_set, sampler=sampler, **loader_args)
        val_part = torch.utils.data.Subset(val_set, range(dist.rank, len(val_set), dist.world))
        val_loader = torch.utils.data.DataLoader(val_part, **loader_args)
        weights = _class_weights(opts.class_weights, train_set)
        loss_weight = torch.tensor(weights, device=self.device) if weights else None

        if opts.dropout is not None:
            set_dropout(model, opts.dropout)
        model.to(self.device)
        net = model
        if dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        optimizer = torch.optim.Adam(net.parameters(), lr=opts.lr)
        total = self.epochs * len(train_loader)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _LrSchedule(total, max(1, round(0.03 * total))))
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        start, history, best = 0, [], -1.0
        if self.state is not None:
            start, history, best = self._restore(optimizer, scheduler, scaler)
        if dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            _remove_stale_temporaries(self.out)
        amp_name = {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.amp_dtype]
        self.log(
            f"training {len(train_set)} images, validating {len(val_set)} ({len(classes)} classes) on "
            f"{self.device} x{dist.world}, {amp_name}, epochs {start + 1}..{self.epochs} -> {self.out}"
        )
        if start >= self.epochs:
            self.log(f"{self.opts.resume}: already trained {start} epochs (--epochs {self.epochs}); nothing to do")

        from tqdm import tqdm

        bar = tqdm(range(start + 1, self.epochs + 1), desc="epochs", unit="epoch", dynamic_ncols=True,
                   disable=not (dist.main and opts.progress), initial=start, total=self.epochs)
        for epoch in bar:
            t0 = time.perf_counter()
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            train_loss = self._train_epoch(net, train_loader, optimizer, scheduler, scaler, loss_weight, epoch)
            dist.broadcast_buffers(model)
            sums, conf = _evaluate_sums(model, val_loader, len(classes), self.device, self.amp_dtype,
                                        loss_weight, opts.loss == "ce+dice")
            dist.all_reduce(sums)
            dist.all_reduce(conf)
            scores = metrics_from_confusion(conf.cpu().numpy(), classes)
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": float(sums[0] / sums[1]), **scores,
                   "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
            history.append(row)
            rng = dist.gather(_rng_state())  # collective: every rank takes part
            if dist.main:
                if row["miou"] > best:
                    best = row["miou"]
                    self._save(best_path, model, meta, epoch, history, best)
                self._save(last_path, model, meta, epoch, history, best, optimizer=optimizer.state_dict(),
                           scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), rng=rng)
                write_metrics_csv(self.out / "metrics.csv", history)
                self._samples(model, val_set, epoch)
                plot_curves(history, self.out / "curves.png")
                bar.set_postfix(miou=f"{row['miou']:.3f}", val_loss=f"{row['val_loss']:.3f}")
                self.log(_summary(row, classes, self.epochs))
        dist.barrier()
        if not best_path.exists():
            raise UnetDeployError(f"{best_path}: not written; the run has no finished epoch")
        return best_path

    # -- pieces of the run ---------------------------------------------------------------
    def _model(self, classes: list[str]) -> tuple["torch.nn.Module", ModelMeta]:
        from .checkpoint import build_model, load_checkpoint

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
            arch = dict(init_meta.arch)
            meta_args = {k: getattr(init_meta, k) for k in ("color", "mean", "std", "scale")}
            init_state = init_model.state_dict()
        meta = ModelMeta(classes=classes, input_size=opts.img_size, letterbox={"pad": opts.pad, "fill": 0},
                         arch=arch, **meta_args)
        model = build_model(meta)
        if init_state is not None:
            own = model.state_dict()
            fitting = {k: v for k, v in init_state.items() if k in own and own[k].shape == v.shape}
            model.load_state_dict(fitting, strict=False)
            skipped = sorted(set(own) - set(fitting))
            self.log(f"{opts.init}: initialised {len(fitting)}/{len(own)} tensors"
                     + (f" (new: {', '.join(skipped)})" if skipped else ""))
        return model, meta

    def _restore(self, optimizer, scheduler, scaler) -> tuple[int, list[dict], float]:
        import torch

        s = self.state
        optimizer.load_state_dict(s["optimizer"])
        scheduler.load_state_dict(s["scheduler"])
        if s.get("scaler"):
            scaler.load_state_dict(s["scaler"])
        rng = s.get("rng") or []
        if len(rng) == self.dist.world:
            mine = rng[self.dist.rank]
            torch.set_rng_state(mine["cpu"])
            if self.device.type == "cuda" and mine.get("cuda") is not None:
                torch.cuda.set_rng_state(mine["cuda"], self.device)
        else:
            self.log(f"{self.opts.resume}: saved by {len(rng)} process(es), resumed by {self.dist.world}: "
                     "dropout draws differ from an uninterrupted run")
        return int(s["epoch"]), [dict(r) for r in s["history"]], float(s.get("best_miou", -1.0))

    def _train_epoch(self, net, loader, optimizer, scheduler, scaler, loss_weight, epoch) -> float:
        import torch
        from tqdm import tqdm

        net.train()
        dice = self.opts.loss == "ce+dice"
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        batches = tqdm(loader, desc=f"epoch {epoch}/{self.epochs}", unit="batch", leave=False, dynamic_ncols=True,
                       disable=not (self.dist.main and self.opts.progress))
        for x, y in batches:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with _autocast(self.device, self.amp_dtype):
                logits = net(x)
            loss = segmentation_loss(logits, y, loss_weight, dice)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            sums[0] += loss.detach().double() * x.shape[0]
            sums[1] += x.shape[0]
            batches.set_postfix(loss=f"{float(loss.detach()):.4f}")
        self.dist.all_reduce(sums)
        return float(sums[0] / sums[1])

    def _save(self, path: Path, model, meta: ModelMeta, epoch: int, history: list[dict], best: float, **extra) -> None:
        from .checkpoint import save_checkpoint

        config = {k: v for k, v in asdict(self.opts).items() if k not in ("resume", "overwrite", "progress")}
        config["epochs"] = self.epochs
        save_checkpoint(path, model, meta, epoch=epoch, metrics=history[-1], history=history, best_miou=best,
                        config=config, world_size=self.dist.world, **extra)

    def _samples(self, model, val_set: "SegmentationDataset", epoch: int) -> None:
        import cv2
        import torch

        from .fileio import write_image
        from .postprocess import colorize, to_bgr8

        rows = []
        picks = range(min(SAMPLE_ROWS, len(val_set)))
        x = torch.stack([val_set[i][0] for i in picks]).to(self.device)
        model.eval()
        with torch.no_grad(), _autocast(self.device, self.amp_dtype):
            pred = model(x).argmax(1).to(torch.uint8).cpu().numpy()
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


def _remove_stale_temporaries(out: Path) -> None:
    """Delete the temporary files a killed run left beside its outputs (fileio.atomic_path names)."""
    for name in ("best.pt", "last.pt", "metrics.csv", "curves.png"):
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _summary(row: dict[str, Any], classes: Sequence[str], epochs: int) -> str:
    per_class = " ".join(f"{c} {row[f'iou_{c}']:.3f}" for c in classes)
    return (f"epoch {row['epoch']}/{epochs}  train {row['train_loss']:.4f}  val {row['val_loss']:.4f}  "
            f"mIoU {row['miou']:.4f} ({per_class})  lr {row['lr']:.2e}  {row['seconds']:.1f}s")


# ---------------------------------------------------------------------------------- outputs


def write_metrics_csv(path: Path, history: Sequence[dict[str, Any]]) -> Path:
    """Write one row per epoch (epoch, train_loss, val_loss, miou, iou_*, dice_*, lr, seconds) atomically."""
    from .fileio import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) and k in ("lr", "seconds") else
                             f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return atomic_write_text(path, buf.getvalue())


def read_metrics_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``metrics.csv`` as dicts of numbers (``nan`` for classes absent from validation)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_curves(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Draw train/val loss and val mIoU per epoch with OpenCV (no matplotlib) and write ``path``."""
    import cv2

    from .fileio import write_image

    panel_w, panel_h, margin = 480, 320, 48
    canvas = np.full((panel_h, 2 * panel_w, 3), 255, np.uint8)
    epochs = [r["epoch"] for r in history]
    series = [
        ("loss", None, [("train", [r["train_loss"] for r in history], (200, 90, 30)),
                        ("val", [r["val_loss"] for r in history], (30, 30, 220))]),
        ("val mIoU", (0.0, 1.0), [("mIoU", [r["miou"] for r in history], (40, 150, 40))]),
    ]
    font = cv2.FONT_HERSHEY_SIMPLEX
    for p, (title, fixed, lines) in enumerate(series):
        x0, x1, y0, y1 = p * panel_w + margin, (p + 1) * panel_w - 16, 28, panel_h - margin
        values = np.array([v for _, vs, _ in lines for v in vs], np.float64)
        values = values[np.isfinite(values)]
        lo, hi = fixed or ((float(values.min()), float(values.max())) if values.size else (0.0, 1.0))
        lo, hi = (lo - 0.5, hi + 0.5) if hi - lo < 1e-9 else (lo, hi)
        e0, e1 = min(epochs), max(max(epochs), min(epochs) + 1)
        fx = lambda e: int(round(x0 + (e - e0) / (e1 - e0) * (x1 - x0)))  # noqa: E731
        fy = lambda v: int(round(y1 - (v - lo) / (hi - lo) * (y1 - y0)))  # noqa: E731
        cv2.rectangle(canvas, (x0, y0), (x1, y1), (0, 0, 0), 1)
        cv2.putText(canvas, title, (x0, 20), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        for v, y in ((hi, y0 + 4), (lo, y1)):
            cv2.putText(canvas, f"{v:.3g}", (p * panel_w + 2, y), font, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
        for e in (e0, e1):
            cv2.putText(canvas, str(e), (fx(e) - 6, y1 + 16), font, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
        cv2.putText(canvas, "epoch", ((x0 + x1) // 2 - 20, y1 + 34), font, 0.42, (60, 60, 60), 1, cv2.LINE_AA)
        for k, (name, vs, color) in enumerate(lines):
            pts = np.array([(fx(e), fy(v)) for e, v in zip(epochs, vs) if math.isfinite(v)], np.int32)
            if len(pts) > 1:
                cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], False, color, 2, cv2.LINE_AA)
            for pt in pts:
                cv2.circle(canvas, tuple(int(c) for c in pt), 3, color, -1, cv2.LINE_AA)
            cv2.putText(canvas, name, (x1 - 70, y0 + 20 + 18 * k), font, 0.45, color, 1, cv2.LINE_AA)
    return write_image(path, canvas)


# ---------------------------------------------------------------------------------- CLI


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Run folder for metrics.csv, best.pt, last.pt, samples/ (default with --resume: its folder).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help=f"Total epochs; a resumed run continues up to it.  [default: {DEFAULT_EPOCHS}, or the resumed run's]")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=8)
@click.option("--lr", type=float, default=1e-3, help="Adam learning rate (warm-up over 3% of the steps, then cosine decay to 1%).")
@click.option("--img-size", type=int, default=256, help="Square network input (multiple of 16); images are letterboxed.")
@click.option("--base-channels", type=int, default=64, help="UNet width (64 = the seed's network).")
@click.option("--upsample", type=click.Choice(UPSAMPLE_MODES), default="transpose")
@click.option("--pad", type=click.Choice(PAD_MODES), default="top-left", help="Letterbox padding placement.")
@click.option("--val-split", type=float, default=0.2, help="Seeded fraction held out for validation (0: validate on train).")
@click.option("--val-data", type=click.Path(path_type=Path), default=None, help="A separate VOC-style validation folder.")
@click.option("--loss", type=click.Choice(LOSSES), default="ce", help="Cross-entropy (ignore 255), or plus soft Dice.")
@click.option("--class-weights", default=None, help="'auto' (inverse sqrt pixel frequency) or one weight per class: 1,4,4.")
@click.option("--augment/--no-augment", default=True, help="Flips, 90-degree turns, scale/shift, brightness/contrast.")
@click.option("--dropout", type=float, default=None,
              help="Dropout2d rate in the UNet blocks while training (no effect on weights or exports).  "
                   "[default: the seed's 0.3]")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun: the local rank's GPU).")
@click.option("--amp/--no-amp", default=None,
              help="Mixed precision: fp16 + GradScaler on CUDA, bf16 on CPU.  [default: on for CUDA and bf16-capable CPUs]")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader workers.  [default: 0 when the dataset is cached in memory, else up to 4]")
@click.option("--seed", type=int, default=0)
@click.option("--deterministic/--no-deterministic", default=True, help="Same seed and data give the same metrics.")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Continue RUN/last.pt exactly; settings come from it (only --epochs --device --workers apply).")
@click.option("--init", type=click.Path(path_type=Path), default=None,
              help="Start from weights: a checkpoint or a seed unet.pth (architecture taken from it).")
@click.option("--overwrite", is_flag=True, help="Start a new run in an --out that already holds one.")
def command(data: Path, out: Path | None, **options: Any) -> None:
    """Train a UNet on a VOC-style dataset folder (what `unet-deploy labelme` writes).

    Each epoch writes a row of RUN/metrics.csv (losses, mIoU, per-class IoU and Dice, lr),
    RUN/best.pt (best val mIoU) and RUN/last.pt, a sample sheet RUN/samples/epoch_NNN.jpg
    (input | ground truth | prediction) and RUN/curves.png.

    \b
    Examples:
      unet-train data/voc --out runs/a --epochs 40 --base-channels 32
      unet-train data/voc --out runs/b --loss ce+dice --class-weights auto --init unet.pth
      unet-train data/voc --resume runs/a/last.pt --epochs 60      # continue to 60 in total
      torchrun --nproc_per_node 2 -m unet_deploy.train data/voc --out runs/ddp
    """
    best = train(data, out, **options)
    click.echo(f"best checkpoint: {best}")


if __name__ == "__main__":
    command(prog_name="unet-train")
