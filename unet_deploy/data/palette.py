"""The VOC colour map and class-id mask files: palette PNGs written atomically, read back as ids.

A class mask is an HxW uint8 array whose pixels are class ids (0 = background, 255 =
ignore). It is stored as an 8-bit palette PNG with the PASCAL VOC colour map, as
labelme's converter and the VOC dataset do, so any image viewer shows it in colour
while every program reads the ids back unchanged.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..errors import UnetDeployError
from ..fileio import atomic_write_bytes
from ..postprocess import voc_palette  # the colour map is the core's (postprocess colours masks with it)

__all__ = ["encode_palette_png", "read_mask", "save_palette_png", "voc_palette"]


def encode_palette_png(mask: np.ndarray) -> bytes:
    """Return the bytes of a palette PNG holding the uint8 class-id ``mask`` (VOC colours)."""
    from PIL import Image

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a class mask must be 2-D (HxW), got shape {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError("class ids must lie in 0..255 to fit a palette PNG")
        mask = mask.astype(np.uint8)
    h, w = mask.shape
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(mask).tobytes())
    img.putpalette(voc_palette().tobytes())
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def save_palette_png(path: str | Path, mask: np.ndarray) -> Path:
    """Write the uint8 class-id ``mask`` to ``path`` as a VOC palette PNG, atomically."""
    return atomic_write_bytes(path, encode_palette_png(mask))


def read_mask(path: str | Path) -> np.ndarray:
    """Read a class-id mask PNG (palette or 8-bit gray) as an HxW uint8 array of ids.

    A palette PNG gives its indices (the class ids), whatever its colours. An RGB mask
    is accepted when every colour is a VOC colour and is mapped back to ids. Anything
    else raises ``UnetDeployError`` naming the file.
    """
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            arr = np.array(img)
    except (OSError, ValueError) as e:
        raise UnetDeployError(f"{path}: cannot read the mask ({e}); write it as a palette or gray PNG") from None
    if mode in ("P", "L"):
        return arr.astype(np.uint8, copy=False)
    if mode in ("I", "I;16", "I;16B", "I;16L") and arr.size and arr.min() >= 0 and arr.max() <= 255:
        return arr.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        return _rgb_to_ids(path, arr[:, :, :3])
    raise UnetDeployError(
        f"{path}: mask image mode {mode} holds no class ids; save masks as palette or 8-bit gray PNGs"
    )


def _rgb_to_ids(path: Path, rgb: np.ndarray) -> np.ndarray:
    pal = voc_palette().astype(np.int64)
    key = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut = {int(k): i for i, k in reversed(list(enumerate(key)))}
    pix = (rgb[:, :, 0].astype(np.int64) << 16) | (rgb[:, :, 1].astype(np.int64) << 8) | rgb[:, :, 2]
    values, inverse = np.unique(pix, return_inverse=True)
    ids = np.empty(len(values), dtype=np.uint8)
    for j, v in enumerate(values):
        if int(v) not in lut:
            raise UnetDeployError(
                f"{path}: RGB mask colour #{int(v):06x} is not a VOC class colour; "
                "save masks as palette PNGs (pixel = class id)"
            )
        ids[j] = lut[int(v)]
    return ids[inverse.reshape(pix.shape)]

