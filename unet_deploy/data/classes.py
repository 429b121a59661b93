"""Class names of a labelme project and of a dataset: labels.txt, --classes, class_names.txt, name -> id."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import UnetDeployError

IGNORE_LABEL = "__ignore__"
IGNORE_ID = 255
BACKGROUND = "_background_"
BACKGROUND_NAMES = (BACKGROUND, "background")
CLASS_NAMES_FILE = "class_names.txt"


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


def parse_classes(text: str | Sequence[str], source: str = "--classes") -> list[str]:
    """Turn ``"scratch,spot"`` (or a list of names) into class names with background first (added if absent)."""
    if isinstance(text, str):
        items = text.split(",")
    elif isinstance(text, (list, tuple)) and all(isinstance(n, str) for n in text):
        items = list(text)
    else:
        raise UnetDeployError(f"{source}: classes must be a comma-separated text or a list of names, "
                              f"not {type(text).__name__}")
    return _check_names([s.strip() for s in items if s.strip()], source)


def check_name(name: str, source: str) -> str:
    """Return ``name`` when it can be a class name (one printable line, no edge spaces), else raise."""
    if not name or not name.isprintable() or name != name.strip():
        raise UnetDeployError(f"{source}: label {name!r} has a line break, a control character or edge spaces; "
                              "rename it in labelme")
    return name


def _check_names(names: list[str], source: str) -> list[str]:
    for name in names:
        check_name(name, source)
    if not names or names[0] not in BACKGROUND_NAMES:
        names = [BACKGROUND] + [n for n in names if n not in BACKGROUND_NAMES]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UnetDeployError(f"{source}: class names repeat ({', '.join(map(repr, dupes))}); list each class once")
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
