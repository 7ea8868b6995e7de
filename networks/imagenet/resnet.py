"""Deep Residual Learning for Image Recognition. Kaiming He, Xiangyu Zhang, Shaoqing Ren, Jian Sun.
CVPR 2016. https://arxiv.org/abs/1512.03385 -- and ResNeXt (Xie et al., CVPR 2017,
https://arxiv.org/abs/1611.05431) and ResNet-D (He et al., "Bag of Tricks", CVPR 2019,
https://arxiv.org/abs/1812.01187: deep stem, average-pool downsampling).

The ImageNet ResNets of the SimAM code: torchvision's ResNet v1.5 (stride on the 3x3 conv) with an
attention module per block. Parameter and buffer names are torchvision's, so its ImageNet weights
load into `attention="none"`; the attention module is always `block.attn`. The SimAM code wrapped
it into `conv2`/`bn2`/`bn3` with `nn.Sequential` instead; `networks.load_weights` renames those
keys. Placement (attn_position):
- "conv": right after the 3x3 conv, before its BN (SimAM; basic block: conv2, bottleneck: conv2);
- "out": after the block's last BN, before the residual addition (SE, CBAM, ECA, SRM, GC).
No zero-init of the last BN (the SimAM recipe does not use it; `zero_init_residual=True` does).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Type, Union

import torch
from torch import nn

from ..init import initialize
from ..layers import AttnLayer, check_position, conv1x1, conv3x3, make_attn

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]


class BasicBlock(nn.Module):
    """Two 3x3 convs; attention after conv2 ("conv") or after bn2 ("out")."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        groups: int = 1,
        base_width: int = 64,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        attn_layer: AttnLayer = None,
        attn_position: str = "out",
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.attn_position = check_position(attn_position)
        self.attn = make_attn(attn_layer, planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.attn is not None and self.attn_position == "conv":
            out = self.attn(out)
        out = self.bn2(out)
        if self.attn is not None and self.attn_position == "out":
            out = self.attn(out)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, groups) -> 1x1 x4; attention after the 3x3 conv ("conv") or bn3 ("out")."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        groups: int = 1,
        base_width: int = 64,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        attn_layer: AttnLayer = None,
        attn_position: str = "out",
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.attn_position = check_position(attn_position)
        self.attn = make_attn(attn_layer, width if attn_position == "conv" else planes * self.expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.attn is not None and self.attn_position == "conv":
            out = self.attn(out)
        out = self.relu(self.bn2(out))
        out = self.bn3(self.conv3(out))
        if self.attn is not None and self.attn_position == "out":
            out = self.attn(out)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ImageNet ResNet / ResNeXt / ResNet-D with an optional attention module in every block."""

    def __init__(
        self,
        block: Type[Union[BasicBlock, Bottleneck]],
        layers: Sequence[int],
        num_classes: int = 1000,
        groups: int = 1,
        width_per_group: int = 64,
        deep_stem: bool = False,
        stem_width: int = 32,
        avg_down: bool = False,
        zero_init_residual: bool = False,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        attn_layer: AttnLayer = None,
        attn_position: str = "out",
        init: str = "original",
    ) -> None:
        super().__init__()
        self.inplanes = stem_width * 2 if deep_stem else 64
        self.groups = groups
        self.base_width = width_per_group
        if deep_stem:  # ResNet-D: three 3x3 convs instead of one 7x7
            self.conv1 = nn.Sequential(
                conv3x3(3, stem_width, stride=2),
                norm_layer(stem_width),
                nn.ReLU(),
                conv3x3(stem_width, stem_width),
                norm_layer(stem_width),
                nn.ReLU(),
                conv3x3(stem_width, self.inplanes),
            )
        else:
            self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        common = dict(avg_down=avg_down, norm_layer=norm_layer, attn_layer=attn_layer, attn_position=attn_position)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1, **common)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, **common)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, **common)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, **common)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self.num_features = 512 * block.expansion
        initialize(self, init, original="kaiming")  # torchvision's, as the SimAM code
        if zero_init_residual:  # "Accurate, Large Minibatch SGD", arXiv 1706.02677; off in the SimAM recipe
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(
        self,
        block: Type[Union[BasicBlock, Bottleneck]],
        planes: int,
        blocks: int,
        stride: int,
        avg_down: bool,
        norm_layer: Callable[[int], nn.Module],
        attn_layer: AttnLayer,
        attn_position: str,
    ) -> nn.Sequential:
        downsample = None
        out_channels = planes * block.expansion
        if stride != 1 or self.inplanes != out_channels:
            if avg_down and stride != 1:  # ResNet-D: average pool, then a stride-1 1x1 conv
                downsample = nn.Sequential(
                    nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
                    conv1x1(self.inplanes, out_channels),
                    norm_layer(out_channels),
                )
            else:
                downsample = nn.Sequential(conv1x1(self.inplanes, out_channels, stride), norm_layer(out_channels))
        layers = []
        for i in range(blocks):
            layers.append(
                block(
                    self.inplanes,
                    planes,
                    stride if i == 0 else 1,
                    downsample if i == 0 else None,
                    groups=self.groups,
                    base_width=self.base_width,
                    norm_layer=norm_layer,
                    attn_layer=attn_layer,
                    attn_position=attn_position,
                )
            )
            self.inplanes = out_channels
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.forward_features(x)), 1)
        return self.fc(x)
