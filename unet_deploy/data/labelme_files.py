"""Reading one labelme JSON and the image it annotates (embedded or beside it), EXIF-oriented as labelme shows it.

Pixels are decoded by ``unet_deploy.fileio.decode_image``: the one EXIF rule and pixel limit of
the project, so a dataset, ``Segmenter(path)`` and ``unet-predict`` see an image the same way.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np

from ..errors import UnetDeployError
from ..fileio import IMAGE_SUFFIXES, decode_image, quote, read_image

_PIL_FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


def read_labelme_json(json_path: str | Path) -> dict[str, Any]:
    """Parse a labelme JSON; raise ``UnetDeployError`` (one line) when it is broken or not labelme's."""
    path = Path(json_path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as e:
        raise UnetDeployError(f"{quote(path)}: cannot read file ({e.strerror}); check the path") from None
    except RecursionError:
        raise UnetDeployError(f"{quote(path)}: JSON nested too deeply to be labelme's; remove it") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, integers beyond Python's digit limit
        raise UnetDeployError(f"{quote(path)}: corrupt JSON ({quote(e)}); re-save it in labelme or remove it") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise UnetDeployError(f"{quote(path)}: not a labelme file (no 'shapes' list); remove it from the folder")
    return data


@dataclass
class LabelmeImage:
    """The image a labelme JSON belongs to: pixels as OpenCV reads them, EXIF-oriented.

    ``raw``/``suffix`` are the original encoded bytes and their extension, to copy the image
    into a dataset unchanged: its EXIF tag travels with it, and every reader applies it as here.
    """

    image: np.ndarray
    raw: bytes
    suffix: str


def load_labelme_image(json_path: str | Path, data: dict[str, Any] | None = None, root: str | Path | None = None,
                       allow_outside: bool = False) -> LabelmeImage:
    """Load the image of a labelme JSON: embedded ``imageData`` first, else ``imagePath``.

    ``imagePath`` is taken relative to the JSON as labelme takes it (Windows separators work);
    when it is missing, an image with the JSON's stem beside it is used. Raises
    ``UnetDeployError`` naming the JSON when no image can be found or decoded.

    Args:
        json_path: the labelme JSON.
        data: its parsed content (read here when None).
        root: the folder images must stay inside (the source folder; default: the JSON's folder).
            An ``imagePath`` that leaves it (``../``, absolute, a Windows drive or share) is not
            read; the image of that name beside the JSON still is.
        allow_outside: read an ``imagePath`` outside ``root`` too (``--allow-outside-images``).
    """
    json_path = Path(json_path)
    data = read_labelme_json(json_path) if data is None else data
    suffix = ".png"
    if data.get("imageData"):
        source = f"{quote(json_path)} (imageData)"
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
        inside = None if allow_outside else Path(root if root is not None else json_path.parent)
        path = _find_image_file(json_path, data.get("imagePath"), inside)
        source = str(path)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise UnetDeployError(f"{quote(path)}: cannot read the image of {quote(json_path.name)} ({e.strerror})") from None
        suffix = path.suffix.lower()
    image = decode_image(raw, source)
    _check_declared_size(json_path, data, image.shape[:2])
    return LabelmeImage(image=image, raw=raw, suffix=suffix)


def _check_declared_size(json_path: Path, data: dict[str, Any], hw: tuple[int, ...]) -> None:
    """Refuse an annotation whose imageHeight/imageWidth (when given) is not the image's size."""
    declared = (data.get("imageHeight"), data.get("imageWidth"))
    if declared == (None, None):
        return
    if declared != tuple(hw) or any(isinstance(v, bool) for v in declared):
        raise UnetDeployError(
            f"{quote(json_path)}: declares imageHeight x imageWidth {quote(declared[0])} x {quote(declared[1])} "
            f"but its image is {hw[0]} x {hw[1]}; the annotation is for another image: fix imagePath"
        )


def read_image_oriented(path: str | Path) -> np.ndarray:
    """Read an image file as OpenCV does (BGR/gray/BGRA, 8/16 bit) with its EXIF orientation applied.

    These are the pixel coordinates labelme annotates in. Raises ``UnetDeployError`` naming the file.
    """
    return read_image(path)


def _inside(path: Path, root: Path) -> bool:
    """``path`` lies under ``root`` once ``..`` is resolved by name (links are not followed: a link
    someone put inside the folder is theirs)."""
    real, top = os.path.abspath(path), os.path.abspath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def _find_image_file(json_path: Path, image_path: Any, root: Path | None = None) -> Path:
    """The image file of a JSON; with ``root``, an ``imagePath`` outside it is refused."""
    candidates: list[Path] = []
    outside = False
    if isinstance(image_path, str) and image_path:
        windows = PureWindowsPath(image_path)
        rel = Path(windows.as_posix()) if "\\" in image_path or windows.drive else Path(image_path)
        named = rel if rel.is_absolute() else json_path.parent / rel
        outside = root is not None and (bool(windows.drive) or not _inside(named, root))
        candidates += [] if outside else [named]
        if rel.name not in ("", ".", ".."):
            candidates.append(json_path.parent / rel.name)
    for c in candidates:
        try:
            if c.is_file() and c.resolve() != json_path.resolve():
                return c
        except OSError as e:  # a name too long, a loop of links: not this image
            raise UnetDeployError(f"{quote(json_path)}: imagePath is unusable ({e.strerror}); fix it in labelme") from None
    stem = json_path.stem
    for c in sorted(json_path.parent.glob(f"{glob_escape(stem)}.*")):
        if c.stem == stem and c.suffix.lower() in IMAGE_SUFFIXES and c.is_file():  # part.png, not part.1.png
            return c
    if outside:
        raise UnetDeployError(
            f"{quote(json_path)}: imagePath {quote(image_path)} leaves {quote(root)} and is not read; "
            "put the image inside the folder, or pass --allow-outside-images (allow_outside=True) if you trust the file"
        )
    raise UnetDeployError(
        f"{quote(json_path)}: image {quote(image_path)} not found and no imageData embedded; "
        "put the image beside the JSON or save with image data in labelme"
    )


def glob_escape(text: str) -> str:
    """``text`` with the glob characters ``*?[]`` escaped, to glob for a literal file stem."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)
