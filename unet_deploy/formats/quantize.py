"""int8 for every format that has it (OpenVINO IR, ONNX QDQ): the recipe, the target ISA, the calibration inputs.

One path for both formats: ``nncf.quantize`` on the format's own graph (``openvino.Model`` or
``onnx.ModelProto``), calibrated on a few dozen training images letterboxed exactly as at run
time (``preprocess``). The recipe (``Int8Recipe``) is what measured best on this UNet
(``benchmarks/results/cpu_fast_path.md``): symmetric activations (``performance`` preset), the
first convolution kept in fp32 (its 3 input channels are not one-signed and carry the whole
image), statistics from 32 images. ``target_isa`` decides the overflow fix: CPUs without VNNI
multiply int8 pairs with ``VPMADDUBSW``, whose 16-bit sums saturate, so an IR for ``avx2``
gets 7-bit weights in every layer (NNCF ``OverflowFix.ENABLE``); for VNNI/AMX only the first
layer does (NNCF's default). Which ISA an artefact was calibrated for is recorded in
``meta.extra["int8"]``; the runtime warns when it runs on a CPU that saturates.

A format describes its graph to the exporter as an ``Int8Graph`` (how to save, run and count
it); calibrating, gating and the accuracy-control fallback are ``unet_deploy.precision_gate``'s,
run by the exporter: ``formats`` imports neither the gate nor a runtime backend.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UnetDeployError
from ..meta import ModelMeta

CALIB_COUNT = 32  # "a few dozen" training images; 96 measured no better on this UNet
CALIB_TILES = 128  # a tiled model's calibration tiles in all: 128 tiles of 128x128 hold the pixels of 32 256x256 images
VAL_COUNT = 32
CONTROL_COUNT = 8  # calibration images the accuracy-control fallback scores candidates on
ISAS = ("auto", "vnni", "avx2")  # --int8-isa: the CPU kind the int8 artefact is for


@dataclass(frozen=True)
class Int8Recipe:
    """How int8 is calibrated; the defaults are the measured winner (``cpu_fast_path.md``)."""

    preset: str = "performance"  # or "mixed" (asymmetric activations)
    keep_fp32: tuple[str, ...] = ("first_conv",)  # "first_conv", "last_conv": layers left in fp32
    fast_bias_correction: bool = True
    overflow_fix: str | None = None  # None: from the target ISA; else "enable" | "first_layer_only" | "disable"
    accuracy_control: bool = True  # fall back to nncf.quantize_with_accuracy_control when the gate fails

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class Int8Graph:
    """What a format hands to ``quantize_gated``: its fp32 graph and how to save, name and run one."""

    model: Any  # openvino.Model | onnx.ModelProto
    convs: list[str]  # convolution node names in graph order (NNCF names)
    save: Callable[[Any, ModelMeta], None]  # write the staged artefact with this metadata
    predictor: Callable[[Any], Callable[[np.ndarray], np.ndarray]]  # NNCF's inference object -> Predict
    feed: Callable[[np.ndarray], Any] = lambda x: x  # one calibration input as NNCF's engine takes it
    quantizers: Callable[[Any], int] = lambda m: -1  # quantize nodes in a graph (FakeQuantize, QuantizeLinear)
    # The first pass, (model, inputs, recipe, isa) -> quantized model, when not NNCF's PTQ (ONNX: ORT's quantize_static).
    first_pass: Callable[[Any, list[Any], "Int8Recipe", str], Any] | None = None
    quantizer: str = "nncf.quantize"


def target_isa(asked: str | None) -> str:
    """``"vnni"`` (VNNI or AMX: no saturation) or ``"avx2"`` for ``--int8-isa`` (``auto``: this CPU)."""
    from .. import cpu

    isa = (asked or "auto").strip().lower()
    if isa not in ISAS:
        raise UnetDeployError(f"--int8-isa {asked!r} is not one of {'|'.join(ISAS)}")
    if isa == "auto":
        return "avx2" if cpu.int8_isa() == "avx2" else "vnni"
    return isa


def overflow_fix(recipe: Int8Recipe, isa: str) -> str:
    """NNCF's overflow fix for ``isa``: 7-bit weights everywhere where int8 products saturate."""
    return recipe.overflow_fix or ("enable" if isa == "avx2" else "first_layer_only")


def calibration_inputs(paths: list[Path], meta: ModelMeta) -> list[np.ndarray]:
    """Float32 ``(1, C, H, W)`` inputs made exactly as at run time: each image letterboxed, or for a model
    with ``meta.tiling`` (it only ever sees tiles) its tiles, at most ``CALIB_TILES`` in all, spread evenly."""
    from ..fileio import read_image
    from ..preprocess import check_varied, preprocess
    from ..tiling import tile_inputs

    images = [read_image(p) for p in paths]
    check_varied(images, paths[0].parent if paths else "", "calibration")
    if meta.tiling is None:
        return [preprocess(image, meta)[0][None] for image in images]
    per_image = max(1, CALIB_TILES // max(1, len(images)))
    return [x[None] for image in images for x in tile_inputs(image, meta, per_image)]


def kept_fp32(recipe: Int8Recipe, convs: list[str]) -> list[str]:
    """The convolution names ``recipe.keep_fp32`` leaves unquantized (``convs`` in graph order)."""
    return [convs[0]] * ("first_conv" in recipe.keep_fp32) + [convs[-1]] * ("last_conv" in recipe.keep_fp32)


def nncf_kwargs(recipe: Int8Recipe, isa: str, convs: list[str], count: int) -> dict[str, Any]:
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    keep = kept_fp32(recipe, convs)
    return dict(
        preset=nncf.QuantizationPreset(recipe.preset), target_device=nncf.TargetDevice.CPU, subset_size=count,
        fast_bias_correction=recipe.fast_bias_correction,
        ignored_scope=nncf.IgnoredScope(names=keep) if keep else None,
        advanced_quantization_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix(recipe, isa))),
    )  # fmt: skip
