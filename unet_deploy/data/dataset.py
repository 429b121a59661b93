"""The training Datasets: a VOC-style folder prepared exactly as the runtime does, with aligned augmentations.

A sample is prepared with the same functions as inference (``preprocess.letterbox``,
``to_model_color``, ``normalize`` driven by ``ModelMeta``), so the pixels a model is trained
on are the pixels it later sees. ``SegmentationDataset`` letterboxes whole images (masks
nearest-exact, padded with background 0; 255 stays "ignore"). ``TileDataset`` is the
training side of tiled inference (``ModelMeta.tiling``): random ``input_size`` crops of each
image resized by ``tiling.scale``, padded as the tiler pads, sampled near defects.
"""
from __future__ import annotations

import glob
import math
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch

from ..errors import UnetDeployError
from ..fileio import IMAGE_SUFFIXES, read_image
from ..meta import ModelMeta
from ..preprocess import LetterboxTransform, letterbox, normalize, resize_image, to_model_color
from .classes import CLASS_NAMES_FILE, read_class_names
from .palette import read_mask

IGNORE_INDEX = 255
IMAGES_DIR, MASKS_DIR = "JPEGImages", "SegmentationClass"
# Letterboxed samples are kept in memory when they fit in this many bytes ("auto" cache).
CACHE_LIMIT_BYTES = 1 << 30
# TileDataset: the probability that a crop is placed on a defect pixel instead of uniformly.
DEFECT_CROP_P = 0.5


def list_samples(root: str | Path) -> list[str]:
    """Sorted stems of ``root/JPEGImages/*`` that have a mask ``root/SegmentationClass/<stem>.png``."""
    root = Path(root)
    images, masks = root / IMAGES_DIR, root / MASKS_DIR
    if not images.is_dir() or not masks.is_dir():
        raise UnetDeployError(
            f"{root}: not a dataset folder (needs {IMAGES_DIR}/ and {MASKS_DIR}/); "
            "convert labelme annotations with `unet-deploy labelme SRC OUT`"
        )
    stems = sorted(p.stem for p in _image_files(images) if (masks / f"{p.stem}.png").is_file())
    if not stems:
        raise UnetDeployError(f"{root}: no image in {IMAGES_DIR}/ has a mask {MASKS_DIR}/<name>.png")
    return stems


def split_samples(root: str | Path, val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split the samples of ``root`` into (train stems, val stems).

    ``root/ImageSets/Segmentation/{train,val}.txt`` are used when both exist (the VOC layout);
    otherwise a seeded random ``val_fraction`` of the samples (at least one, and at least one
    left for training) is held out. With ``val_fraction=0`` (or a single sample) both lists are
    all samples: validation then runs on the training images.
    """
    root = Path(root)
    sets = root / "ImageSets" / "Segmentation"
    if (sets / "train.txt").is_file() and (sets / "val.txt").is_file():
        read = lambda name: [s.strip() for s in (sets / name).read_text().splitlines() if s.strip()]  # noqa: E731
        return read("train.txt"), read("val.txt")
    stems = list_samples(root)
    if not 0.0 <= val_fraction < 1.0:
        raise UnetDeployError(f"validation fraction {val_fraction} must lie in [0, 1)")
    if val_fraction == 0 or len(stems) < 2:
        return stems, stems
    n_val = min(len(stems) - 1, max(1, round(len(stems) * val_fraction)))
    order = np.random.default_rng(seed).permutation(len(stems))
    val = set(order[:n_val].tolist())
    return ([s for i, s in enumerate(stems) if i not in val], [s for i, s in enumerate(stems) if i in val])


class SegmentationDataset(torch.utils.data.Dataset):
    """A VOC-style folder (``JPEGImages/``, ``SegmentationClass/``, ``class_names.txt``) as training samples.

    Each item is ``(image, mask)``: float32 CxHxW prepared exactly like ``preprocess.preprocess``
    with ``meta`` (or a default ``ModelMeta`` of ``size`` and ``pad``), and int64 HxW class ids
    (255 = ignore). ``files`` picks samples by stem (default: all). ``augment=True`` applies
    flips, 90-degree rotations, small scale/shift and brightness/contrast, identically to image
    and mask, drawn from a generator seeded by ``(seed, epoch, index)`` so runs repeat exactly
    whatever the number of DataLoader workers (call ``set_epoch`` each epoch). ``cache`` keeps
    the decoded letterboxed samples in memory ("auto": when they fit in 1 GiB).
    """

    def __init__(
        self,
        root: str | Path,
        size: int | Sequence[int] = 256,
        augment: bool = False,
        files: Iterable[str] | None = None,
        pad: str = "top-left",
        meta: ModelMeta | None = None,
        cache: bool | str = "auto",
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.classes = read_class_names(self.root)
        if meta is None:
            meta = ModelMeta(classes=self.classes, input_size=size, letterbox={"pad": pad, "fill": 0})
        elif list(meta.classes) != self.classes:
            raise UnetDeployError(
                f"{self.root / CLASS_NAMES_FILE}: classes {self.classes} differ from the model's {meta.classes}; "
                "use datasets converted with the same class list"
            )
        self.meta, self.augment, self.seed, self.epoch = meta, bool(augment), int(seed), 0
        stems = list_samples(self.root) if files is None else [_stem(f) for f in files]
        self.samples = [self._paths(stem) for stem in stems]
        if not self.samples:
            raise UnetDeployError(f"{self.root}: the sample list is empty; check the split or the files given")
        use_cache = self._cache_bytes() <= CACHE_LIMIT_BYTES if cache == "auto" else bool(cache)
        # Filled eagerly so DataLoader workers (forked after this) all share it.
        self._cache = [self._load(i) for i in range(len(self.samples))] if use_cache else None

    @property
    def cached(self) -> bool:
        """Whether the letterboxed samples are held in memory."""
        return self._cache is not None

    @property
    def stems(self) -> list[str]:
        return [img.stem for img, _ in self.samples]

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (part of the generator seed)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The letterboxed sample ``index`` before augmentation and normalisation.

        Returns (HxWxC image in ``meta.color`` order, 8 or 16 bit; HxW uint8 class ids).
        """
        return self._sample(index)[:2]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask, t = self._sample(index)
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            image, mask = augment_pair(image, mask, rng, t)
        return torch.from_numpy(normalize(image, self.meta)), torch.from_numpy(mask.astype(np.int64))

    def class_pixel_counts(self) -> np.ndarray:
        """Pixels of each class over all (unaugmented, letterboxed) masks; ignore pixels not counted."""
        counts = np.zeros(len(self.classes), np.int64)
        for i in range(len(self)):
            counts += np.bincount(self.load(i)[1].ravel(), minlength=256)[: len(self.classes)]
        return counts

    # -- internals --------------------------------------------------------------------------
    def _sample(self, index: int) -> tuple[np.ndarray, np.ndarray, LetterboxTransform]:
        return self._cache[index] if self._cache is not None else self._load(index)

    def _paths(self, stem: str) -> tuple[Path, Path]:
        mask = self.root / MASKS_DIR / f"{stem}.png"
        found = [p for p in _image_files(self.root / IMAGES_DIR, stem)]
        if not found or not mask.is_file():
            missing = mask if found else self.root / IMAGES_DIR / f"{stem}.*"
            raise UnetDeployError(f"{missing}: not found; every listed sample needs an image and a mask")
        if len(found) > 1:
            raise UnetDeployError(f"{found[0].parent}: several images are named {stem!r}; keep one per mask")
        return found[0], mask

    def _cache_bytes(self) -> int:
        h, w = self.meta.input_size
        return len(self.samples) * h * w * (self.meta.in_channels + 1)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` as stored: the image as OpenCV reads it (BGR) and its HxW uint8 mask, checked."""
        image_path, mask_path = self.samples[index]
        image, mask = read_image(image_path), read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise UnetDeployError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]}; re-create the mask from the annotation"
            )
        bad = np.setdiff1d(np.unique(mask), [*range(len(self.classes)), IGNORE_INDEX])
        if bad.size:
            raise UnetDeployError(
                f"{mask_path}: class id {int(bad[0])} but {CLASS_NAMES_FILE} lists {len(self.classes)} classes; "
                "re-convert the dataset with the full class list"
            )
        return image, mask

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray, LetterboxTransform]:
        image, mask = self.read(index)
        meta = self.meta
        if image.ndim == 3 and image.shape[2] == 4:
            image = to_model_color(image, "BGR")  # as preprocess(): drop alpha before resizing
        boxed, t = letterbox(image, meta.input_size, meta.pad, meta.letterbox.get("fill", 0))
        boxed = to_model_color(boxed, meta.color)
        mask, _ = letterbox(mask, meta.input_size, meta.pad, 0, interpolation=cv2.INTER_NEAREST_EXACT)
        return boxed, mask, t


class TileDataset(SegmentationDataset):
    """Random ``meta.input_size`` crops of the images resized by ``meta.tiling["scale"]``: training for tiled inference.

    Each image is resized exactly as ``tiling.tiled_class_map`` resizes it (the letterbox's
    resize; masks nearest-exact) and, where it is smaller than a tile, padded at the bottom /
    right as the tiler pads: the image by reflection without repeating the edge pixel
    (``BORDER_REFLECT_101``), the mask with the ignore value 255 so the padding is not learned.
    One epoch takes, from each image, as many crops as non-overlapping tiles cover it
    (``crops_per_image`` overrides that). **Sampling rule:** with probability ``DEFECT_CROP_P``
    (0.5) a crop is placed on a defect: a class is drawn uniformly among the non-background
    classes present in the image (class-balanced: a rare class is drawn as often as a common
    one), then one of that class's defects (8-connected components) uniformly, so that a 4 px
    spot is drawn as often as a 40 px one rather than in proportion to its pixels, then a pixel
    of it, and the crop is placed so that this pixel falls uniformly inside its central half
    (clamped to the image); otherwise, and on
    images without defects, the crop is uniform. The draws, then ``augment_pair`` (without a
    letterbox transform: a crop has no fill), use one generator seeded by
    ``(seed, epoch, index)``, so runs repeat exactly. ``load(i)`` is crop ``i`` before
    augmentation; ``read(i)`` the whole stored image and mask, which validation tiles.
    """

    def __init__(self, root: str | Path, meta: ModelMeta, augment: bool = False, files: Iterable[str] | None = None,
                 cache: bool | str = "auto", seed: int = 0, crops_per_image: int | None = None) -> None:
        if meta.tiling is None:
            raise UnetDeployError("TileDataset needs a ModelMeta with tiling; pass --tile-scale")
        self.crops_per_image = crops_per_image
        super().__init__(root, meta=meta, augment=augment, files=files, cache=cache, seed=seed)
        counts = [self._crop_count(i) for i in range(len(self.samples))]
        self._first = np.cumsum([0, *counts])  # crops of image j: [first[j], first[j + 1])

    def __len__(self) -> int:
        return int(self._first[-1])

    def image_index(self, index: int) -> int:
        """The image that crop ``index`` comes from."""
        if not 0 <= index < len(self):
            raise IndexError(f"crop {index} of {len(self)}")
        return int(np.searchsorted(self._first, index, side="right")) - 1

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self._crop(index, self._rng(index))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self._rng(index)
        image, mask = self._crop(index, rng)
        if self.augment:
            image, mask = augment_pair(image, mask, rng)
        return torch.from_numpy(normalize(image, self.meta)), torch.from_numpy(mask.astype(np.int64))

    def class_pixel_counts(self) -> np.ndarray:
        """Pixels of each class over the resized (unpadded, unaugmented) masks; ignore pixels not counted."""
        counts = np.zeros(len(self.classes), np.int64)
        for i in range(len(self.samples)):
            counts += np.bincount(self._scaled(i)[1].ravel(), minlength=256)[: len(self.classes)]
        return counts

    # -- internals --------------------------------------------------------------------------
    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, index))

    def _scaled_hw(self, index: int) -> tuple[int, int]:
        from PIL import Image

        from ..tiling import scaled_size

        with Image.open(self.samples[index][0]) as im:  # the header only
            w, h = im.size
        return scaled_size((h, w), self.meta.tiling["scale"])

    def _cache_bytes(self) -> int:
        th, tw = self.meta.input_size
        sizes = [self._scaled_hw(i) for i in range(len(self.samples))]
        return sum(max(h, th) * max(w, tw) * (self.meta.in_channels + 1) for h, w in sizes)

    def _crop_count(self, index: int) -> int:
        if self.crops_per_image is not None:
            return int(self.crops_per_image)
        (h, w), (th, tw) = self._scaled_hw(index), self.meta.input_size
        return math.ceil(h / th) * math.ceil(w / tw)

    def _scaled(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index`` resized by the tiling scale, in ``meta.color`` order, and its mask, unpadded."""
        from ..tiling import scaled_size

        image, mask = self.read(index)
        if image.ndim == 3 and image.shape[2] == 4:
            image = to_model_color(image, "BGR")  # as the tiler: drop alpha before resizing
        hw = scaled_size(image.shape[:2], self.meta.tiling["scale"])
        if hw != image.shape[:2]:
            image = resize_image(image, hw, None)
            mask = resize_image(mask, hw, cv2.INTER_NEAREST_EXACT)
        return to_model_color(image, self.meta.color), mask

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray, dict[int, list[np.ndarray]]]:
        """Resized, padded image and mask of image ``index``, and the flat pixel indices of each defect of each class."""
        image, mask = self._scaled(index)
        th, tw = self.meta.input_size
        pad_h, pad_w = max(0, th - mask.shape[0]), max(0, tw - mask.shape[1])
        if pad_h or pad_w:  # the tiler's padding: numpy "reflect" = BORDER_REFLECT_101
            image = np.pad(image, ((0, pad_h), (0, pad_w), *[(0, 0)] * (image.ndim - 2)), mode="reflect")
            mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
        where = {}
        for c in np.unique(mask):
            if 0 < c < len(self.classes):  # the defects of class c: 8-connected components, as flat pixel indices
                n, labels = cv2.connectedComponents((mask == c).view(np.uint8), connectivity=8)
                flat = labels.ravel()
                pixels = np.flatnonzero(flat)
                pixels = pixels[np.argsort(flat[pixels], kind="stable")]
                where[int(c)] = np.split(pixels, np.cumsum(np.bincount(flat[pixels], minlength=n)[1:])[:-1])
        return image, mask, where

    def _crop(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        image, mask, where = self._sample(self.image_index(index))
        (h, w), (th, tw) = mask.shape, self.meta.input_size
        if where and rng.random() < DEFECT_CROP_P:
            classes = sorted(where)
            defects = where[classes[int(rng.integers(len(classes)))]]
            pixels = defects[int(rng.integers(len(defects)))]
            y, x = divmod(int(pixels[int(rng.integers(len(pixels)))]), w)
            top = y - th // 4 - int(rng.integers(th - th // 2))  # the pixel lands in the central half
            left = x - tw // 4 - int(rng.integers(tw - tw // 2))
        else:
            top, left = int(rng.integers(h - th + 1)), int(rng.integers(w - tw + 1))
        top, left = min(max(top, 0), h - th), min(max(left, 0), w - tw)
        return (np.ascontiguousarray(image[top : top + th, left : left + tw]),
                np.ascontiguousarray(mask[top : top + th, left : left + tw]))


def _stem(name: str | Path) -> str:
    """A sample given as a stem or as a file name (``a.jpg``, ``a.png``) -> its stem."""
    p = Path(name)
    return p.stem if p.suffix.lower() in IMAGE_SUFFIXES else p.name


def _image_files(folder: Path, stem: str | None = None) -> list[Path]:
    pattern = "*" if stem is None else f"{glob.escape(stem)}.*"
    return sorted(p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def augment_pair(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    transform: LetterboxTransform | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly transform a letterboxed ``image`` (HxWxC) and its ``mask`` (HxW) alike.

    Brightness/contrast (x0.8-1.2, +-10% of full scale, on the image content only when the
    letterbox ``transform`` is given, so the padding keeps its fill as at run time), horizontal and vertical flips, rotations by
    multiples of 90 degrees (180 only for non-square inputs) and, half of the time, a scale of
    0.9-1.1 with a shift of up to 10% (new borders: image 0, mask background).
    """
    image, mask = image.copy(), mask.copy()
    if rng.random() < 0.5:
        image = _brightness_contrast(image, transform, rng)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    square = image.shape[0] == image.shape[1]
    k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
    image, mask = np.rot90(image, k), np.rot90(mask, k)
    if rng.random() < 0.5:
        image, mask = _scale_shift(np.ascontiguousarray(image), np.ascontiguousarray(mask), rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def _brightness_contrast(
    image: np.ndarray, transform: LetterboxTransform | None, rng: np.random.Generator
) -> np.ndarray:
    full = 65535.0 if image.dtype == np.uint16 else 255.0
    alpha, beta = rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1) * full
    top, left = transform.offset if transform else (0, 0)
    nh, nw = transform.new_hw if transform else image.shape[:2]
    content = image[top : top + nh, left : left + nw]
    content[...] = np.clip(content.astype(np.float32) * alpha + beta, 0, full).round().astype(image.dtype)
    return image


def _scale_shift(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = mask.shape
    s = rng.uniform(0.9, 1.1)
    tx, ty = rng.uniform(-0.1, 0.1, size=2) * (w, h)
    m = np.array([[s, 0, (1 - s) * w / 2 + tx], [0, s, (1 - s) * h / 2 + ty]], np.float64)
    channels = image.shape[2]
    warped = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if channels == 1:
        warped = warped[:, :, None]
    mask = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return warped, mask
