"""ModelMeta: everything a model needs to be used correctly, as JSON that travels inside every artefact."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import UnetDeployError

FORMAT = "unet-deploy/1"
# The UNet halves its input four times: H and W must be multiples of this. The model,
# the exporter, the runtime and the C++ consumer all read this one number.
DIVISOR = 16
# At 16 px the deepest feature map is 1x1 and reflect padding needs 2 pixels: 32 is the least.
MIN_SIZE = 2 * DIVISOR
PAD_MODES = ("top-left", "center")
COLORS = ("RGB", "BGR", "GRAY")
HEADS = ("softmax", "sigmoid")
UPSAMPLE_MODES = ("transpose", "bilinear")

# Key of the metadata in each artefact: TorchScript _extra_files, ONNX metadata_props.
TORCHSCRIPT_EXTRA_FILE = "unet_deploy.json"
ONNX_METADATA_KEY = "unet_deploy"


def check_size(size: Any, what: str = "input size") -> tuple[int, int]:
    """Return ``size`` as ``(height, width)``, or raise if it is not two positive multiples of 16."""
    if isinstance(size, int):
        size = (size, size)
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise UnetDeployError(f"{what} {size!r} is not two integers (height width)") from None
    if h < MIN_SIZE or w < MIN_SIZE or h % DIVISOR or w % DIVISOR:
        fix_h, fix_w = (max(MIN_SIZE, round(v / DIVISOR) * DIVISOR) for v in (h, w))
        raise UnetDeployError(
            f"{what} {h}x{w} is not a multiple of {DIVISOR} (at least {MIN_SIZE}); use e.g. {fix_h}x{fix_w}"
        )
    return h, w


@dataclass
class ModelMeta:
    """What a model needs to be used correctly: classes, input size, letterbox and normalisation.

    ``input = (pixel / scale - mean) / std`` per channel, after the letterbox, in ``color`` order.
    Class 0 is the background.
    """

    classes: list[str]
    input_size: tuple[int, int] = (256, 256)
    letterbox: dict[str, Any] = field(default_factory=lambda: {"pad": "top-left", "fill": 0})
    color: str = "RGB"
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    scale: float = 255.0
    head: str = "softmax"
    arch: dict[str, Any] = field(
        default_factory=lambda: {"base_channels": 64, "upsample": "transpose", "in_channels": 3}
    )
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    def __post_init__(self) -> None:
        self.input_size = check_size(self.input_size)
        self.classes = [str(c) for c in self.classes]
        self.letterbox = {"pad": "top-left", "fill": 0, **dict(self.letterbox)}
        self.arch = {"base_channels": 64, "upsample": "transpose", "in_channels": 3, **dict(self.arch)}
        self.mean = [float(v) for v in self.mean]
        self.std = [float(v) for v in self.std]
        self.scale = float(self.scale)
        self.validate()

    # -- checks ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``UnetDeployError`` naming the first field that is wrong."""
        if self.format != FORMAT:
            raise UnetDeployError(
                f"metadata format {self.format!r} is not supported (this is {FORMAT}); "
                "upgrade unet-deploy or re-export the model"
            )
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise UnetDeployError(f"classes {self.classes!r} must be a non-empty list of distinct names")
        if self.letterbox["pad"] not in PAD_MODES:
            raise UnetDeployError(f"letterbox pad {self.letterbox['pad']!r} must be one of {PAD_MODES}")
        if self.color not in COLORS:
            raise UnetDeployError(f"color {self.color!r} must be one of {COLORS}")
        if self.head not in HEADS:
            raise UnetDeployError(f"head {self.head!r} must be one of {HEADS}")
        if self.arch["upsample"] not in UPSAMPLE_MODES:
            raise UnetDeployError(f"arch.upsample {self.arch['upsample']!r} must be one of {UPSAMPLE_MODES}")
        channels = self.in_channels
        if (self.color == "GRAY") != (channels == 1):
            raise UnetDeployError(f"color {self.color} does not fit in_channels={channels}")
        if len(self.mean) != channels or len(self.std) != channels or 0.0 in self.std:
            raise UnetDeployError(f"mean/std need {channels} values each (std non-zero)")
        if self.scale <= 0:
            raise UnetDeployError(f"scale {self.scale} must be positive")

    def check_num_outputs(self, n: int, source: str = "the weights") -> None:
        """Raise if ``n`` output channels of ``source`` disagree with the class list."""
        if n != self.num_outputs:
            raise UnetDeployError(
                f"{source} have {n} output channels but the metadata lists {self.num_classes} "
                f"classes {self.classes}; pass the matching class names"
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
        return {"format": d.pop("format"), **d}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "metadata") -> "ModelMeta":
        """Build from a dict; unknown keys are an error that names ``source``."""
        if not isinstance(d, dict):
            raise UnetDeployError(f"{source}: metadata is not a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise UnetDeployError(f"{source}: unknown metadata keys {unknown}; upgrade unet-deploy")
        if "classes" not in d:
            raise UnetDeployError(f"{source}: metadata has no 'classes'")
        try:
            return cls(**d)
        except UnetDeployError as e:
            raise UnetDeployError(f"{source}: {e.message}") from None

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "metadata") -> "ModelMeta":
        try:
            d = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise UnetDeployError(f"{source}: metadata is not valid JSON ({e})") from None
        return cls.from_dict(d, source)

    def save(self, path: str | Path) -> Path:
        """Write the sidecar JSON atomically."""
        from .fileio import atomic_write_text

        return atomic_write_text(path, self.to_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelMeta":
        path = Path(path)
        if not path.is_file():
            raise UnetDeployError(f"{path}: metadata file not found")
        return cls.from_json(path.read_bytes(), str(path))


def sidecar_path(model_path: str | Path) -> Path:
    """``dir/model.onnx`` -> ``dir/model.json`` (also strips ``.torchscript.pt``)."""
    p = Path(model_path)
    name = p.name
    for suffix in (".torchscript.pt", ".onnx", ".pt2", ".xml", ".pt", ".pth"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return p.with_name(name + ".json")
