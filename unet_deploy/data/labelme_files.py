"""Reading one labelme JSON and the image it annotates (embedded or beside it), EXIF-oriented as labelme shows it."""
from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np

from ..errors import UnetDeployError
from ..fileio import IMAGE_SUFFIXES

_PIL_FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}
_EXIF_ORIENTATION = 0x0112


def read_labelme_json(json_path: str | Path) -> dict[str, Any]:
    """Parse a labelme JSON; raise ``UnetDeployError`` (one line) when it is broken or not labelme's."""
    path = Path(json_path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as e:
        raise UnetDeployError(f"{path}: cannot read file ({e.strerror}); check the path") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnetDeployError(f"{path}: corrupt JSON ({e}); re-save it in labelme or remove it") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise UnetDeployError(f"{path}: not a labelme file (no 'shapes' list); remove it from the folder")
    return data


def exif_orientation(raw: bytes) -> int:
    """Return the EXIF orientation (1..8) of encoded image bytes; 1 when there is none."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as img:
            return int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # no EXIF, or a format PIL cannot parse: nothing to rotate
        return 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip an array as EXIF ``orientation`` (1..8) says, like ``PIL.ImageOps.exif_transpose``."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return image if op is None else np.ascontiguousarray(op(image))


def _decode(raw: bytes, source: str) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED) if raw else None
    if image is None:  # a format OpenCV lacks (gif, ...): let PIL try
        from PIL import Image

        try:
            with Image.open(io.BytesIO(raw)) as img:
                image = np.array(img.convert("RGB"))[:, :, ::-1].copy()
        except Exception:
            raise UnetDeployError(f"{source}: not a readable image (corrupt or unsupported format)") from None
    return image


@dataclass
class LabelmeImage:
    """The image a labelme JSON belongs to: pixels as OpenCV reads them, EXIF-oriented.

    ``raw``/``suffix`` are the original encoded bytes and their extension, to copy the
    image into a dataset unchanged when no rotation was applied (``rotated`` is False).
    """

    image: np.ndarray
    raw: bytes
    suffix: str
    rotated: bool


def load_labelme_image(json_path: str | Path, data: dict[str, Any] | None = None) -> LabelmeImage:
    """Load the image of a labelme JSON: embedded ``imageData`` first, else ``imagePath``.

    ``imagePath`` is taken relative to the JSON (Windows separators work); when it is
    missing, an image with the JSON's stem beside it is used. Raises
    ``UnetDeployError`` naming the JSON when no image can be found or decoded.
    """
    json_path = Path(json_path)
    data = read_labelme_json(json_path) if data is None else data
    suffix = ".png"
    if data.get("imageData"):
        source = f"{json_path} (imageData)"
        try:
            raw = base64.b64decode(data["imageData"], validate=False)
        except (binascii.Error, ValueError, TypeError):
            raise UnetDeployError(f"{source}: imageData is not valid base64; re-save the file in labelme") from None
        from PIL import Image

        try:
            with Image.open(io.BytesIO(raw)) as img:
                suffix = _PIL_FORMAT_SUFFIX.get(img.format or "", ".png")
        except Exception:
            pass
    else:
        path = _find_image_file(json_path, data.get("imagePath"))
        source = str(path)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise UnetDeployError(f"{path}: cannot read the image of {json_path.name} ({e.strerror})") from None
        suffix = path.suffix.lower()
    image = _decode(raw, source)
    orientation = exif_orientation(raw)
    image = apply_orientation(image, orientation)
    return LabelmeImage(image=image, raw=raw, suffix=suffix, rotated=orientation not in (0, 1))


def read_image_oriented(path: str | Path) -> np.ndarray:
    """Read an image file as OpenCV does (BGR/gray/BGRA, 8/16 bit) with its EXIF orientation applied.

    These are the pixel coordinates labelme annotates in. Raises ``UnetDeployError`` naming the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UnetDeployError(f"{path}: cannot read file ({e.strerror}); check the path") from None
    return apply_orientation(_decode(raw, str(path)), exif_orientation(raw))


def _find_image_file(json_path: Path, image_path: Any) -> Path:
    candidates: list[Path] = []
    if isinstance(image_path, str) and image_path:
        rel = Path(PureWindowsPath(image_path).as_posix()) if "\\" in image_path else Path(image_path)
        candidates.append(rel if rel.is_absolute() else json_path.parent / rel)
        candidates.append(json_path.parent / rel.name)
    for c in candidates:
        if c.is_file() and c.resolve() != json_path.resolve():
            return c
    stem = json_path.stem
    for c in sorted(json_path.parent.glob(f"{glob_escape(stem)}.*")):
        if c.suffix.lower() in IMAGE_SUFFIXES and c.is_file():
            return c
    raise UnetDeployError(
        f"{json_path}: image '{image_path}' not found and no imageData embedded; "
        "put the image beside the JSON or save with image data in labelme"
    )


def glob_escape(text: str) -> str:
    """``text`` with the glob characters ``*?[]`` escaped, to glob for a literal file stem."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)
