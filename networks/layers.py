"""Small building blocks shared by the networks, and the initialisation of the SimAM code."""
from __future__ import annotations

from typing import Callable, Optional

from torch import nn

AttnLayer = Optional[Callable[[int], nn.Module]]

__all__ = ["AttnLayer", "check_position", "conv1x1", "conv3x3", "init_weights", "make_attn"]


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


def init_weights(model: nn.Module, linear_std: Optional[float] = None) -> None:
    """Kaiming-normal (fan_out) convs, BN gamma 1 / beta 0, as in the SimAM code.

    Linear layers keep PyTorch's default unless `linear_std` is given (MobileNetV2: N(0, 0.01)).
    Attention modules with an initialisation of their own (GCNet zero-inits its last conv) are
    re-initialised afterwards through their `reset_parameters`.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    from .attention import GCBlock  # late import: attention imports nothing from here

    for m in model.modules():
        if isinstance(m, GCBlock):
            m.reset_parameters()
