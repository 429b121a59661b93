"""Where a training process runs: rank, world size and device (a process group under torchrun), and its precision."""
from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from ..errors import UnetDeployError

if TYPE_CHECKING:  # pragma: no cover
    import torch


class Distributed:
    """Rank, world size and device of this process; a process group when run under torchrun."""

    def __init__(self, rank: int, world: int, device: "torch.device", owns_group: bool) -> None:
        self.rank, self.world, self.device, self._owns_group = rank, world, device, owns_group

    @classmethod
    def start(cls, device: str) -> "Distributed":
        import torch
        import torch.distributed as tdist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(device, local_rank if world > 1 else None)
        owns = False
        if world > 1 and not tdist.is_initialized():
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
            owns = True
        rank = tdist.get_rank() if world > 1 else 0
        return cls(rank, world, dev, owns)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: "torch.Tensor") -> "torch.Tensor":
        """Sum ``t`` over all ranks (in place) and return it."""
        if self.world > 1:
            import torch.distributed as tdist

            tdist.all_reduce(t)
        return t

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order."""
        if self.world == 1:
            return [obj]
        import torch.distributed as tdist

        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, model: "torch.nn.Module") -> None:
        """Give every rank rank 0's BatchNorm statistics, so all validate the model rank 0 saves."""
        if self.world > 1:
            import torch.distributed as tdist

            for b in model.buffers():
                tdist.broadcast(b, 0)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as tdist

            tdist.barrier()

    def close(self) -> None:
        if self._owns_group:
            import torch.distributed as tdist

            tdist.destroy_process_group()


def resolve_device(name: str, local_rank: int | None) -> "torch.device":
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is a user error."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UnetDeployError(f"--device {name}: no CUDA GPU is visible to torch; use --device cpu (or auto)")
        if local_rank is not None:
            return torch.device("cuda", local_rank)
        return torch.device(name)
    if name != "cpu":
        raise UnetDeployError(f"--device {name!r} is not one of auto, cpu, cuda, cuda:N")
    return torch.device("cpu")


AMP_DTYPES = ("auto", "bf16", "fp16")


def amp_dtype(device: "torch.device", amp: bool | None, dtype: str = "auto") -> "torch.dtype | None":
    """The autocast dtype of a run, or None for fp32.

    ``amp`` None: on for CUDA and for CPUs with native bf16. ``dtype`` ``"auto"``: bf16 where the
    device has it (CUDA since Ampere, native-bf16 CPUs: no loss scaling needed), else fp16 on
    CUDA (with a GradScaler); ``"bf16"``/``"fp16"`` force one.
    """
    import torch

    from ..cpu import has_native_bf16

    if dtype not in AMP_DTYPES:
        raise UnetDeployError(f"--amp-dtype {dtype!r} is not one of {', '.join(AMP_DTYPES)}")
    if device.type == "cuda":
        if amp is False:
            return None
        if dtype == "auto":
            dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    else:
        if amp is None:
            amp = has_native_bf16()
        if not amp:
            return None
        if dtype == "fp16":
            raise UnetDeployError("--amp-dtype fp16 is for CUDA; on the CPU mixed precision is bf16")
        dtype = "bf16"
    return torch.bfloat16 if dtype == "bf16" else torch.float16


def autocast(device: "torch.device", dtype: "torch.dtype | None") -> Any:
    """``torch.autocast`` to ``dtype``, or a no-op for fp32."""
    import torch

    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
