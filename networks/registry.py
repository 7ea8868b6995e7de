"""The model registry: every architecture of the SimAM experiments as a small registered function.

`create_model("resnet50", num_classes=1000, attention="simam", attention_kwargs={"e_lambda": 0.1})`
builds the network the SimAM code trained. The attention type decides where the module goes
(`networks.attention.default_position`); `attn_position="conv"|"out"` overrides it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch import nn

from .attention import default_position, get_attn_layer, resolved_kwargs
from .init import check_init
from .cifar.mobilenetv2 import CifarMobileNetV2
from .cifar.resnet import BasicBlock as CifarBasic
from .cifar.resnet import Bottleneck as CifarBottleneck
from .cifar.resnet import CifarPreResNet, CifarResNet, PreBasicBlock, PreBottleneck
from .cifar.wideresnet import WideResNet
from .imagenet.alexnet import AlexNet
from .imagenet.mobilenetv2 import MobileNetV2
from .imagenet.resnet import BasicBlock, Bottleneck, ResNet
from .layers import AttnLayer
from .names import SIMAM_CIFAR_NAMES

__all__ = ["SIMAM_CIFAR_NAMES", "ModelInfo", "create_model", "list_models", "model_info", "register_model"]

# SIMAM_CIFAR_NAMES: the SimAM code's CIFAR `--arch` names -> registry names (torch-free, in names.py)


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of the code needs to know about an architecture without building it."""

    name: str
    family: str  # "imagenet" (224x224 and the 128x128 AlexNet) or "cifar" (32x32)
    input_size: int
    num_classes: int  # the usual head size of its dataset


_MODELS: dict[str, tuple[Callable[..., nn.Module], ModelInfo]] = {}


def register_model(family: str, input_size: int, num_classes: int) -> Callable:
    """Decorator: register `fn(num_classes, attn_layer, attn_position, **kwargs)` under its name."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[fn.__name__] = (fn, ModelInfo(fn.__name__, family, input_size, num_classes))
        return fn

    return wrap


def list_models(family: Optional[str] = None) -> list[str]:
    """Sorted names of the registered architectures (optionally of one family)."""
    return sorted(n for n, (_, info) in _MODELS.items() if family is None or info.family == family)


def model_info(name: str) -> ModelInfo:
    """Family, input size and usual number of classes of architecture `name`."""
    if name not in _MODELS:
        raise ValueError(f"unknown architecture {name!r}; valid: {', '.join(list_models())}")
    return _MODELS[name][1]


def create_model(
    name: str,
    *,
    num_classes: int,
    attention: Optional[str] = None,
    attention_kwargs: Optional[dict[str, Any]] = None,
    init: str = "original",
    **model_kwargs: Any,
) -> nn.Module:
    """Build architecture `name` with `attention` ("none"/None, "simam", "se", "cbam", "eca", "srm", "gc").

    `init`: "original" (what the SimAM code did for this architecture) or "kaiming"; see networks/init.py.
    """
    model_info(name)  # raises ValueError listing the valid names
    check_init(init)
    fn = _MODELS[name][0]
    attn_layer = get_attn_layer(attention, **dict(attention_kwargs or {}))
    model_kwargs.setdefault("attn_position", default_position(attention))
    try:
        model = fn(num_classes=int(num_classes), attn_layer=attn_layer, init=init, **model_kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise ValueError(f"{name}: {e}") from None  # an option this architecture does not have
    # recorded in checkpoints, so that a SimAM checkpoint is not loaded into a plain network or
    # one with another lambda (their state dicts are identical: SimAM has no parameters)
    model.model_spec = {
        "arch": name, "attention": str(attention or "none").lower(), "num_classes": int(num_classes),
        "attention_kwargs": {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                             for k, v in resolved_kwargs(attention, **dict(attention_kwargs or {})).items()
                             if k != "impl"},  # how SimAM is computed, not what it computes
    }
    return model


# ----------------------------------------------------------------------------- ImageNet (224x224)
def _resnet(block, layers, num_classes: int, attn_layer: AttnLayer, **kwargs: Any) -> ResNet:
    return ResNet(block, layers, num_classes=num_classes, attn_layer=attn_layer, **kwargs)


@register_model("imagenet", 224, 1000)
def resnet18(num_classes: int = 1000, attn_layer: AttnLayer = None, **kwargs: Any) -> nn.Module:
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes, attn_layer, **kwargs)


@register_model("imagenet", 224, 1000)
def resnet34(num_classes: int = 1000, attn_layer: AttnLayer = None, **kwargs: Any) -> nn.Module:
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes, attn_layer, **kwargs)


@register_model("imagenet", 224, 1000)
def resnet50(num_classes: int = 1000, attn_layer: AttnLayer = None, **kwargs: Any) -> nn.Module:
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, attn_layer, **kwargs)


@register_model("imagenet", 224, 1000)
def resnet101(num_classes: int = 1000, attn_layer: AttnLayer = None, **kwargs: Any) -> nn.Module:
    return _resnet(Bottleneck, [3, 4, 23, 3], num_classes, attn_layer, **kwargs)


@register_model("imagenet", 224, 1000)
def resnet152(num_classes: int = 1000, attn_layer: AttnLayer = None, **kwargs: Any) -> nn.Module:
    return _resnet(Bottleneck, [3, 8, 36, 3], num_classes, attn_layer, **kwargs)


@register_model("imagenet", 224, 1000)
def resnext50_32x4d(num_classes: int = 1000, attn_layer: AttnLayer = None, **kwargs: Any) -> nn.Module:
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, attn_layer, groups=32, width_per_group=4, **kwargs)


@register_model("imagenet", 224, 1000)
def resnet50d(num_classes: int = 1000, attn_layer: AttnLayer = None, **kwargs: Any) -> nn.Module:
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, attn_layer, deep_stem=True, stem_width=32, avg_down=True, **kwargs)


@register_model("imagenet", 224, 1000)
def mobilenet_v2(num_classes: int = 1000, attn_layer: AttnLayer = None, **kwargs: Any) -> nn.Module:
    return MobileNetV2(num_classes=num_classes, attn_layer=attn_layer, **kwargs)


@register_model("imagenet", 128, 10)
def alexnet(num_classes: int = 10, attn_layer: AttnLayer = None, **kwargs: Any) -> nn.Module:
    return AlexNet(num_classes=num_classes, attn_layer=attn_layer, **kwargs)


# ----------------------------------------------------------------------------- CIFAR (32x32)
_CIFAR_BLOCKS = {"basic": (CifarBasic, PreBasicBlock), "bottleneck": (CifarBottleneck, PreBottleneck)}
# blocks per stage for (depth, block) as in the SimAM code
_CIFAR_DEPTHS = {
    20: {"basic": 3, "bottleneck": 3},
    32: {"basic": 5, "bottleneck": 5},
    56: {"basic": 9, "bottleneck": 6},
    110: {"basic": 18, "bottleneck": 12},
    164: {"basic": 27, "bottleneck": 18},
}


def _cifar_resnet(depth: int, pre: bool, block: str, num_classes: int, attn_layer: AttnLayer, **kwargs: Any) -> nn.Module:
    if block not in _CIFAR_BLOCKS:
        raise ValueError(f"unknown block {block!r}; valid: {', '.join(sorted(_CIFAR_BLOCKS))}")
    n = _CIFAR_DEPTHS[depth][block]
    cls = CifarPreResNet if pre else CifarResNet
    return cls(_CIFAR_BLOCKS[block][int(pre)], [n, n, n], num_classes=num_classes, attn_layer=attn_layer, **kwargs)


@register_model("cifar", 32, 100)
def cifar_resnet20(num_classes: int = 100, attn_layer: AttnLayer = None, block: str = "basic", **kwargs: Any) -> nn.Module:
    return _cifar_resnet(20, False, block, num_classes, attn_layer, **kwargs)


@register_model("cifar", 32, 100)
def cifar_resnet32(num_classes: int = 100, attn_layer: AttnLayer = None, block: str = "basic", **kwargs: Any) -> nn.Module:
    return _cifar_resnet(32, False, block, num_classes, attn_layer, **kwargs)


@register_model("cifar", 32, 100)
def cifar_resnet56(num_classes: int = 100, attn_layer: AttnLayer = None, block: str = "basic", **kwargs: Any) -> nn.Module:
    return _cifar_resnet(56, False, block, num_classes, attn_layer, **kwargs)


@register_model("cifar", 32, 100)
def cifar_resnet110(num_classes: int = 100, attn_layer: AttnLayer = None, block: str = "basic", **kwargs: Any) -> nn.Module:
    return _cifar_resnet(110, False, block, num_classes, attn_layer, **kwargs)


@register_model("cifar", 32, 100)
def cifar_resnet164(num_classes: int = 100, attn_layer: AttnLayer = None, block: str = "bottleneck", **kwargs: Any) -> nn.Module:
    return _cifar_resnet(164, False, block, num_classes, attn_layer, **kwargs)


@register_model("cifar", 32, 100)
def cifar_preresnet20(num_classes: int = 100, attn_layer: AttnLayer = None, block: str = "basic", **kwargs: Any) -> nn.Module:
    return _cifar_resnet(20, True, block, num_classes, attn_layer, **kwargs)


@register_model("cifar", 32, 100)
def cifar_preresnet32(num_classes: int = 100, attn_layer: AttnLayer = None, block: str = "basic", **kwargs: Any) -> nn.Module:
    return _cifar_resnet(32, True, block, num_classes, attn_layer, **kwargs)


@register_model("cifar", 32, 100)
def cifar_preresnet56(num_classes: int = 100, attn_layer: AttnLayer = None, block: str = "basic", **kwargs: Any) -> nn.Module:
    return _cifar_resnet(56, True, block, num_classes, attn_layer, **kwargs)


@register_model("cifar", 32, 100)
def cifar_preresnet110(num_classes: int = 100, attn_layer: AttnLayer = None, block: str = "basic", **kwargs: Any) -> nn.Module:
    return _cifar_resnet(110, True, block, num_classes, attn_layer, **kwargs)


@register_model("cifar", 32, 100)
def cifar_preresnet164(num_classes: int = 100, attn_layer: AttnLayer = None, block: str = "bottleneck", **kwargs: Any) -> nn.Module:
    return _cifar_resnet(164, True, block, num_classes, attn_layer, **kwargs)


@register_model("cifar", 32, 100)
def cifar_wrn28_10(num_classes: int = 100, attn_layer: AttnLayer = None, **kwargs: Any) -> nn.Module:
    return WideResNet(28, 10, num_classes=num_classes, attn_layer=attn_layer, **kwargs)


@register_model("cifar", 32, 100)
def cifar_wrn40_10(num_classes: int = 100, attn_layer: AttnLayer = None, **kwargs: Any) -> nn.Module:
    return WideResNet(40, 10, num_classes=num_classes, attn_layer=attn_layer, **kwargs)


@register_model("cifar", 32, 100)
def cifar_wrn16_8(num_classes: int = 100, attn_layer: AttnLayer = None, **kwargs: Any) -> nn.Module:
    return WideResNet(16, 8, num_classes=num_classes, attn_layer=attn_layer, **kwargs)


@register_model("cifar", 32, 100)
def cifar_mobilenetv2(num_classes: int = 100, attn_layer: AttnLayer = None, **kwargs: Any) -> nn.Module:
    return CifarMobileNetV2(num_classes=num_classes, attn_layer=attn_layer, **kwargs)
