"""Wide Residual Networks. Sergey Zagoruyko, Nikos Komodakis. BMVC 2016. https://arxiv.org/abs/1605.07146

WRN-d-k for CIFAR as in the SimAM code: pre-activation wide basic blocks with dropout 0.3
between the convs, the attention module (`block.attn`) after each block's last conv for every
type ("conv" and "out" coincide), conv init N(0, sqrt(2 / (k*k*out))) = kaiming-normal fan_out,
head bias zero. Keys follow the SimAM code (`block1.layer.N`, `convShortcut`, `bn1`, `fc`) but
for the attention, which that code wrapped into `conv2` (renamed by `networks.load_weights`).
The SimAM code's quirk is kept: where a block changes width, its shortcut takes the
pre-activated input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..init import initialize
from ..layers import AttnLayer, check_position, conv1x1, conv3x3, make_attn

__all__ = ["WideBasicBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3 -> BN-ReLU-(dropout)-conv3x3 -> attention, plus the shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0, attn_layer: AttnLayer = None, attn_position: str = "out") -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(in_planes, out_planes, stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_planes, out_planes)
        self.attn_position = check_position(attn_position)
        self.attn = make_attn(attn_layer, out_planes)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else conv1x1(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        if self.attn is not None:
            out = self.attn(out)
        return out + (x if self.equal_in_out else self.convShortcut(act))


class _Stage(nn.Module):
    """A group of blocks kept under `.layer` so that keys match the SimAM code (`block1.layer.0`)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float, attn_layer: AttnLayer, attn_position: str) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate, attn_layer, attn_position)
                for i in range(n)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen for 32x32 images."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, drop_rate: float = 0.3, num_classes: int = 10, attn_layer: AttnLayer = None, attn_position: str = "out", init: str = "original") -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = _Stage(n, widths[0], widths[1], 1, drop_rate, attn_layer, attn_position)
        self.block2 = _Stage(n, widths[1], widths[2], 2, drop_rate, attn_layer, attn_position)
        self.block3 = _Stage(n, widths[2], widths[3], 2, drop_rate, attn_layer, attn_position)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        self.num_features = widths[3]
        initialize(self, init, original="kaiming")  # N(0, sqrt(2/(k*k*out))) in the SimAM code
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.relu(self.bn1(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.forward_features(x), 1).flatten(1))
