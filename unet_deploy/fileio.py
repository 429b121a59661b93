"""Small file helpers: atomic writes that a crash cannot leave half-done, and the one image reader.

``read_image`` / ``decode_image`` are the one rule for reading pixels everywhere (runtime,
predict, datasets, labelme): OpenCV's decoding (BGR/gray/BGRA, 8/16 bit) with the EXIF
orientation applied as labelme applies it, and a pixel limit checked on the header before
anything is decoded.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import secrets
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np

from .errors import UnetDeployError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Pillow's own hard limit (2 * PIL.Image.MAX_IMAGE_PIXELS): a 30000x30000 PNG of 0.9 MB would
# otherwise take 3.6 GB to decode. Raise it with the environment variable, or set the attribute
# (None: no limit).
MAX_IMAGE_PIXELS_ENV = "UNET_DEPLOY_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
EXIF_ORIENTATION_TAG = 0x0112
# A file larger than this is read only after Pillow has found an image header in it (within the pixel
# limit): a 2 GB non-image named .png was once read whole before failing.
MAX_UNIDENTIFIED_BYTES = 64 * 2**20
# Temporaries of atomic writes and export staging folders: ".{name}.{pid}.{8 hex}.tmp|.export",
# so that remove_stale_temporaries can tell a dead process's leftovers from live work.
TEMPORARY_SUFFIXES = (".tmp", ".export")
# A temporary may end in its target's suffix too (".tmp.mp4": OpenCV picks the container by it).
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}(?:\.tmp(?:\.[A-Za-z0-9]{1,8})?|\.export)$")
NAME_MAX = 255  # bytes of one file name on Linux, macOS and Windows file systems


def _limit_from_env() -> int | None:
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    if text.lower() in ("0", "none"):
        return None
    try:
        return int(text.replace("_", ""))
    except ValueError:
        warnings.warn(f"{MAX_IMAGE_PIXELS_ENV}={text!r} is not an integer; using {DEFAULT_MAX_IMAGE_PIXELS}")
        return DEFAULT_MAX_IMAGE_PIXELS


MAX_IMAGE_PIXELS: int | None = _limit_from_env()


def quote(value: Any) -> str:
    """``value`` as text fit for a one-line message: as is when it is printable without edge
    spaces, else Python's quoted escape (newlines, control characters, edge spaces visible)."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    return text if text.isprintable() and text == text.strip() and text else repr(text)


# ---------------------------------------------------------------------------- atomic writes


def temporary_name(path: str | Path, suffix: str = ".tmp", keep_suffix: bool = False) -> Path:
    """A fresh hidden name beside ``path`` that ``remove_stale_temporaries`` recognises
    (``suffix``: ``.tmp`` for files, ``.export`` for staging folders; ``keep_suffix``: end in
    ``path``'s own suffix too, for writers that choose the format by it). A long ``path`` name is
    shortened in the temporary so that it stays within ``NAME_MAX`` bytes (a legal 240-character
    name once made every temporary fail)."""
    if suffix not in TEMPORARY_SUFFIXES:
        raise ValueError(f"suffix {suffix!r} must be one of {TEMPORARY_SUFFIXES}")
    path = Path(path)
    tail = f".{os.getpid()}.{secrets.token_hex(4)}{suffix}" + (path.suffix if keep_suffix else "")
    room = NAME_MAX - 1 - len(tail.encode())
    name = path.name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore") or "_"
    return path.with_name(f".{name}{tail}")


def fit_stem(stem: str, reserve: int = 10) -> str:
    """``stem`` cut (at a UTF-8 character boundary) so that ``stem`` plus ``reserve`` bytes of suffixes
    (``_123.jpeg``) stays a legal file name (``NAME_MAX``): output names made from long input names."""
    raw = stem.encode("utf-8", "surrogateescape")
    room = NAME_MAX - reserve
    return stem if len(raw) <= room else raw[:room].decode("utf-8", "ignore")


def check_not_inputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path], option: str) -> None:
    """Raise when a file about to be written is one being read (the same path, or a link to it):
    ``unet-predict q/masks --out q`` once wrote masks over the input images. ``option`` names the
    setting to change in the error."""
    seen: dict[object, Path] = {}
    for p in map(Path, inputs):
        with contextlib.suppress(OSError):
            st = p.stat()
            seen[(st.st_dev, st.st_ino)] = p
        seen[os.path.abspath(p)] = p
    for out in map(Path, outputs):
        key: object = os.path.abspath(out)
        if key not in seen:
            try:
                st = out.stat()
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
        if key in seen:
            raise UnetDeployError(f"{quote(out)}: would overwrite the input {quote(seen[key])}; choose another {option}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    On any exception the temporary file is removed and ``path`` is left as it was. The file is
    created with mode 0666 so that the kernel applies the process's umask (no umask change).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = temporary_name(path)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:  # 1 in 4 billion: draw again
            continue
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def file_digest(path: str | Path) -> str:
    """``"blake2b:<64 hex>"`` of a file's bytes (read in 1 MiB chunks): what ties the files of one artefact."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"blake2b:{h.hexdigest()}"


def atomic_write_new(path: str | Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` whole or not at all, never over an existing file (one created
    meanwhile included: the temporary is hard-linked in, which fails where a file exists).
    Returns False when ``path`` already existed."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some network/FAT file systems): check, then rename
            if path.exists():
                return False
            os.replace(tmp, path)
        return True


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill terminates: keep the files there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process (or unknowable): keep its files
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries (files or staging folders, ``temporary_name``'s) in ``folder`` whose writing
    process is dead, as a ``kill -9`` leaves them; return what was removed. Live ones are kept."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        found = _TEMPORARY.match(entry.name)
        if not found or _pid_alive(int(found["pid"])):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


# Temporary folders of this package in the system's temp folder: "unet-<kind>-<pid>-<random>".
_TEMPDIR = re.compile(r"^unet-[a-z0-9-]+?-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def private_tempdir(kind: str) -> tempfile.TemporaryDirectory:
    """A ``TemporaryDirectory`` named ``unet-<kind>-<pid>-...``, after removing those of dead processes
    (``remove_stale_tempdirs``): a kill -9 or a failed load no longer leaves them for good."""
    remove_stale_tempdirs()
    return tempfile.TemporaryDirectory(prefix=f"unet-{kind}-{os.getpid()}-")


def remove_stale_tempdirs(folder: str | Path | None = None) -> list[Path]:
    """Delete ``private_tempdir`` folders (in ``folder``, default the system's temp folder) of this user
    whose process is dead; return what was removed. Folders of live processes or other users, links
    and other names are kept."""
    removed = []
    try:
        entries = list(Path(folder or tempfile.gettempdir()).iterdir())
    except OSError:
        return removed
    for entry in entries:
        found = _TEMPDIR.match(entry.name)
        if not found or _pid_alive(int(found["pid"])) or entry.is_symlink() or not entry.is_dir():
            continue
        with contextlib.suppress(OSError):
            if os.name == "nt" or entry.stat().st_uid == os.getuid():  # ours by name and by owner
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


# ---------------------------------------------------------------------------- images


def _probe(data: bytes | BinaryIO) -> tuple[tuple[int, int] | None, int]:
    """``((width, height) or None, EXIF orientation 1..8)`` from the header alone (Pillow reads
    only the header on open). Unknown to Pillow: ``(None, 1)``; beyond Pillow's own hard limit,
    ``((pixels, 0), 1)``. A PNG's EXIF is read when its eXIf chunk precedes the pixels (where
    writers put it); finding a later one would decode everything."""
    from PIL import Image

    try:  # Pillow warns (once) above half its hard limit; filtering that is process-wide: not here
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            size = img.size
            if img.format == "PNG" and "exif" not in img.info:
                return size, 1
            orientation = img.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Image.DecompressionBombError as e:  # its message gives the pixel count, not the sides
        found = re.search(r"\((\d+) pixels\)", str(e))
        return (int(found[1]) if found else 2 * (Image.MAX_IMAGE_PIXELS or 0) + 1, 0), 1
    except Exception:  # a format or EXIF block Pillow cannot parse: OpenCV decides, nothing to rotate
        return None, 1
    return size, orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def probe_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of encoded image bytes from the header alone (``check_pixel_limit``'s input:
    ``(pixels, 0)`` beyond Pillow's own limit), or None when Pillow does not know the format."""
    return _probe(data)[0]


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


def check_pixel_limit(size: tuple[int, int] | None, source: str) -> None:
    """Raise if a ``(width, height)`` image exceeds ``MAX_IMAGE_PIXELS``, naming ``source`` and the fix.

    Height 0 stands for "``width`` pixels in all" (``_probe`` beyond Pillow's own limit).
    """
    limit = MAX_IMAGE_PIXELS
    if size is None or limit is None:
        return
    w, h = size
    pixels = w * h if h else w
    if pixels <= limit:
        return
    shown = f"{w}x{h} ({pixels:,} pixels)" if h else f"{pixels:,} pixels"
    raise UnetDeployError(
        f"{quote(source)}: image of {shown} exceeds the limit of {limit:,} pixels; raise it with "
        f"{MAX_IMAGE_PIXELS_ENV}={pixels} (0: no limit) or unet_deploy.fileio.MAX_IMAGE_PIXELS"
    )


def decode_image(data: bytes, source: str, flags: int | None = None) -> np.ndarray:
    """Decode encoded image bytes as OpenCV does (BGR/gray/BGRA, 8/16 bit), EXIF-oriented.

    The size is checked against ``MAX_IMAGE_PIXELS`` before decoding; formats OpenCV lacks
    (GIF, ...) are decoded by Pillow as BGR. Raises ``UnetDeployError`` naming ``source``.
    """
    import cv2

    size, orientation = _probe(data)
    check_pixel_limit(size, source)
    if flags is None:
        flags = cv2.IMREAD_UNCHANGED
    elif flags != cv2.IMREAD_UNCHANGED:
        flags |= cv2.IMREAD_IGNORE_ORIENTATION  # the orientation is applied below, once
    buf = np.frombuffer(data, np.uint8)
    image = cv2.imdecode(buf, flags) if buf.size else None
    if image is None and size is not None:
        image = _decode_with_pillow(data, flags)
    if image is None:
        raise UnetDeployError(f"{quote(source)}: not a readable image (corrupt or unsupported format)")
    return apply_orientation(image, orientation)


def _decode_with_pillow(data: bytes, flags: int) -> np.ndarray | None:
    import cv2
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            gray = flags != cv2.IMREAD_UNCHANGED and not flags & cv2.IMREAD_COLOR
            rgb = np.asarray(img.convert("L" if gray else "RGB"))
    except Exception:
        return None
    return rgb if rgb.ndim == 2 else np.ascontiguousarray(rgb[:, :, ::-1])


def read_image(path: str | Path, flags: int | None = None) -> np.ndarray:
    """Read an image file with ``decode_image`` (unicode paths included).

    Raises ``UnetDeployError`` naming the file when it is missing, too large or not a readable image.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_UNIDENTIFIED_BYTES:  # look at the header before reading gigabytes
                found = _probe(f)[0]
                if found is None:
                    raise UnetDeployError(f"{quote(path)}: {size / 2**20:,.0f} MB whose header is no image Pillow "
                                          "knows; not read. Pass an image file (PNG, JPEG, TIFF, BMP, WebP)")
                check_pixel_limit(found, str(path))
                f.seek(0)
            data = f.read()
    except OSError as e:
        raise UnetDeployError(f"{quote(path)}: cannot read file ({e.strerror}); check the path") from None
    return decode_image(data, str(path), flags)


def write_image(path: str | Path, image: np.ndarray, params: list[int] | None = None) -> Path:
    """Write an image atomically with OpenCV; the format follows the suffix."""
    import cv2

    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", image, params or [])
    if not ok:
        raise UnetDeployError(f"{quote(path)}: OpenCV cannot encode this image type")
    return atomic_write_bytes(path, buf.tobytes())
