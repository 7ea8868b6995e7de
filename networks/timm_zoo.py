"""Our networks inside timm: `import networks` registers every architecture x attention type.

Names: `<attention>_<architecture>` with the attention prefixes simam, se, cbam, eca, srm, gc
and `plain` for no attention, e.g. `simam_resnet50`, `se_resnet50`, `cbam_resnet50`,
`eca_resnet50`, `plain_resnet50`, `simam_cifar_resnet56`, `simam_mobilenet_v2`,
`simam_alexnet`. timm's own attention ResNets are spelt without the underscore
(`seresnet50`, `ecaresnet50d`, `gcresnet50t`) and are other networks (other SE/ECA/GC designs,
other stems); a name timm already has is never overwritten (see `register_timm_models`).

    import networks, timm
    model = timm.create_model("simam_resnet50")                    # SimAM-R50, lambda 0.1
    model = timm.create_model("simam_resnet50", checkpoint_path="checkpoints/best.pth")  # our logits
    timm.list_models("simam_*"), timm.list_models(module="timm_zoo")

What the entry points take, besides timm's `pretrained*`/`cache_dir` arguments: `num_classes`
(default: the architecture's usual head, 1000 / 100 CIFAR / 10 AlexNet), `in_chans` (3 only),
`drop_rate` (0 or None keep the architecture's own dropout -- timm's train.py always passes its
`--drop` default 0.0 --; another value replaces the head dropout of MobileNetV2 and AlexNet or
the WRN's block dropout), the attention's options (`e_lambda`, `reduction`, ...; SimAM's lambda
defaults to the paper's value for the family: 0.1 ImageNet, 1e-4 CIFAR, 1e-5 AlexNet) and any
other keyword of `networks.create_model` (`init`, `block`, `attn_position`). There are no
pretrained weights to download: `pretrained=True` is refused; load a checkpoint instead
(`checkpoint_path=`, train.py `--initial-checkpoint`, validate.py `--checkpoint`): timm reads the
weights under our checkpoints' "model" key, and the SimAM code's released checkpoints
("state_dict", attention wrapped in `conv2.0`/`bn3.1`) load too: a load_state_dict pre-hook
renames their keys to ours and refuses one of another attention type (as `networks.load_weights`). Each model's `pretrained_cfg` carries the input size,
crop fraction, interpolation and normalisation of its data sets, which timm's
`resolve_data_config` uses.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional

from torch import nn

from .attention import resolved_kwargs
from .registry import create_model, list_models, model_info
from .weights import check_attention, inspect_checkpoint, to_model_keys

__all__ = ["TIMM_PREFIXES", "clashes", "list_timm_models", "pretrained_cfg", "register_timm_models", "timm_name"]

# attention type -> the timm name prefix
TIMM_PREFIXES = {"simam": "simam", "se": "se", "cbam": "cbam", "eca": "eca", "srm": "srm", "gc": "gc", "none": "plain"}
_SIMAM_LAMBDA = {"imagenet": 0.1, "cifar": 1e-4, "alexnet": 1e-5}  # the paper's (and configs/) per family
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # the SimAM code's CIFAR values
_DROPOUT_KWARG = {"mobilenet_v2": "dropout", "alexnet": "dropout", "cifar_wrn16_8": "drop_rate",
                  "cifar_wrn28_10": "drop_rate", "cifar_wrn40_10": "drop_rate"}
_REGISTERED: dict[str, tuple[str, str]] = {}  # timm name -> (architecture, attention)
_CLASHES: list[str] = []  # names timm already had from elsewhere (not registered)


def timm_name(arch: str, attention: Optional[str]) -> str:
    """The timm name of architecture `arch` with `attention` ("none"/None: the `plain_` prefix)."""
    model_info(arch)  # ValueError listing the architectures
    key = str(attention or "none").lower()
    if key not in TIMM_PREFIXES:
        raise ValueError(f"unknown attention type {attention!r}; valid: {', '.join(sorted(TIMM_PREFIXES))}")
    return f"{TIMM_PREFIXES[key]}_{arch}"


def list_timm_models() -> list[str]:
    """Sorted timm names registered by this module."""
    return sorted(_REGISTERED)


def pretrained_cfg(arch: str, num_classes: int) -> dict[str, Any]:
    """timm's data config of an architecture: input size, crop, interpolation, normalisation."""
    info = model_info(arch)
    cifar = info.family == "cifar"
    return {
        "architecture": arch, "num_classes": num_classes, "input_size": (3, info.input_size, info.input_size),
        "crop_pct": 0.875 if info.family == "imagenet" and arch != "alexnet" else 1.0,  # Resize(256) + CenterCrop(224)
        "interpolation": "bilinear", "crop_mode": "center",
        "mean": _CIFAR_MEAN if cifar else _IMAGENET_MEAN, "std": _CIFAR_STD if cifar else _IMAGENET_STD,
    }


def _split_kwargs(arch: str, attention: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(attention options, model options): keywords that are options of the attention go to it."""
    names = set(resolved_kwargs(attention))  # the attention's options (all have defaults)
    attn = dict(kwargs.pop("attention_kwargs", None) or {})
    attn.update({k: kwargs.pop(k) for k in list(kwargs) if k in names})
    if attention == "simam" and "e_lambda" not in attn:
        attn["e_lambda"] = _SIMAM_LAMBDA["alexnet" if arch == "alexnet" else model_info(arch).family]
    return attn, kwargs


def _build(arch: str, attention: str, name: str, kwargs: dict[str, Any]) -> nn.Module:
    if kwargs.pop("pretrained", False):
        raise ValueError(f"{name}: no pretrained weights to download; load one of our checkpoints with "
                         "checkpoint_path= (train.py --initial-checkpoint, validate.py --checkpoint)")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    if kwargs.pop("in_chans", 3) != 3:
        raise ValueError(f"{name}: only 3 input channels (RGB)")
    drop_rate = kwargs.pop("drop_rate", None)
    if drop_rate:  # 0/None: the architecture's own dropout (timm's train.py passes --drop 0.0 by default)
        if arch not in _DROPOUT_KWARG:
            raise ValueError(f"{name}: has no dropout to set (drop_rate={drop_rate})")
        kwargs[_DROPOUT_KWARG[arch]] = float(drop_rate)
    num_classes = kwargs.pop("num_classes", None) or model_info(arch).num_classes
    attn_kwargs, model_kwargs = _split_kwargs(arch, attention, kwargs)
    model = create_model(arch, num_classes=num_classes, attention=attention, attention_kwargs=attn_kwargs, **model_kwargs)
    model.num_classes = int(num_classes)
    model.pretrained_cfg = model.default_cfg = pretrained_cfg(arch, int(num_classes))
    model.register_load_state_dict_pre_hook(_accept_original_layout)
    return model


def _accept_original_layout(module: nn.Module, state_dict: dict, prefix: str, *_: Any) -> None:
    """timm loads with a plain `load_state_dict`: let it read the SimAM code's checkpoints too.

    Renames the original layout to ours in place (as `networks.load_weights` does) after
    refusing a checkpoint whose keys show another attention type than the model's.
    """
    if prefix:  # only the root module's call
        return
    check_attention(module, inspect_checkpoint(dict(state_dict)))
    renamed, count = to_model_keys(state_dict, set(module.state_dict()))
    if count:
        state_dict.clear()
        state_dict.update(renamed)


def _entrypoint(arch: str, attention: str) -> Callable[..., nn.Module]:
    name = timm_name(arch, attention)

    def entry(**kwargs: Any) -> nn.Module:
        return _build(arch, attention, name, kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"{arch} with {attention} attention (networks.create_model({arch!r}, attention={attention!r}))"
    return entry


def register_timm_models() -> list[str]:
    """Register every architecture x attention type with timm (idempotent); returns the new names.

    A name timm already has from another module is skipped (and kept in `clashes()`), never overwritten.
    """
    from timm.models import is_model, model_entrypoint, register_model

    module = sys.modules[__name__]
    added = []
    for arch in list_models():
        for attention in TIMM_PREFIXES:
            resolved_kwargs(attention)  # every type must build
            name = timm_name(arch, attention)
            if is_model(name):
                if model_entrypoint(name).__module__ != __name__ and name not in _CLASHES:
                    _CLASHES.append(name)
                continue
            fn = _entrypoint(arch, attention)
            setattr(module, name, fn)
            register_model(fn)
            _REGISTERED[name] = (arch, attention)
            added.append(name)
    return added


def clashes() -> list[str]:
    """Names of ours that timm already had from elsewhere (not registered); empty with timm 1.0.x."""
    return list(_CLASHES)
