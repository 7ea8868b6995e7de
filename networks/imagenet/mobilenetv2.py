"""MobileNetV2: Inverted Residuals and Linear Bottlenecks. Mark Sandler, Andrew Howard, Menglong Zhu,
Andrey Zhmoginov, Liang-Chieh Chen. CVPR 2018. https://arxiv.org/abs/1801.04381

torchvision's MobileNetV2 as the SimAM code used it, with an attention module per inverted
residual block (`block.attn`):
- "conv": after the depthwise conv, before its BN (SimAM);
- "out": after the projection BN, before the residual addition (SE, CBAM, ...).
Differences to torchvision: the classifier's dropout defaults to 0 (the SimAM code commented it
out; torchvision uses 0.2). Keys are torchvision's (`features.N.conv.M`, `classifier.1`), so
its ImageNet weights load into `attention="none"`; `networks.load_weights` renames the SimAM
code's keys (`classifier.0`, the attention inside `features.N.conv`).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

from ..init import initialize
from ..layers import AttnLayer, check_position, make_attn

__all__ = ["ConvBNReLU", "InvertedResidual", "MobileNetV2", "make_divisible"]

# t (expansion), c (channels), n (blocks), s (stride of the first block)
IMAGENET_SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round channels to a multiple of `divisor`, never below 90% of `v` (TF MobileNet rule)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNReLU(nn.Sequential):
    """Conv -> BN -> ReLU6 (indices 0, 1, 2 as in torchvision)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
            norm_layer(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> project (1x1, linear); residual when shapes allow."""

    def __init__(
        self,
        inp: int,
        oup: int,
        stride: int,
        expand_ratio: int,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        attn_layer: AttnLayer = None,
        attn_position: str = "out",
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(inp, hidden, kernel_size=1, norm_layer=norm_layer))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden, norm_layer=norm_layer),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            norm_layer(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.attn_position = check_position(attn_position)
        self.attn = make_attn(attn_layer, hidden if attn_position == "conv" else oup)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.conv[:-3]:  # the expansion, if any
            out = layer(out)
        dw_conv, dw_bn, dw_act = self.conv[-3]
        out = dw_conv(out)
        if self.attn is not None and self.attn_position == "conv":
            out = self.attn(out)
        out = self.conv[-1](self.conv[-2](dw_act(dw_bn(out))))
        if self.attn is not None and self.attn_position == "out":
            out = self.attn(out)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """ImageNet MobileNetV2 (width 1.0 by default)."""

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        dropout: float = 0.0,
        setting: Optional[Sequence[Sequence[int]]] = None,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        attn_layer: AttnLayer = None,
        attn_position: str = "out",
        init: str = "original",
    ) -> None:
        super().__init__()
        setting = setting or IMAGENET_SETTING
        input_channel = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        features: List[nn.Module] = [ConvBNReLU(3, input_channel, stride=2, norm_layer=norm_layer)]
        for t, c, n, s in setting:
            output_channel = make_divisible(c * width_mult)
            for i in range(n):
                features.append(
                    InvertedResidual(
                        input_channel,
                        output_channel,
                        s if i == 0 else 1,
                        expand_ratio=t,
                        norm_layer=norm_layer,
                        attn_layer=attn_layer,
                        attn_position=attn_position,
                    )
                )
                input_channel = output_channel
        features.append(ConvBNReLU(input_channel, self.last_channel, kernel_size=1, norm_layer=norm_layer))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))
        self.num_features = self.last_channel
        initialize(self, init, original="kaiming", linear_std=0.01)  # torchvision's, as the SimAM code

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)
