"""What this CPU can compute fast: the one place that reads its ISA (AVX2, AVX-512, VNNI, native bf16, AMX).

Training (bf16 autocast), export (int8 calibration target, AOTI ISA), the runtime (OpenVINO
precision hints) and the benchmarks all ask here, so they never disagree about a machine.
Linux ``/proc/cpuinfo`` flags are the source; elsewhere every answer is False and the name
comes from ``platform``. No heavy imports.
"""
from __future__ import annotations

import functools
import platform
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class CpuFeatures:
    """The facts that decide a precision: model name, core count and the relevant ISA extensions."""

    model: str
    cores: int
    avx2: bool
    avx512: bool  # AVX-512 F+BW+VL (what oneDNN and OpenVINO use)
    vnni: bool  # int8 dot products without saturation: AVX512-VNNI, AVX-VNNI or AMX-INT8
    native_bf16: bool  # bf16 arithmetic in hardware: AVX512-BF16 or AMX-BF16
    amx: bool
    flags: tuple[str, ...]  # the ISA flags above as the kernel names them, for reports

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        """One line for logs and benchmark pages: model, cores and ISA flags."""
        return f"{self.model}, {self.cores} cores, ISA: {' '.join(self.flags) or 'baseline x86-64/unknown'}"


_REPORTED = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_tile", "amx_int8", "amx_bf16")  # fmt: skip


def _cpuinfo() -> tuple[str, set[str]]:
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if name and flags:
                    break
    except OSError:
        pass
    return name or platform.processor() or platform.machine() or "unknown CPU", flags


# oneDNN's ISA cap (``ONEDNN_MAX_CPU_ISA``, which OpenVINO's and torch's oneDNN honour) -> the flags it leaves.
_CAPS = {
    "AVX2": {"avx2", "fma"},
    "AVX2_VNNI": {"avx2", "fma", "avx_vnni"},
    "AVX512_CORE": {"avx2", "fma", "avx512f", "avx512bw", "avx512vl"},
    "AVX512_CORE_VNNI": {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"},
    "AVX512_CORE_BF16": {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"},
}


@functools.lru_cache(maxsize=1)
def features() -> CpuFeatures:
    """This machine's ``CpuFeatures`` (read once per process).

    Under ``ONEDNN_MAX_CPU_ISA`` (e.g. ``AVX2``: oneDNN in OpenVINO and torch then runs AVX2
    kernels) the flags above the cap are dropped, so precision choices match the kernels.
    """
    import os

    name, flags = _cpuinfo()
    cap = _CAPS.get(os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).strip().upper())
    if cap is not None:
        flags = flags & (cap | (set(flags) - set(_REPORTED)))
    amx = bool({"amx_int8", "amx_bf16"} & flags)
    return CpuFeatures(
        model=name,
        cores=os.cpu_count() or 1,
        avx2="avx2" in flags,
        avx512={"avx512f", "avx512bw", "avx512vl"} <= flags,
        vnni=bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags),
        native_bf16=bool({"avx512_bf16", "amx_bf16"} & flags),
        amx=amx,
        flags=tuple(f for f in _REPORTED if f in flags),
    )


def has_native_bf16() -> bool:
    """True when bf16 runs in hardware here; elsewhere it is emulated and slower than fp32."""
    return features().native_bf16


def has_vnni() -> bool:
    """True when int8 convolutions run without the 16-bit saturation of ``VPMADDUBSW`` (AVX2-only CPUs)."""
    return features().vnni


def int8_isa() -> str:
    """The int8 instruction family this CPU uses: ``"amx"``, ``"vnni"`` or ``"avx2"`` (saturating)."""
    f = features()
    return "amx" if f.amx else "vnni" if f.vnni else "avx2"


def int8_mismatch(record: object, name: str) -> str | None:
    """A warning when an int8 model calibrated for VNNI (``meta.extra["int8"]["isa"]``) runs where int8 saturates."""
    isa = record.get("isa") if isinstance(record, dict) else None
    if isa == "vnni" and int8_isa() == "avx2":
        return (f"{name}: int8 calibrated for VNNI CPUs runs here on AVX2 only, where int8 sums saturate and "
                "accuracy can drop; re-export with --int8-isa avx2 for this CPU")
    return None
