"""The seed article's UNet, with seed-compatible parameter names (a seed ``unet.pth`` loads as is)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .meta import DIVISOR, MAX_CLASSES, MIN_SIZE, UPSAMPLE_MODES


class Conv_Block(nn.Module):  # noqa: N801 - the seed's name, kept for state_dict keys
    """Two 3x3 reflect-padded convs, each with BatchNorm, Dropout2d(0.3) and LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, padding_mode="reflect", bias=False),
            nn.BatchNorm2d(out_channels),
            nn.Dropout2d(0.3),
            nn.LeakyReLU(),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, padding_mode="reflect", bias=False),
            nn.BatchNorm2d(out_channels),
            nn.Dropout2d(0.3),
            nn.LeakyReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class DownSample(nn.Module):
    """Stride-2 3x3 reflect-padded conv, BatchNorm, LeakyReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 2, 1, padding_mode="reflect", bias=False),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class UpSample(nn.Module):
    """Double the resolution (transposed conv or bilinear), 1x1 conv to half the channels, concat skip."""

    def __init__(self, channels: int, mode: str = "transpose") -> None:
        super().__init__()
        self.layer = nn.Conv2d(channels, channels // 2, 1, 1)
        self.up = nn.ConvTranspose2d(channels, channels, 2, 2) if mode == "transpose" else nn.Identity()
        self.bilinear = mode == "bilinear"

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.bilinear:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        else:
            x = self.up(x)
        return torch.cat((self.layer(x), skip), dim=1)


class UNet(nn.Module):
    """The seed's UNet: 4 down-samplings (input H, W multiples of 16), logits per class.

    With default arguments its ``state_dict`` is the seed's, key for key (150 entries,
    37,658,179 parameters for 3 classes). ``base_channels`` scales every width.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        base_channels: int = 64,
        upsample: str = "transpose",
    ) -> None:
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, not {upsample!r}")
        if not 1 <= num_classes <= MAX_CLASSES:  # predict's class ids are uint8
            raise ValueError(f"num_classes {num_classes} must be in [1, {MAX_CLASSES}]")
        b = base_channels
        self.num_classes, self.in_channels, self.base_channels, self.upsample = (
            num_classes, in_channels, base_channels, upsample,
        )  # fmt: skip
        self.divisor, self.min_size = DIVISOR, MIN_SIZE  # input H and W: multiples of divisor, >= min_size
        self.c1 = Conv_Block(in_channels, b)
        self.d1 = DownSample(b)
        self.c2 = Conv_Block(b, 2 * b)
        self.d2 = DownSample(2 * b)
        self.c3 = Conv_Block(2 * b, 4 * b)
        self.d3 = DownSample(4 * b)
        self.c4 = Conv_Block(4 * b, 8 * b)
        self.d4 = DownSample(8 * b)
        self.c5 = Conv_Block(8 * b, 16 * b)
        self.u1 = UpSample(16 * b, upsample)
        self.c6 = Conv_Block(16 * b, 8 * b)
        self.u2 = UpSample(8 * b, upsample)
        self.c7 = Conv_Block(8 * b, 4 * b)
        self.u3 = UpSample(4 * b, upsample)
        self.c8 = Conv_Block(4 * b, 2 * b)
        self.u4 = UpSample(2 * b, upsample)
        self.c9 = Conv_Block(2 * b, b)
        self.out = nn.Conv2d(b, num_classes, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():  # scripted too, so libtorch callers get the same message
            _check_input(x, self.in_channels, self.divisor, self.min_size)
        r1 = self.c1(x)
        r2 = self.c2(self.d1(r1))
        r3 = self.c3(self.d2(r2))
        r4 = self.c4(self.d3(r3))
        r5 = self.c5(self.d4(r4))
        o1 = self.c6(self.u1(r5, r4))
        o2 = self.c7(self.u2(o1, r3))
        o3 = self.c8(self.u3(o2, r2))
        o4 = self.c9(self.u4(o3, r1))
        return self.out(o4)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class ids (N, H, W) for a batch, in eval mode, without autograd."""
        if self.training:
            self.eval()
        logits = self(x)
        if logits.shape[1] == 1:
            return (logits[:, 0] > 0).to(torch.uint8)
        return logits.argmax(1).to(torch.uint8)


def _check_input(x: torch.Tensor, in_channels: int, divisor: int, min_size: int) -> None:
    """Raise a one-line ValueError for a wrong input shape (TorchScript-compatible)."""
    if x.dim() != 4 or x.size(1) != in_channels:
        raise ValueError(f"UNet expects N x {in_channels} x H x W input, got {list(x.shape)}")
    h, w = x.size(2), x.size(3)
    if h % divisor != 0 or w % divisor != 0 or h < min_size or w < min_size:
        raise ValueError(
            f"UNet input height and width must be multiples of {divisor} (at least {min_size}), got {h}x{w}; "
            + "letterbox the image to a multiple of 16 first"
        )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters())
