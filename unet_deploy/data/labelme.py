"""labelme JSON to class-id masks and a VOC-style dataset, rasterized pixel for pixel as labelme draws.

labelme (v3 to v5+) stores shapes as point lists; its own converter draws them with
PIL.ImageDraw. We do the same, without depending on labelme:

* polygon (and oriented_rectangle): ``polygon`` filled *and* outlined;
* rectangle: ``rectangle`` through the two corners, filled and outlined;
* circle: an ellipse of radius |centre - rim point| around the centre;
* line, linestrip: a line 10 px wide (linestrip joints rounded, as labelme 5.x+);
* point: a disc of radius 5;
* mask: the shape's base64 PNG pasted at its rounded top-left corner.

Later shapes paint over earlier ones; shapes are clipped to the image as PIL clips
them. Label ``__ignore__`` is written as 255. The image comes from ``imageData`` when
embedded, else from ``imagePath`` relative to the JSON (Windows separators allowed),
with its EXIF orientation applied as labelme applies it.

Python use::

    names = read_labels_file("labels.txt")            # ['_background_', 'car', ...]
    image, mask = labelme_to_mask("a.json", class_ids(names))
    summary = convert_folder("annotated/", "dataset/", labels_file="labels.txt")
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any, Iterable, Sequence

import click
import numpy as np

from ..errors import UnetDeployError
from ..fileio import IMAGE_SUFFIXES, atomic_write_bytes, atomic_write_text, write_image
from .palette import save_palette_png

IGNORE_LABEL = "__ignore__"
IGNORE_ID = 255
BACKGROUND = "_background_"
BACKGROUND_NAMES = (BACKGROUND, "background")
LINE_WIDTH = 10
POINT_RADIUS = 5
SHAPE_TYPES = ("polygon", "rectangle", "circle", "line", "linestrip", "point", "mask", "oriented_rectangle")
CLASS_NAMES_FILE = "class_names.txt"

_PIL_FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}
_EXIF_ORIENTATION = 0x0112


# ---------------------------------------------------------------- class names


def read_labels_file(path: str | Path) -> list[str]:
    """Read a labelme ``labels.txt`` and return the class names in id order, background first.

    labelme's convention: ``__ignore__`` first (optional here), then ``_background_``
    (``background`` is accepted too), then the classes; class id = line index minus 1.
    When the background line is missing, background is added as id 0. Blank lines
    are skipped. Raises ``UnetDeployError`` on duplicates or more than 255 classes.
    """
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UnetDeployError(f"{path}: cannot read the labels file ({e}); pass a UTF-8 text file") from None
    names = [ln for ln in lines if ln]
    if names and names[0] == IGNORE_LABEL:
        names = names[1:]
    if IGNORE_LABEL in names:
        raise UnetDeployError(f"{path}: '{IGNORE_LABEL}' must be the first line if present; move it to the top")
    return _check_names(names, str(path))


def parse_classes(text: str | Sequence[str]) -> list[str]:
    """Turn ``"scratch,spot"`` (or a list) into class names with background first (added if absent)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return _check_names([s.strip() for s in items if s.strip()], "--classes")


def _check_names(names: list[str], source: str) -> list[str]:
    if not names or names[0] not in BACKGROUND_NAMES:
        names = [BACKGROUND] + [n for n in names if n not in BACKGROUND_NAMES]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UnetDeployError(f"{source}: class names repeat ({', '.join(dupes)}); list each class once")
    if len(names) > IGNORE_ID:
        raise UnetDeployError(f"{source}: {len(names)} classes do not fit 8-bit masks (max 255); merge classes")
    if len(names) < 2:
        raise UnetDeployError(f"{source}: no classes besides background; list at least one class")
    return names


def class_ids(names: Sequence[str]) -> dict[str, int]:
    """Map class names (background first) to ids; ``__ignore__`` maps to 255 and the
    background may be written either ``_background_`` or ``background`` in JSONs."""
    ids = {name: i for i, name in enumerate(names)}
    for bg in BACKGROUND_NAMES:
        ids.setdefault(bg, 0)
    ids[IGNORE_LABEL] = IGNORE_ID
    return ids


def discover_labels(json_paths: Iterable[str | Path]) -> list[str]:
    """Return background plus the sorted labels used in ``json_paths`` (unreadable files skipped)."""
    labels: set[str] = set()
    for p in json_paths:
        try:
            data = read_labelme_json(p)
        except UnetDeployError:
            continue
        labels.update(_label(s) for s in data["shapes"] if isinstance(s, dict))
    labels -= {IGNORE_LABEL, *BACKGROUND_NAMES, ""}
    return [BACKGROUND] + sorted(labels)


def read_class_names(dataset_root: str | Path) -> list[str]:
    """Read ``dataset_root/class_names.txt`` (one name per line, class-id order, background first)."""
    path = Path(dataset_root) / CLASS_NAMES_FILE
    if not path.is_file():
        raise UnetDeployError(
            f"{path}: missing; make the dataset with `unet-deploy labelme SRC {dataset_root}` first"
        )
    names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(names) < 2:
        raise UnetDeployError(f"{path}: needs background and at least one class, one per line")
    return names


# ---------------------------------------------------------------- one JSON


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
    for c in sorted(json_path.parent.glob(f"{_glob_escape(stem)}.*")):
        if c.suffix.lower() in IMAGE_SUFFIXES and c.is_file():
            return c
    raise UnetDeployError(
        f"{json_path}: image '{image_path}' not found and no imageData embedded; "
        "put the image beside the JSON or save with image data in labelme"
    )


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)


def _points(shape: dict[str, Any], where: str) -> list[tuple[float, float]]:
    pts = shape.get("points")
    try:
        xy = [(float(p[0]), float(p[1])) for p in pts]
    except (TypeError, ValueError, IndexError, KeyError):
        raise UnetDeployError(f"{where}: 'points' is not a list of [x, y] numbers; fix the shape in labelme") from None
    if not all(math.isfinite(v) for p in xy for v in p):
        raise UnetDeployError(f"{where}: a point is NaN or infinite; fix the shape in labelme")
    return xy


_MIN_POINTS = {"circle": 2, "rectangle": 2, "line": 2, "linestrip": 2, "point": 1, "mask": 2,
               "polygon": 3, "oriented_rectangle": 3}  # fmt: skip


def draw_shape(canvas: Any, shape: dict[str, Any], value: int, where: str = "shape") -> None:
    """Paint one labelme ``shape`` with ``value`` onto the PIL ``canvas`` (mode 'L'), as labelme draws it."""
    from PIL import ImageDraw

    shape_type = shape.get("shape_type") or "polygon"
    if shape_type not in SHAPE_TYPES:
        raise UnetDeployError(
            f"{where}: shape_type '{shape_type}' is unknown; use one of {', '.join(SHAPE_TYPES)}"
        )
    xy = _points(shape, where)
    need = _MIN_POINTS[shape_type]
    if len(xy) < need:
        raise UnetDeployError(f"{where}: a {shape_type} needs at least {need} points, got {len(xy)}; fix it in labelme")
    if shape_type == "mask":
        _paste_mask(canvas, shape, xy, value, where)
        return
    draw = ImageDraw.Draw(canvas)
    if shape_type == "circle":
        (cx, cy), (px, py) = xy[:2]
        r = math.hypot(cx - px, cy - py)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value, outline=value)
    elif shape_type == "rectangle":
        (x0, y0), (x1, y1) = xy[:2]
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=value, outline=value)
    elif shape_type == "line":
        draw.line(xy[:2], fill=value, width=LINE_WIDTH)
    elif shape_type == "linestrip":
        draw.line(xy, fill=value, width=LINE_WIDTH, joint="curve")
    elif shape_type == "point":
        cx, cy = xy[0]
        r = POINT_RADIUS
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value, outline=value)
    else:  # polygon, oriented_rectangle
        draw.polygon(xy, fill=value, outline=value)


def _paste_mask(canvas: Any, shape: dict[str, Any], xy: list[tuple[float, float]], value: int, where: str) -> None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(base64.b64decode(shape.get("mask") or ""))) as img:
            patch = np.array(img)
    except Exception:
        raise UnetDeployError(f"{where}: the mask shape has no readable base64 PNG in 'mask'; redraw it") from None
    if patch.ndim == 3:
        patch = patch[:, :, :3].any(axis=2) if patch.shape[2] >= 3 else patch[:, :, 0]
    patch = patch.astype(bool)
    x0, y0 = (int(round(v)) for v in xy[0])
    w, h = canvas.size
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + patch.shape[0], h), min(x0 + patch.shape[1], w)
    if ys >= ye or xs >= xe:
        return
    sub = patch[ys - y0 : ye - y0, xs - x0 : xe - x0]
    region = np.array(canvas.crop((xs, ys, xe, ye)))
    region[sub] = value
    canvas.paste(Image.fromarray(region), (xs, ys))


def shapes_to_mask(
    shapes: Sequence[dict[str, Any]],
    size_hw: tuple[int, int],
    class_ids: dict[str, int],
    skip_unknown: bool = False,
    source: str = "labelme",
) -> tuple[np.ndarray, int]:
    """Rasterize labelme ``shapes`` into an HxW uint8 class-id mask; return it and the number skipped.

    Shapes are drawn in order, later over earlier. A label missing from ``class_ids``
    raises ``UnetDeployError`` naming ``source`` and every unknown label, unless
    ``skip_unknown`` (then those shapes are left out and counted).
    """
    from PIL import Image

    if any(not isinstance(s, dict) for s in shapes):
        raise UnetDeployError(f"{source}: a shape is not a JSON object; re-save the file in labelme")
    unknown = sorted({_label(s) for s in shapes if _label(s) not in class_ids})
    if unknown and not skip_unknown:
        raise UnetDeployError(
            f"{source}: unknown label{'s' if len(unknown) > 1 else ''} {', '.join(repr(u) for u in unknown)} "
            "(not in the class list); add to --labels/--classes or pass --skip-unknown"
        )
    h, w = size_hw
    canvas = Image.new("L", (w, h), 0)
    skipped = 0
    for i, shape in enumerate(shapes):
        label = _label(shape)
        if label not in class_ids:
            skipped += 1
            continue
        draw_shape(canvas, shape, class_ids[label], where=f"{source}: shape {i} ({label!r})")
    return np.array(canvas, dtype=np.uint8), skipped


def _label(shape: dict[str, Any]) -> str:
    label = shape.get("label")
    return label if isinstance(label, str) else str(label)


def shape_to_mask(shape: dict[str, Any], size_hw: tuple[int, int]) -> np.ndarray:
    """Return the HxW boolean mask of one labelme ``shape`` (what labelme's ``shape_to_mask`` gives)."""
    from PIL import Image

    canvas = Image.new("L", (size_hw[1], size_hw[0]), 0)
    draw_shape(canvas, shape, 1)
    return np.array(canvas, dtype=bool)


def labelme_to_mask(
    json_path: str | Path, class_ids: dict[str, int], skip_unknown: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Read a labelme JSON and return ``(image, mask)``.

    ``image`` is the annotated image as OpenCV reads it (BGR, gray or BGRA; 8 or 16
    bit), EXIF-oriented. ``mask`` is an HxW uint8 array of class ids from
    ``class_ids`` (see ``class_ids()``), 255 under ``__ignore__``. Raises
    ``UnetDeployError`` (one line naming the file) for broken files and unknown labels.
    """
    image, mask, _, _ = _convert_one(Path(json_path), class_ids, skip_unknown)
    return image.image, mask


def _convert_one(
    json_path: Path, ids: dict[str, int], skip_unknown: bool
) -> tuple[LabelmeImage, np.ndarray, int, dict[str, Any]]:
    data = read_labelme_json(json_path)
    loaded = load_labelme_image(json_path, data)
    mask, skipped = shapes_to_mask(data["shapes"], loaded.image.shape[:2], ids, skip_unknown, str(json_path))
    return loaded, mask, skipped, data


# ---------------------------------------------------------------- a folder


@dataclass
class ConvertSummary:
    """What ``convert_folder`` did: written stems, failures (file, one-line reason), class names."""

    out: Path
    class_names: list[str]
    labels_source: str
    converted: list[str] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    not_labelme: list[Path] = field(default_factory=list)
    skipped_shapes: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


def find_json_files(src: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """All ``*.json`` under ``src`` (or ``src`` itself), sorted, leaving out anything under ``exclude``."""
    src = Path(src)
    if src.is_file():
        return [src]
    ex = Path(exclude).resolve() if exclude is not None else None
    found = []
    for p in sorted(src.rglob("*")):
        if p.suffix.lower() != ".json" or not p.is_file():
            continue
        if ex is not None and (p.resolve() == ex or ex in p.resolve().parents):
            continue
        found.append(p)
    return found


def unique_stems(src: Path, paths: list[Path]) -> dict[Path, str]:
    """Map each path to a unique output stem: its sub-path below ``src`` joined with '_'.

    ``a/b c/x.json`` becomes ``a_b c_x``; on a clash (case-insensitive) ``_2``, ``_3``... is added.
    """
    out: dict[Path, str] = {}
    used: set[str] = set()
    for p in paths:
        rel = p.relative_to(src) if src.is_dir() else Path(p.name)
        stem = "_".join(rel.with_suffix("").parts)
        name, n = stem, 1
        while name.lower() in used:
            n += 1
            name = f"{stem}_{n}"
        used.add(name.lower())
        out[p] = name
    return out


def convert_folder(
    src: str | Path,
    out: str | Path,
    classes: Sequence[str] | str | None = None,
    labels_file: str | Path | None = None,
    viz: bool = False,
    skip_unknown: bool = False,
    progress: bool = True,
) -> ConvertSummary:
    """Convert every labelme JSON under ``src`` into a VOC-style dataset in ``out``.

    Writes ``out/JPEGImages/<stem>.<ext>`` (the image, copied unchanged unless EXIF
    rotated it), ``out/SegmentationClass/<stem>.png`` (palette PNG, pixel = class id),
    ``out/class_names.txt`` and, with ``viz``, ``out/SegmentationClassVisualization/<stem>.jpg``.
    Classes come from ``labels_file`` (labelme's labels.txt), else ``classes``, else
    ``src/labels.txt`` when present, else every label found (sorted). Nested files get
    stems joined from their sub-path with '_'. A broken file is recorded in
    ``summary.failed`` and the others are still converted.
    """
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    if not src.exists():
        raise UnetDeployError(f"{src}: no such file or folder; pass the folder labelme saved into")
    if labels_file is not None and classes is not None:
        raise UnetDeployError("--labels and --classes both given; pass only one")
    jsons = find_json_files(src, exclude=out)
    if not jsons:
        raise UnetDeployError(f"{src}: no labelme .json files found; pass the folder labelme saved into")
    root = src if src.is_dir() else src.parent
    if labels_file is not None:
        names, how = read_labels_file(labels_file), str(labels_file)
    elif classes is not None:
        names, how = parse_classes(classes), "--classes"
    elif (root / "labels.txt").is_file():
        names, how = read_labels_file(root / "labels.txt"), str(root / "labels.txt")
    else:
        names, how = discover_labels(jsons), "labels found in the JSON files"
    _check_existing(out, names)
    atomic_write_text(out / CLASS_NAMES_FILE, "\n".join(names) + "\n")

    ids = class_ids(names)
    summary = ConvertSummary(out=out, class_names=names, labels_source=how)
    stems = unique_stems(src, jsons)
    for path in tqdm(jsons, desc="labelme", unit="file", disable=not progress, dynamic_ncols=True):
        try:
            loaded, mask, skipped, _ = _convert_one(path, ids, skip_unknown)
        except UnetDeployError as e:
            if "not a labelme file" in e.message:
                summary.not_labelme.append(path)
            else:
                summary.failed.append((path, e.message))
            continue
        stem = stems[path]
        _write_image(out / "JPEGImages", stem, loaded)
        save_palette_png(out / "SegmentationClass" / f"{stem}.png", mask)
        if viz:
            write_image(out / "SegmentationClassVisualization" / f"{stem}.jpg", _viz(loaded.image, mask))
        summary.converted.append(stem)
        summary.skipped_shapes += skipped
    return summary


def _check_existing(out: Path, names: list[str]) -> None:
    old = out / CLASS_NAMES_FILE
    if old.is_file():
        prev = [ln.strip() for ln in old.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if prev != names:
            shown = ", ".join(prev[:6]) + (", ..." if len(prev) > 6 else "")
            raise UnetDeployError(
                f"{old}: this dataset has other classes ({shown}); choose a new OUT folder or delete it"
            )


def _write_image(folder: Path, stem: str, loaded: LabelmeImage) -> Path:
    suffix = loaded.suffix if loaded.suffix in IMAGE_SUFFIXES else ".png"
    target = folder / f"{stem}{suffix}"
    for old in folder.glob(f"{_glob_escape(stem)}.*"):  # a rerun with another format: keep one image per stem
        if old.suffix.lower() in IMAGE_SUFFIXES and old != target:
            old.unlink()
    if loaded.rotated or suffix != loaded.suffix:
        return write_image(target, loaded.image)
    return atomic_write_bytes(target, loaded.raw)


def _viz(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from ..postprocess import overlay

    return overlay(image, mask, regions=[], alpha=0.5)


# ---------------------------------------------------------------- command


@click.command("labelme")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="labelme labels.txt: __ignore__, _background_, then the classes (id = line - 1).")
@click.option("--classes", help="Comma-separated class names; background is id 0 and implicit.")
@click.option("--viz", is_flag=True, help="Also write SegmentationClassVisualization/<stem>.jpg overlays.")
@click.option("--skip-unknown", is_flag=True, help="Leave out shapes whose label is not a class (default: error).")
def command(src: Path, out: Path, labels_file: Path | None, classes: str | None, viz: bool,
            skip_unknown: bool) -> None:
    """Convert a labelme folder (SRC) into a VOC-style dataset (OUT).

    OUT gets JPEGImages/, SegmentationClass/ (palette PNGs, pixel = class id, 255 =
    __ignore__) and class_names.txt. Without --labels or --classes, SRC/labels.txt
    is used if present, else every label found (sorted). Broken files are reported
    one per line and skipped; the exit code is then 1.

    \b
    Examples:
      unet-deploy labelme annotated/ dataset/ --labels annotated/labels.txt
      unet-deploy labelme annotated/ dataset/ --classes scratch,spot,dent --viz
    """
    summary = convert_folder(src, out, classes=classes, labels_file=labels_file, viz=viz,
                             skip_unknown=skip_unknown)
    for _, message in summary.failed:
        click.echo(f"error: {message}", err=True)
    for path in summary.not_labelme:
        click.echo(f"skipped: {path} is not a labelme file", err=True)
    extra = f", {summary.skipped_shapes} unknown-label shapes left out" if summary.skipped_shapes else ""
    click.echo(
        f"{len(summary.converted)} converted, {len(summary.failed)} failed{extra}; "
        f"{len(summary.class_names)} classes from {summary.labels_source} -> {out}"
    )
    if summary.failed:
        raise SystemExit(1)
