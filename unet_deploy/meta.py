"""ModelMeta: everything a model needs to be used correctly, as JSON that travels inside every artefact."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import UnetDeployError
from .fileio import atomic_write_text, quote

FORMAT = "unet-deploy/1"
# The UNet halves its input four times: H and W must be multiples of this. The model,
# the exporter, the runtime and the C++ consumer all read this one number.
DIVISOR = 16
# At 16 px the deepest feature map is 1x1 and reflect padding needs 2 pixels: 32 is the least.
MIN_SIZE = 2 * DIVISOR
# Largest input side: 8192x8192x3 float32 is 0.8 GB per image before the network's features;
# anything larger is a typo or a hostile file, not a model.
MAX_SIZE = 8192
# Masks are uint8 with 255 as the ignore value (training) and the runtime's class maps are
# uint8: class ids 0..254, so at most 255 classes.
MAX_CLASSES = 255
MAX_BASE_CHANNELS = 512
MIN_TILE_SCALE, MAX_TILE_SCALE = 1e-3, 4.0
PAD_MODES = ("top-left", "center", "rect")
COLORS = ("RGB", "BGR", "GRAY")
HEADS = ("softmax", "sigmoid")
UPSAMPLE_MODES = ("transpose", "bilinear")
DEFAULT_LETTERBOX = {"pad": "top-left", "fill": 0}
DEFAULT_ARCH = {"base_channels": 64, "upsample": "transpose", "in_channels": 3}
DEFAULT_OVERLAP = 0.25
# Tiles may overlap by at most this fraction: a stride of at least a tenth of a tile, so each pixel is
# predicted at most ~100 times (0.99 once meant a 1-pixel stride and millions of tiles).
MAX_OVERLAP = 0.9
# Estimated float32 values a UNet holds per input pixel and base channel at its peak: the skip
# connections of every level (1 + 2/4 + 4/16 + 8/64 = 1.875 c) plus the working maps of the top
# level (~4 c). A base-8 model at 4096x4096 thus needs ~3.2 GB (the red team saw 4 GB), at 8192 ~13 GB.
ACTIVATION_FLOATS = 6
MAX_MEMORY_ENV = "UNET_DEPLOY_MAX_MEMORY_MB"  # the budget of one network call; default: half the RAM
# Normalisation constants outside these bounds overflow float32 or make every input the same.
_NORM_RANGE = (1e-6, 1e6)

# Where ModelMeta travels inside each artefact: the TorchScript _extra_files entry, and the key
# of the ONNX metadata_props, the OpenVINO rt_info and the AOTI package metadata (one word for all three).
TORCHSCRIPT_EXTRA_FILE = "unet_deploy.json"
METADATA_KEY = "unet_deploy"
ONNX_METADATA_KEY = METADATA_KEY  # deprecated alias: the key serves OpenVINO and AOTI too


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: one line, escapes included."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int of more than 4300 digits, a self-nesting list
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _integer(value: Any, what: str) -> int:
    """``value`` as an int: ints and integral floats only (no bool, no truncation of 64.7)."""
    if isinstance(value, float):
        if not value.is_integer():
            hint = f"; use e.g. {round(value)}" if math.isfinite(value) else ""
            raise UnetDeployError(f"{what} {_short(value)} is not an integer{hint}")
        value = int(value)  # then bounded like any int below
    try:
        if isinstance(value, bool):
            raise TypeError
        n = int(value.__index__())  # int and numpy integers; not str, bool or arrays
    except (AttributeError, TypeError):
        raise UnetDeployError(f"{what} {_short(value)} is not an integer") from None
    if abs(n) > 2**62:
        raise UnetDeployError(f"{what} is an integer of {n.bit_length()} bits, far out of range")
    return n


def check_int(value: Any, what: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``: ints and integral floats only (not ``"abc"``, None, True
    or 2.7, which would be truncated), else the one-line error naming ``what``.

    Args:
        value: what the caller passed.
        what: how the error names it (``every``, ``--batch-size``).
        low, high: the bounds (None: unbounded).
    """
    n = _integer(value, what)
    if (low is not None and n < low) or (high is not None and n > high):
        bounds = f"at least {low}" if high is None else f"at most {high}" if low is None else f"between {low} and {high}"
        raise UnetDeployError(f"{what} {n} must be {bounds}")
    return n


def _number(value: Any, what: str, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a finite float in ``[low, high]`` (no bool, no string, no NaN)."""
    if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
        raise UnetDeployError(f"{what} {_short(value)} is not a number")
    try:
        x = float(value)
    except (OverflowError, TypeError, ValueError):
        raise UnetDeployError(f"{what} {_short(value)} is not a finite number") from None
    if not math.isfinite(x):
        raise UnetDeployError(f"{what} {_short(value)} is not a finite number")
    if (low is not None and x < low) or (high is not None and x > high):
        raise UnetDeployError(f"{what} {x!r} is outside [{low:g}, {high:g}]")
    return x


def _sequence(value: Any, what: str) -> list[Any]:
    """A list or tuple (not a string, not a dict) as a list."""
    if not isinstance(value, (list, tuple)):
        raise UnetDeployError(f"{what} {_short(value)} is not a list")
    return list(value)


def _mapping(value: Any, what: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """A dict with only the keys of ``defaults``, missing ones filled from it."""
    if not isinstance(value, dict):
        raise UnetDeployError(f"{what} {_short(value)} is not a JSON object")
    unknown = sorted(str(k) for k in value if k not in defaults)
    if unknown:
        raise UnetDeployError(f"{what} has unknown keys {_short(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **value}


def _choice(value: Any, what: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise UnetDeployError(f"{what} {_short(value)} must be one of {choices}")
    return value


def check_size(size: Any, what: str = "input size") -> tuple[int, int]:
    """Return ``size`` as ``(height, width)``, or raise if it is not two multiples of 16 in [32, 8192]."""
    if isinstance(size, (list, tuple)):
        if len(size) != 2:
            raise UnetDeployError(f"{what} {_short(size)} is not two integers (height width)")
        h, w = (_integer(v, what) for v in size)
    else:
        h = w = _integer(size, what)
    fix_h, fix_w = (min(MAX_SIZE, max(MIN_SIZE, round(v / DIVISOR) * DIVISOR)) for v in (h, w))
    if h < MIN_SIZE or w < MIN_SIZE or h % DIVISOR or w % DIVISOR:
        raise UnetDeployError(
            f"{what} {h}x{w} is not a multiple of {DIVISOR} (at least {MIN_SIZE}); use e.g. {fix_h}x{fix_w}"
        )
    if h > MAX_SIZE or w > MAX_SIZE:
        raise UnetDeployError(f"{what} {h}x{w} exceeds {MAX_SIZE} per side; use e.g. {fix_h}x{fix_w}")
    return h, w


def check_class_names(classes: Any, what: str = "classes") -> list[str]:
    """Return ``classes`` as a list of 1..255 distinct, non-empty, one-line, unpadded names, or raise."""
    names = _sequence(classes, what)
    if not 1 <= len(names) <= MAX_CLASSES:
        raise UnetDeployError(
            f"{what}: {len(names)} names, need 1 to {MAX_CLASSES} (class ids are uint8, 255 is the ignore value)"
        )
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise UnetDeployError(f"{what}[{i}] {_short(name)} is not a string")
        if not name or not name.isprintable() or name != name.strip():
            raise UnetDeployError(
                f"{what}[{i}] {_short(name)} must be non-empty, printable, without newlines or edge spaces"
            )
        if name in seen:
            raise UnetDeployError(f"{what}[{i}] {_short(name)} appears twice; class names must be distinct")
        seen.add(name)
    return names


def check_tiling(tiling: Any, what: str = "tiling") -> dict[str, float] | None:
    """``None`` (letterbox the whole image) or ``{"scale": 0.001 <= s <= 4, "overlap": 0 <= o < 1}``, or raise."""
    if tiling is None:
        return None
    d = _mapping(tiling, what, {"scale": None, "overlap": DEFAULT_OVERLAP})
    scale = _number(d["scale"], f"{what}.scale (1.0 = native pixels)", MIN_TILE_SCALE, MAX_TILE_SCALE)
    overlap = _number(d["overlap"], f"{what}.overlap (a fraction of a tile)", 0.0, MAX_OVERLAP)
    return {"scale": scale, "overlap": overlap}


def memory_budget() -> int:
    """Bytes one network call may take: ``UNET_DEPLOY_MAX_MEMORY_MB`` (0: no limit), else half the RAM."""
    text = os.environ.get(MAX_MEMORY_ENV, "").strip()
    if text:
        try:
            mb = int(text)
        except ValueError:
            raise UnetDeployError(f"{MAX_MEMORY_ENV}={text!r} is not a whole number of megabytes (0: no limit)") from None
        return mb * 2**20 if mb > 0 else 2**62
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): 8 GB
        return 8 * 2**30


def inference_bytes(meta: "ModelMeta", batch: int = 1, hw: tuple[int, int] | None = None) -> int:
    """Estimated peak bytes of one network call on ``batch`` inputs of ``hw`` (default: ``meta.input_size``)."""
    h, w = hw or meta.input_size
    c = meta.arch["base_channels"]
    return int(batch) * h * w * (meta.in_channels + meta.num_outputs + ACTIVATION_FLOATS * c) * 4


def max_batch(meta: "ModelMeta", hw: tuple[int, int] | None = None, source: str = "the model", need: int = 1) -> int:
    """The largest batch of ``hw`` inputs (default: ``meta.input_size``) within ``memory_budget``; the
    one-line error, before anything is allocated, when not even ``need`` of them fit."""
    one, budget = inference_bytes(meta, 1, hw), memory_budget()
    if need * one > budget:
        h, w = hw or meta.input_size
        what = f"a {h}x{w} input" if need == 1 else f"{need} inputs of {h}x{w}"
        raise UnetDeployError(
            f"{source}: {what} of this model (base {meta.arch['base_channels']} channels) needs about "
            f"{need * one / 2**30:.1f} GB, over the {budget / 2**30:.1f} GB allowed; use a smaller input size, or "
            f"raise {MAX_MEMORY_ENV} (megabytes, 0: no limit)"
        )
    return max(1, budget // one)


@dataclass
class ModelMeta:
    """What a model needs to be used correctly: classes, input size, letterbox and normalisation.

    ``input = (pixel / scale - mean) / std`` per channel, after the letterbox, in ``color`` order.
    Class 0 is the background. Every field is checked on construction (``UnetDeployError``
    naming the field); nothing is coerced except integral floats to ints.
    """

    classes: list[str]
    input_size: tuple[int, int] = (256, 256)
    letterbox: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_LETTERBOX))
    color: str = "RGB"
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    scale: float = 255.0
    head: str = "softmax"
    arch: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_ARCH))
    tiling: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    def __post_init__(self) -> None:
        self.validate()

    # -- checks ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Check and normalise every field; raise ``UnetDeployError`` naming the first one that is wrong."""
        if self.format != FORMAT:
            raise UnetDeployError(
                f"metadata format {_short(self.format)} is not supported (this is {FORMAT}); "
                "upgrade unet-deploy or re-export the model"
            )
        self.classes = check_class_names(self.classes)
        self.input_size = check_size(self.input_size)
        box = _mapping(self.letterbox, "letterbox", DEFAULT_LETTERBOX)
        fill = _number(box["fill"], "letterbox.fill", 0.0, 255.0)
        box_fill = int(fill) if fill.is_integer() else fill
        self.letterbox = {"pad": _choice(box["pad"], "letterbox.pad", PAD_MODES), "fill": box_fill}
        self.color = _choice(self.color, "color", COLORS)
        self.head = _choice(self.head, "head", HEADS)
        if self.head == "sigmoid" and len(self.classes) != 2:
            raise UnetDeployError(f"head sigmoid needs exactly 2 classes, not {len(self.classes)}; use softmax")
        arch = _mapping(self.arch, "arch", DEFAULT_ARCH)
        base = _integer(arch["base_channels"], "arch.base_channels")
        if not 1 <= base <= MAX_BASE_CHANNELS:
            raise UnetDeployError(f"arch.base_channels {base} is outside [1, {MAX_BASE_CHANNELS}]")
        channels = _integer(arch["in_channels"], "arch.in_channels")
        if channels not in (1, 3):
            raise UnetDeployError(f"arch.in_channels {channels} must be 1 (GRAY) or 3 (RGB/BGR)")
        upsample = _choice(arch["upsample"], "arch.upsample", UPSAMPLE_MODES)
        self.arch = {"base_channels": base, "upsample": upsample, "in_channels": channels}
        if (self.color == "GRAY") != (channels == 1):
            raise UnetDeployError(f"color {self.color} does not fit arch.in_channels={channels}")
        self.mean = self._constants(self.mean, "mean", -_NORM_RANGE[1])
        self.std = self._constants(self.std, "std", _NORM_RANGE[0])
        self.scale = _number(self.scale, "scale", *_NORM_RANGE)
        self.tiling = check_tiling(self.tiling)
        if not isinstance(self.extra, dict):
            raise UnetDeployError(f"extra {_short(self.extra)} is not a JSON object")
        try:  # every artefact carries it, and the C++ consumer parses strict JSON
            json.dumps(self.extra, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as e:
            raise UnetDeployError(f"extra is not plain JSON ({_short(str(e))})") from None

    def _constants(self, values: Any, what: str, low: float) -> list[float]:
        out = [_number(v, f"{what}[{i}]", low, _NORM_RANGE[1]) for i, v in enumerate(_sequence(values, what))]
        if len(out) != self.in_channels:
            raise UnetDeployError(f"{what} has {len(out)} values, the model has {self.in_channels} input channels")
        return out

    def check_num_outputs(self, n: int, source: str = "the weights") -> None:
        """Raise if ``n`` output channels of ``source`` disagree with the class list."""
        if n != self.num_outputs:
            raise UnetDeployError(
                f"{source} have {n} output channels but the metadata lists {self.num_classes} "
                f"classes {_short(self.classes)}; pass the matching class names"
            )

    # -- derived --------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_outputs(self) -> int:
        """Logit channels: one per class, or one for a two-class sigmoid head."""
        return 1 if self.head == "sigmoid" else self.num_classes

    @property
    def in_channels(self) -> int:
        return int(self.arch["in_channels"])

    @property
    def pad(self) -> str:
        return self.letterbox["pad"]

    # -- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        if not d["extra"]:
            del d["extra"]
        if d["tiling"] is None:  # absent means letterbox: old readers keep reading new files
            del d["tiling"]
        return {"format": d.pop("format"), **d}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "metadata") -> "ModelMeta":
        """Build from a dict; unknown keys are an error that names ``source``."""
        source = quote(source)
        if not isinstance(d, dict):
            raise UnetDeployError(f"{source}: metadata is not a JSON object")
        unknown = sorted(str(k) for k in d if k not in cls.__dataclass_fields__)
        if unknown:
            raise UnetDeployError(f"{source}: unknown metadata keys {_short(unknown)}; upgrade unet-deploy")
        if "classes" not in d:
            raise UnetDeployError(f"{source}: metadata has no 'classes'")
        try:
            return cls(**d)
        except UnetDeployError as e:
            raise UnetDeployError(f"{source}: {e.message}") from None

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "metadata") -> "ModelMeta":
        source = quote(source)
        try:
            d = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise UnetDeployError(f"{source}: metadata is not valid JSON ({_short(str(e), 120)})") from None
        except RecursionError:
            raise UnetDeployError(f"{source}: metadata JSON is nested too deeply") from None
        return cls.from_dict(d, source)

    def save(self, path: str | Path) -> Path:
        """Write the sidecar JSON atomically."""
        return atomic_write_text(path, self.to_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelMeta":
        path = Path(path)
        if not path.is_file():
            raise UnetDeployError(f"{quote(path)}: metadata file not found")
        return cls.from_json(path.read_bytes(), str(path))


# A model trained with the seed's square letterbox (top-left) is deployed with "rect": pad only to
# the next multiple of 16 (a 16:9 frame costs 56% of the square's FLOPs). Measured before it became
# the default (issue 17's bar: agreement >= 99.5%, mIoU drop <= 0.3): 99.98% of pixels and +0.25 mIoU
# on a model trained square on 16:9 frames (benchmarks/results/rect_letterbox.md), 99.97% and +0.57
# on the seed-size model (cpu_fast_path.md). Exports write it; a checkpoint runs it too, so that a
# checkpoint and its exports give the same masks.
RECT_BY_DEFAULT = True
TRAINED_LETTERBOX = "trained_letterbox"  # meta.extra key: the pad the model was trained with, when it differs


def deployed(meta: ModelMeta, pad: str | None = None) -> ModelMeta:
    """``meta`` as it is deployed: letterbox ``pad`` if given, else ``rect`` for a model trained with the
    square top-left letterbox (``RECT_BY_DEFAULT``), else as trained; ``extra["trained_letterbox"]``
    records the trained pad when the two differ (``letterbox_note`` says so)."""
    if pad is not None and pad not in PAD_MODES:
        raise UnetDeployError(f"--letterbox {pad!r} is not one of {'|'.join(PAD_MODES)}")
    trained = meta.extra.get(TRAINED_LETTERBOX, meta.pad)
    if pad is None:
        pad = "rect" if RECT_BY_DEFAULT and meta.pad == "top-left" else meta.pad
    extra = {k: v for k, v in meta.extra.items() if k != TRAINED_LETTERBOX}
    if pad != trained:
        extra[TRAINED_LETTERBOX] = trained
    return replace(meta, letterbox={**meta.letterbox, "pad": pad}, extra=extra)


def letterbox_note(meta: ModelMeta) -> str:
    """One line when the letterbox in use differs from the one the model was trained with, else ''."""
    trained = meta.extra.get(TRAINED_LETTERBOX)
    if not trained or trained == meta.pad:
        return ""
    why = " (measured: >= 99.97% of the square letterbox's pixels, benchmarks/results/rect_letterbox.md)" \
        if meta.pad == "rect" and trained == "top-left" else ""  # fmt: skip
    return f"letterbox {meta.pad}, trained with {trained}{why}; --letterbox {trained} runs it as trained"
