"""Small file helpers: atomic writes (never a half-written file) and image reading that names the file."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import UnetDeployError

_UMASK = os.umask(0)
os.umask(_UMASK)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_image(path: str | Path, flags: int | None = None) -> np.ndarray:
    """Read an image as OpenCV does (BGR/gray/BGRA, 8/16-bit), unicode paths included.

    Raises ``UnetDeployError`` naming the file when it is missing or not a readable image.
    """
    import cv2

    path = Path(path)
    if flags is None:
        flags = cv2.IMREAD_UNCHANGED
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise UnetDeployError(f"{path}: cannot read file ({e.strerror}); check the path") from None
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise UnetDeployError(f"{path}: not a readable image (corrupt or unsupported format)")
    return image


def write_image(path: str | Path, image: np.ndarray, params: list[int] | None = None) -> Path:
    """Write an image atomically with OpenCV; the format follows the suffix."""
    import cv2

    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", image, params or [])
    if not ok:
        raise UnetDeployError(f"{path}: OpenCV cannot encode this image type")
    return atomic_write_bytes(path, buf.tobytes())
