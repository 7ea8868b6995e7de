"""GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond.
Yue Cao, Jiarui Xu, Stephen Lin, Fangyun Wei, Han Hu. ICCV-W 2019. https://arxiv.org/abs/1904.11492

The global context block as in the paper's best setting: attention pooling (1x1 conv -> softmax
over positions), a bottleneck transform 1x1 conv C -> C/r -> LayerNorm -> ReLU -> 1x1 conv
(r = 16), fused by addition, last conv zero-initialised. timm's `GlobalContext` implements
exactly this with `fuse_add=True, fuse_scale=False`; its default (scale fusion, r = 8) is not
the paper's.
"""
from __future__ import annotations

from timm.layers import GlobalContext
from torch import nn

__all__ = ["GCBlock"]


class GCBlock(GlobalContext):
    """timm's GlobalContext configured as GCNet's channel-add block with ratio 1/16."""

    def __init__(self, channels: int, ratio: float = 1.0 / 16) -> None:
        super().__init__(
            channels,
            use_attn=True,
            fuse_add=True,
            fuse_scale=False,
            init_last_zero=True,
            rd_ratio=ratio,
            rd_divisor=1,
            act_layer=nn.ReLU,
        )
