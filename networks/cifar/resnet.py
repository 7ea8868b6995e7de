"""CIFAR ResNets and pre-activation ResNets.

- Deep Residual Learning for Image Recognition. Kaiming He, Xiangyu Zhang, Shaoqing Ren, Jian Sun.
  CVPR 2016. https://arxiv.org/abs/1512.03385 (the 6n+2 CIFAR networks of its section 4.2)
- Identity Mappings in Deep Residual Networks. Kaiming He, Xiangyu Zhang, Shaoqing Ren, Jian Sun.
  ECCV 2016. https://arxiv.org/abs/1603.05027 (pre-activation)

As in the SimAM code: three stages of 16/32/64 channels (x4 for bottlenecks), projection
shortcuts (`shortcut`, 1x1 conv + BN; conv only in pre-activation blocks) where shapes change,
global average pooling and a `linear` head. Attention (`block.attn`):
- post-activation blocks: "conv" after the 3x3 conv (basic: conv2, bottleneck: conv2), before
  its BN (SimAM); "out" after the last BN (SE, CBAM, ...);
- pre-activation blocks: "conv" after the 3x3 conv (basic: conv2, bottleneck: conv2); "out"
  after the branch's last conv (basic: conv2, bottleneck: conv3).
The SimAM code wrapped the attention into `conv2`/`bn2`/`bn3`/`conv3` with `nn.Sequential`;
`networks.load_weights` renames those keys. Initialisation: PyTorch's default, as the SimAM code
(`init="original"`); `init="kaiming"` gives kaiming-normal fan_out convs (networks/init.py).
"""
from __future__ import annotations

from typing import Sequence, Type, Union

import torch
from torch import nn

from ..init import initialize
from ..layers import AttnLayer, check_position, conv1x1, conv3x3, make_attn

__all__ = ["BasicBlock", "Bottleneck", "PreBasicBlock", "PreBottleneck", "CifarResNet", "CifarPreResNet"]


class BasicBlock(nn.Module):
    """Post-activation basic block."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, attn_layer: AttnLayer = None, attn_position: str = "out") -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.attn_position = check_position(attn_position)
        self.attn = make_attn(attn_layer, out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.attn is not None and self.attn_position == "conv":
            out = self.attn(out)
        out = self.bn2(out)
        if self.attn is not None and self.attn_position == "out":
            out = self.attn(out)
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """Post-activation bottleneck block (1x1, 3x3 with stride, 1x1 x4)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, attn_layer: AttnLayer = None, attn_position: str = "out") -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv1x1(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = conv1x1(channels, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.attn_position = check_position(attn_position)
        self.attn = make_attn(attn_layer, channels if attn_position == "conv" else out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.attn is not None and self.attn_position == "conv":
            out = self.attn(out)
        out = self.relu(self.bn2(out))
        out = self.bn3(self.conv3(out))
        if self.attn is not None and self.attn_position == "out":
            out = self.attn(out)
        return self.relu(out + self.shortcut(x))


class PreBasicBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv twice; the attention follows conv2 either way."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, attn_layer: AttnLayer = None, attn_position: str = "out") -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.relu = nn.ReLU(inplace=True)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, out_channels)
        self.attn_position = check_position(attn_position)  # "conv" and "out" coincide here
        self.attn = make_attn(attn_layer, out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(conv1x1(in_channels, out_channels, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        if self.attn is not None:
            out = self.attn(out)
        return out + self.shortcut(x)


class PreBottleneck(nn.Module):
    """Pre-activation bottleneck: attention after conv2 ("conv") or conv3 ("out")."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, attn_layer: AttnLayer = None, attn_position: str = "out") -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.relu = nn.ReLU(inplace=True)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels)
        self.conv3 = conv1x1(channels, out_channels)
        self.attn_position = check_position(attn_position)
        self.attn = make_attn(attn_layer, channels if attn_position == "conv" else out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(conv1x1(in_channels, out_channels, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        if self.attn is not None and self.attn_position == "conv":
            out = self.attn(out)
        out = self.conv3(self.relu(self.bn3(out)))
        if self.attn is not None and self.attn_position == "out":
            out = self.attn(out)
        return out + self.shortcut(x)


Block = Type[Union[BasicBlock, Bottleneck, PreBasicBlock, PreBottleneck]]


def _make_stage(block: Block, in_channels: int, channels: int, blocks: int, stride: int, attn_layer: AttnLayer, attn_position: str) -> nn.Sequential:
    """`blocks` blocks, the first one with `stride`."""
    layers = []
    for i in range(blocks):
        layers.append(block(in_channels, channels, stride if i == 0 else 1, attn_layer=attn_layer, attn_position=attn_position))
        in_channels = channels * block.expansion
    return nn.Sequential(*layers)


class CifarResNet(nn.Module):
    """3x3 stem (16 channels), three stages (16, 32, 64), average pooling, `linear` head."""

    def __init__(self, block: Block, num_blocks: Sequence[int], num_classes: int = 10, attn_layer: AttnLayer = None, attn_position: str = "out",
                 init: str = "original") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        e = block.expansion
        self.layer1 = _make_stage(block, 16, 16, num_blocks[0], 1, attn_layer, attn_position)
        self.layer2 = _make_stage(block, 16 * e, 32, num_blocks[1], 2, attn_layer, attn_position)
        self.layer3 = _make_stage(block, 32 * e, 64, num_blocks[2], 2, attn_layer, attn_position)
        self.linear = nn.Linear(64 * e, num_classes)
        self.num_features = 64 * e
        initialize(self, init, original="pytorch")  # the SimAM code has no init code here

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.avgpool(self.forward_features(x)), 1))


class CifarPreResNet(nn.Module):
    """Pre-activation CIFAR ResNet: stem conv, three stages, final BN-ReLU (`bn`), `linear` head."""

    def __init__(self, block: Block, num_blocks: Sequence[int], num_classes: int = 10, attn_layer: AttnLayer = None, attn_position: str = "out",
                 init: str = "original") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        e = block.expansion
        self.layer1 = _make_stage(block, 16, 16, num_blocks[0], 1, attn_layer, attn_position)
        self.layer2 = _make_stage(block, 16 * e, 32, num_blocks[1], 2, attn_layer, attn_position)
        self.layer3 = _make_stage(block, 32 * e, 64, num_blocks[2], 2, attn_layer, attn_position)
        self.bn = nn.BatchNorm2d(64 * e)
        self.linear = nn.Linear(64 * e, num_classes)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = 64 * e
        initialize(self, init, original="pytorch")  # the SimAM code has no init code here

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.relu(self.bn(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.avgpool(self.forward_features(x)), 1))
