"""ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks.
Qilong Wang, Banggu Wu, Pengfei Zhu, Peihua Li, Wangmeng Zuo, Qinghua Hu. CVPR 2020.
https://arxiv.org/abs/1910.03151

timm's `EcaModule` is faithful to the paper: global average pooling, a bias-free 1D convolution
across channels with the adaptive kernel size k = |(log2(C) + b) / gamma|_odd (gamma=2, b=1),
sigmoid gate. The only difference to the authors' code is timm's lower bound k >= 3, which only
matters below 16 channels.
"""
from __future__ import annotations

from timm.layers import EcaModule
from torch import nn

__all__ = ["ECA", "eca_kernel_size"]


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """The paper's adaptive kernel size (with timm's minimum of 3)."""
    import math

    t = int(abs(math.log(channels, 2) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


class ECA(EcaModule):
    """timm's EcaModule with the paper's adaptive kernel size."""

    def __init__(self, channels: int, gamma: float = 2, beta: float = 1) -> None:
        super().__init__(channels=channels, gamma=gamma, beta=beta)
        self.channels = channels

    def extra_repr(self) -> str:
        return f"channels={self.channels}, k={self.conv.kernel_size[0]}"


