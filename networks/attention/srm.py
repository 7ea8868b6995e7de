"""SRM: A Style-based Recalibration Module for Convolutional Neural Networks.
HyunJae Lee, Hyo-Eun Kim, Hyeonseob Nam. ICCV 2019. https://arxiv.org/abs/1903.10829

Style pooling (per-channel mean and standard deviation), a channel-wise fully connected layer
(one weight per channel and statistic, no bias, zero-initialised as in the authors' code), BN,
sigmoid gate: 4 parameters per channel. timm has no SRM.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["SRM"]


class SRM(nn.Module):
    """Style-based recalibration: gate = sigmoid(BN(w_mean * mean + w_std * std))."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.cfc = nn.Parameter(torch.zeros(channels, 2))
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        flat = x.reshape(b, c, -1).float()
        mean = flat.mean(dim=2)
        # unbiased variance as in the authors' code; a 1x1 map has no spread (std 0)
        std = (flat.var(dim=2, unbiased=flat.shape[2] > 1) + self.eps).sqrt()
        z = mean * self.cfc[:, 0] + std * self.cfc[:, 1]
        gate = torch.sigmoid(self.bn(z.to(x.dtype)[:, :, None, None]))
        return x * gate
