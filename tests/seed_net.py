"""The seed article's network as its net.py wrote it (the reference our UNet must reproduce)."""
import torch
from torch import nn
from torch.nn import functional as F


class Conv_Block(nn.Module):
    def __init__(self, in_channel, out_channel):
        super(Conv_Block, self).__init__()
        self.layer = nn.Sequential(
            nn.Conv2d(in_channel, out_channel, 3, 1, 1, padding_mode='reflect', bias=False),
            nn.BatchNorm2d(out_channel),
            nn.Dropout2d(0.3),
            nn.LeakyReLU(),
            nn.Conv2d(out_channel, out_channel, 3, 1, 1, padding_mode='reflect', bias=False),
            nn.BatchNorm2d(out_channel),
            nn.Dropout2d(0.3),
            nn.LeakyReLU()
        )

    def forward(self, x):
        return self.layer(x)


class DownSample(nn.Module):
    def __init__(self, channel):
        super(DownSample, self).__init__()
        self.layer = nn.Sequential(
            nn.Conv2d(channel, channel, 3, 2, 1, padding_mode='reflect', bias=False),
            nn.BatchNorm2d(channel),
            nn.LeakyReLU()
        )

    def forward(self, x):
        return self.layer(x)


class UpSample(nn.Module):
    def __init__(self, channel):
        super(UpSample, self).__init__()
        self.layer = nn.Conv2d(channel, channel // 2, 1, 1)
        self.up = nn.ConvTranspose2d(channel, channel, 2, 2)

    def forward(self, x, feature_map):
        up = self.up(x)
        out = self.layer(up)
        return torch.cat((out, feature_map), dim=1)


class UNet(nn.Module):
    def __init__(self, num_classes, width=64):
        super(UNet, self).__init__()
        w = width
        self.c1 = Conv_Block(3, w)
        self.d1 = DownSample(w)
        self.c2 = Conv_Block(w, 2 * w)
        self.d2 = DownSample(2 * w)
        self.c3 = Conv_Block(2 * w, 4 * w)
        self.d3 = DownSample(4 * w)
        self.c4 = Conv_Block(4 * w, 8 * w)
        self.d4 = DownSample(8 * w)
        self.c5 = Conv_Block(8 * w, 16 * w)
        self.u1 = UpSample(16 * w)
        self.c6 = Conv_Block(16 * w, 8 * w)
        self.u2 = UpSample(8 * w)
        self.c7 = Conv_Block(8 * w, 4 * w)
        self.u3 = UpSample(4 * w)
        self.c8 = Conv_Block(4 * w, 2 * w)
        self.u4 = UpSample(2 * w)
        self.c9 = Conv_Block(2 * w, w)
        self.out = nn.Conv2d(w, num_classes, 3, 1, 1)

    def forward(self, x):
        R1 = self.c1(x)
        R2 = self.c2(self.d1(R1))
        R3 = self.c3(self.d2(R2))
        R4 = self.c4(self.d3(R3))
        R5 = self.c5(self.d4(R4))
        O1 = self.c6(self.u1(R5, R4))
        O2 = self.c7(self.u2(O1, R3))
        O3 = self.c8(self.u3(O2, R2))
        O4 = self.c9(self.u4(O3, R1))
        return self.out(O4)


def seed_letterbox(path, size=(256, 256)):
    """The seed's keep_image_size_open_rgb (utils.py)."""
    from PIL import Image

    img = Image.open(path)
    temp = max(img.size)
    mask = Image.new('RGB', (temp, temp))
    mask.paste(img, (0, 0))
    mask = mask.resize(size)
    return mask
