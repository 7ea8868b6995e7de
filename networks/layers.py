"""Small building blocks shared by the networks (initialisation: networks/init.py)."""
from __future__ import annotations

from typing import Callable, Optional

from torch import nn

AttnLayer = Optional[Callable[[int], nn.Module]]

__all__ = ["AttnLayer", "check_position", "conv1x1", "conv3x3", "make_attn"]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1, no bias."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def make_attn(attn_layer: AttnLayer, channels: int) -> Optional[nn.Module]:
    """Instantiate `attn_layer(channels)`, or None when there is no attention."""
    return None if attn_layer is None else attn_layer(channels)


def check_position(attn_position: str) -> str:
    """Validate a block's attention position ("conv" or "out")."""
    if attn_position not in ("conv", "out"):
        raise ValueError(f"unknown attn_position {attn_position!r}; valid: conv, out")
    return attn_position
