"""CBAM: Convolutional Block Attention Module. Sanghyun Woo, Jongchan Park, Joon-Young Lee, In So Kweon.
ECCV 2018. https://arxiv.org/abs/1807.06521

Channel gate (a shared MLP with biases over average- and max-pooled features, summed, sigmoid)
followed by a spatial gate (channel-wise max and mean -> 7x7 conv -> BN -> sigmoid), as in the
authors' code that the SimAM comparisons used (BN momentum 0.01). timm's `CbamModule` drops the
MLP biases, so it has other parameter counts; the attribute names here (`ChannelGate.mlp.1`,
`SpatialGate.spatial.conv`, ...) follow the SimAM code so that its checkpoints load unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CBAM"]


class _ConvBN(nn.Module):
    """Bias-free conv followed by BN (no activation): the spatial gate's 2 -> 1 convolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class ChannelGate(nn.Module):
    """Sigmoid of MLP(avgpool(x)) + MLP(maxpool(x)); the MLP is C -> C/r -> C with biases."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = int(channels // reduction)
        if hidden < 1:
            raise ValueError(f"CBAM reduction {reduction} leaves no hidden unit for {channels} channels")
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(att)[:, :, None, None]


class SpatialGate(nn.Module):
    """Sigmoid of a kxk conv over the channel-wise max and mean maps."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.spatial = _ConvBN(2, 1, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat((x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)), dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    """Channel gate then spatial gate."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.ChannelGate = ChannelGate(channels, reduction)
        self.SpatialGate = SpatialGate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))
