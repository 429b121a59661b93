"""The training loss and validation: cross-entropy (+ soft Dice) and the metrics of ``unet_deploy.metrics``."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import metrics
from ..metrics import IGNORE_INDEX
from .distributed import amp_dtype, autocast, resolve_device

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..data.dataset import SegmentationDataset


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


def evaluate_sums(model, loader, num_classes, device, dtype, loss_weight, dice) -> tuple[Any, Any]:
    """(tensor [loss * images, images], int64 numpy confusion) over ``loader``, summed on this process only."""
    import numpy as np
    import torch

    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    conf = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)  # read once, at the end
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, dtype):
                logits = model(x)
            sums[0] += segmentation_loss(logits, y, loss_weight, dice).double() * x.shape[0]
            sums[1] += x.shape[0]
            conf += metrics.confusion(y, logits.argmax(1), num_classes, to_numpy=False)
    return sums, conf.cpu().numpy().astype(np.int64)


def tiled_confusion(model, dataset, indices, device, dtype) -> Any:
    """int64 numpy confusion of whole images ``indices`` of the TileDataset ``dataset`` at their stored size,
    each predicted by ``tiling.tiled_class_map`` with ``model`` as the predictor (the runtime's tiled path)."""
    import numpy as np
    import torch

    from ..tiling import tiled_class_map

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad(), autocast(device, dtype):
            return model(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    meta, k = dataset.meta, len(dataset.classes)
    model.eval()
    conf = np.zeros((k, k), np.int64)
    for i in indices:
        image, mask = dataset.read(i)
        pred = tiled_class_map(image, meta, predict, meta.tiling["scale"], meta.tiling["overlap"])
        conf += metrics.confusion(mask, pred, k)
    return conf


def evaluate(
    model: "torch.nn.Module",
    dataset: "SegmentationDataset",
    batch_size: int = 8,
    device: str = "cpu",
    amp: bool | None = False,
) -> dict[str, float]:
    """Validation metrics of ``model`` on ``dataset``: ``loss`` (cross-entropy), ``miou``, ``iou_<class>``, ``dice_<class>``.

    Fractions; a class absent from truth and prediction is NaN and left out of ``miou``.
    """
    import torch

    dev = resolve_device(device, None)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    sums, conf = evaluate_sums(model.to(dev), loader, len(dataset.classes), dev, amp_dtype(dev, amp), None, False)
    loss = float(sums[0] / max(1.0, float(sums[1])))
    return {"loss": loss, **metrics.summary(conf, dataset.classes)}
