"""Squeeze-and-Excitation Networks. Jie Hu, Li Shen, Gang Sun. CVPR 2018. https://arxiv.org/abs/1709.01507

As in the SimAM code that the paper's comparisons were run with: two bias-free fully connected
layers (C -> C/r -> C) on the globally average-pooled features, ReLU between, a sigmoid gate.
The SE paper's own layers have biases; timm's `SEModule` (1x1 convs with biases and a channel
divisor of 8) therefore gives other parameter counts and other checkpoint keys. Attribute names
(`fc.0`, `fc.2`) follow the SimAM code so that its checkpoints load unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["SqueezeExcite"]


class SqueezeExcite(nn.Module):
    """Channel gate from global average pooling through a bias-free C -> C/r -> C bottleneck."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = int(channels // reduction)
        if hidden < 1:
            raise ValueError(f"SE reduction {reduction} leaves no hidden unit for {channels} channels")
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        y = self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)
        return x * y
