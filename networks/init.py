"""Weight initialisation: what the SimAM code did for each architecture ("original") or kaiming.

`create_model(..., init="original")` (config key `model.init`, the default) reproduces the
initialisation the original experiments started from:

- ImageNet ResNets/ResNeXt/ResNet-D (torchvision's scheme, the SimAM code's `imagenet/resnet.py`):
  kaiming-normal fan_out convs, BN weight 1 / bias 0, Linear layers PyTorch's default;
- ImageNet MobileNetV2 (`imagenet/mobilenetv2.py`): the same, conv biases 0 and every Linear
  N(0, 0.01) with bias 0 (also the SE/CBAM layers inside it: the loop covers every module);
- WRN (`cifar/wideresnet.py`): conv N(0, sqrt(2 / (k*k*out))) -- kaiming-normal fan_out --,
  BN 1 / 0, head bias 0, Linear weights PyTorch's default;
- CIFAR ResNet, PreResNet and MobileNetV2 (`cifar/resnet.py`, `preresnet.py`, `mobilenetv2.py`):
  no init code at all, i.e. PyTorch's default `reset_parameters` (kaiming-uniform a=sqrt(5) for
  conv/Linear weights, uniform(+-1/sqrt(fan_in)) biases, BN 1 / 0);
- AlexNet (the PaddlePaddle notebook): Paddle's default initializers, see `paddle_init`.

`init="kaiming"` applies the first scheme to every architecture (MobileNetV2 keeps its
N(0, 0.01) head, AlexNet's and the CIFAR nets' Linear layers keep PyTorch's default), which is
what this project did before `model.init` existed.
"""
from __future__ import annotations

import math
from typing import Optional

from torch import nn

__all__ = ["INIT_SCHEMES", "check_init", "initialize", "kaiming_init", "paddle_init"]

INIT_SCHEMES = ("original", "kaiming")
# what "original" means for an architecture (each model class names its own)
_ORIGINAL_KINDS = ("kaiming", "pytorch", "paddle")


def check_init(init: str) -> str:
    """Validate an init scheme name ("original" or "kaiming")."""
    if init not in INIT_SCHEMES:
        raise ValueError(f"unknown init {init!r}; valid: {', '.join(INIT_SCHEMES)}")
    return init


def kaiming_init(model: nn.Module, linear_std: Optional[float] = None) -> None:
    """Kaiming-normal (fan_out, ReLU gain) convs with zero biases, norm layers weight 1 / bias 0.

    Linear layers keep PyTorch's default unless `linear_std` is given (N(0, linear_std), bias 0).
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
    _reset_attention(model)


def paddle_init(model: nn.Module) -> None:
    """PaddlePaddle 2.x defaults, the framework of the AlexNet notebook.

    Read in PaddlePaddle/Paddle (python/paddle/nn/layer/conv.py, `_ConvNd.__init__`'s
    `_get_default_param_initializer`; python/paddle/base/param_attr.py,
    `_set_default_param_initializer` / `_set_default_bias_initializer`; python/paddle/nn/layer/
    common.py, `Linear`):
    - `paddle.nn.Conv2D` weight ~ Normal(0, std) with std = sqrt(2 / (in_channels * kh * kw)),
      i.e. kaiming-normal fan_in (note: Paddle counts all `in_channels`, not in_channels/groups;
      AlexNet has no groups), bias 0;
    - `paddle.nn.Linear` weight ~ XavierUniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)), bias 0.
    Paddle stores a Linear weight as [in, out]; the distribution is symmetric in fan_in/fan_out,
    so drawing it in PyTorch's [out, in] shape gives the same law.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    _reset_attention(model)


def initialize(model: nn.Module, init: str, original: str, linear_std: Optional[float] = None) -> None:
    """Initialise `model` with scheme `init`; `original` names what the SimAM code did for it.

    `original` is "kaiming" (kaiming_init), "pytorch" (nothing: the modules' own
    reset_parameters at construction) or "paddle" (paddle_init).
    """
    check_init(init)
    if original not in _ORIGINAL_KINDS:
        raise ValueError(f"unknown original init {original!r}; valid: {', '.join(_ORIGINAL_KINDS)}")
    kind = original if init == "original" else "kaiming"
    if kind == "kaiming":
        kaiming_init(model, linear_std)
    elif kind == "paddle":
        paddle_init(model)


def _reset_attention(model: nn.Module) -> None:
    from .attention import GCBlock  # late import: attention imports nothing from here

    for m in model.modules():
        if isinstance(m, GCBlock):
            m.reset_parameters()
