"""Attention modules and their factory.

Every module takes `channels` first, so one factory builds any of them and any network can take
an attention type by name. Each type also has a default position in a residual block, the one
the SimAM code used (see `default_position`):
- "conv": right after the block's 3x3 (or depthwise) conv, before its BN (SimAM);
- "out": after the branch's last BN, before the residual addition (SE, CBAM, ECA, SRM, GC).
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from .cbam import CBAM
from .eca import ECA
from .gc import GCBlock
from .se import SqueezeExcite
from .simam import SimAM, simam_reference
from .srm import SRM

__all__ = [
    "CBAM", "ECA", "GCBlock", "SRM", "SimAM", "SqueezeExcite", "simam_reference",
    "ATTENTION_POSITIONS", "create_attention", "get_attn_layer", "default_position", "list_attentions", "resolved_kwargs",
]

ATTENTION_POSITIONS = ("conv", "out")


@dataclass(frozen=True)
class _Spec:
    cls: Optional[type]
    position: str
    paper: str


_ATTENTIONS: dict[str, _Spec] = {
    "none": _Spec(None, "out", "no attention"),
    "simam": _Spec(SimAM, "conv", "SimAM, Yang et al., ICML 2021"),
    "se": _Spec(SqueezeExcite, "out", "Squeeze-and-Excitation, Hu et al., CVPR 2018"),
    "cbam": _Spec(CBAM, "out", "CBAM, Woo et al., ECCV 2018"),
    "eca": _Spec(ECA, "out", "ECA-Net, Wang et al., CVPR 2020"),
    "srm": _Spec(SRM, "out", "SRM, Lee et al., ICCV 2019"),
    "gc": _Spec(GCBlock, "out", "GCNet, Cao et al., ICCV-W 2019"),
}


def list_attentions() -> list[str]:
    """Sorted names of the attention types."""
    return sorted(_ATTENTIONS)


def _spec(name: Optional[str]) -> _Spec:
    key = "none" if name is None else str(name).lower()
    if key not in _ATTENTIONS:
        raise ValueError(f"unknown attention type {name!r}; valid: {', '.join(list_attentions())}")
    return _ATTENTIONS[key]


def default_position(name: Optional[str]) -> str:
    """Where the SimAM code puts this attention type in a residual block ("conv" or "out")."""
    return _spec(name).position


def _check_kwargs(name: str, cls: type, kwargs: dict) -> None:
    params = list(inspect.signature(cls.__init__).parameters)[2:]  # self, channels
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        valid = ", ".join(params) or "none"
        raise ValueError(f"attention {name!r} has no option {', '.join(unknown)}; valid: {valid}")


def resolved_kwargs(name: Optional[str], **kwargs) -> dict:
    """The options of attention `name` with its defaults filled in (what the module really uses)."""
    spec = _spec(name)
    if spec.cls is None:
        return {}
    _check_kwargs(str(name), spec.cls, kwargs)
    params = list(inspect.signature(spec.cls.__init__).parameters.values())[2:]
    out = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    out.update(kwargs)
    return out


def get_attn_layer(name: Optional[str], **kwargs) -> Optional[Callable[[int], nn.Module]]:
    """A constructor `f(channels) -> module` for this attention type, or None for "none"."""
    spec = _spec(name)
    if spec.cls is None:
        if kwargs:
            raise ValueError(f"attention 'none' takes no options, got {', '.join(sorted(kwargs))}")
        return None
    _check_kwargs(str(name), spec.cls, kwargs)
    return functools.partial(spec.cls, **kwargs) if kwargs else spec.cls


def create_attention(name: Optional[str], channels: int, **kwargs) -> Optional[nn.Module]:
    """Build attention `name` for a `channels`-channel feature map; None for "none".

    Example: `block.attn = create_attention("simam", 256, e_lambda=0.1)`.
    """
    layer = get_attn_layer(name, **kwargs)
    return None if layer is None else layer(channels)
