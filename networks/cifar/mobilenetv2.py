"""MobileNetV2: Inverted Residuals and Linear Bottlenecks. Mark Sandler, Andrew Howard, Menglong Zhu,
Andrey Zhmoginov, Liang-Chieh Chen. CVPR 2018. https://arxiv.org/abs/1801.04381

The CIFAR variant of the SimAM code (after Kuang Liu's pytorch-cifar): stride 1 in the stem and
in the second stage, every block has its 1x1 expansion (even t=1), a projection shortcut where a
stride-1 block changes width and no residual at all in stride-2 blocks. Attention (`block.attn`):
"conv" after the depthwise conv, before its BN (SimAM); "out" after the projection BN (SE, ...).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..init import initialize
from ..layers import AttnLayer, check_position, conv1x1, make_attn

__all__ = ["CifarInvertedResidual", "CifarMobileNetV2"]

# (expansion, out_planes, num_blocks, stride); strides 2 -> 1 in the stem and stage 2 for 32x32 inputs
CIFAR_SETTING = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class CifarInvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise 3x3 -> project 1x1 (linear)."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int, attn_layer: AttnLayer = None, attn_position: str = "out") -> None:
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.attn_position = check_position(attn_position)
        self.attn = make_attn(attn_layer, planes if attn_position == "conv" else out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(conv1x1(in_planes, out_planes), nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.attn is not None and self.attn_position == "conv":
            out = self.attn(out)
        out = self.relu(self.bn2(out))
        out = self.bn3(self.conv3(out))
        if self.attn is not None and self.attn_position == "out":
            out = self.attn(out)
        return out + self.shortcut(x) if self.stride == 1 else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 images (final map 4x4)."""

    def __init__(self, num_classes: int = 10, attn_layer: AttnLayer = None, attn_position: str = "out", init: str = "original") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        layers = []
        in_planes = 32
        for expansion, out_planes, num_blocks, stride in CIFAR_SETTING:
            for i in range(num_blocks):
                layers.append(CifarInvertedResidual(in_planes, out_planes, expansion, stride if i == 0 else 1, attn_layer, attn_position))
                in_planes = out_planes
        self.layers = nn.Sequential(*layers)
        self.conv2 = nn.Conv2d(320, 1280, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, num_classes)
        self.num_features = 1280
        initialize(self, init, original="pytorch")  # the SimAM code has no init code here

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(self.layers(out))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.adaptive_avg_pool2d(self.forward_features(x), 1).flatten(1))
