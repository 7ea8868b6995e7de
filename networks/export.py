"""Writing a model's weights for other code: the SimAM code's layout, torchvision's, or ours.

`save_weights(model, path, format="original"|"torchvision"|"ours", backbone_only=False)`:

- "original": `{"state_dict": ...}` with the SimAM code's key names, what its `--save_weights`
  wrote and what its mmdetection backbone (`mmdet/models/backbones/resnet_simam.py`, `ResNetAM`,
  loaded with mmcv's `load_checkpoint(strict=False)`) reads: the attention module wrapped in an
  `nn.Sequential` with the layer it follows -- SimAM behind the 3x3 conv (`layer1.0.conv2.0.weight`),
  SE/CBAM behind the block's last BN (`layer1.0.bn3.0.weight` + `layer1.0.bn3.1.fc.0.weight`) or,
  in pre-activation blocks and the WRN, behind the last conv; MobileNetV2 with SimAM inside the
  depthwise ConvBNReLU (its BN at index 2), SE/CBAM appended to `features.N.conv`, and the head
  at `classifier.0`. Only the attention types of the SimAM code (none, simam, se, cbam) at their
  default positions have such a layout; AlexNet has none (its notebook is PaddlePaddle).
- "torchvision": a bare state dict with torchvision's names, for torchvision's ResNets, ResNeXt
  and MobileNetV2 without attention parameters (none, or SimAM, which has none: torchvision's
  network then simply runs without it).
- "ours": `{"model": ..., "model_spec": ...}`, which `networks.load_weights` checks against the
  model it loads into.

A model wrapped in DataParallel/DDP or torch.compile is unwrapped first (no `module.`/`_orig_mod.`
in the keys). `backbone_only=True` leaves out the classifier (`fc`, `linear`, `classifier`); the mmdetection
backbone ignores it anyway (it deletes its `fc` before loading). Tensors are always detached CPU
copies, and the file is written atomically (temporary file in the same folder, then
`os.replace`), so `torch.load(path, weights_only=True)` reads it on any machine.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Union

import torch
from torch import nn

from .cifar.mobilenetv2 import CifarInvertedResidual
from .cifar.resnet import BasicBlock as CifarBasic
from .cifar.resnet import Bottleneck as CifarBottleneck
from .cifar.resnet import PreBasicBlock, PreBottleneck
from .cifar.wideresnet import WideBasicBlock
from .imagenet.mobilenetv2 import InvertedResidual, MobileNetV2
from .imagenet.resnet import BasicBlock, Bottleneck
from .weights import WeightsError

__all__ = ["WEIGHT_FORMATS", "TORCHVISION_ARCHS", "save_weights", "unwrap", "weights_state_dict"]

WEIGHT_FORMATS = ("original", "torchvision", "ours")
# our architectures whose keys are torchvision's (attention="none")
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "mobilenet_v2")
_ORIGINAL_ATTENTIONS = ("none", "simam", "se", "cbam")
_PARAMETER_FREE = ("none", "simam")
# block type -> the layer the SimAM code wrapped together with the attention, per position
_WRAPPED_LAYER: dict[type, dict[str, str]] = {
    BasicBlock: {"conv": "conv2", "out": "bn2"},
    Bottleneck: {"conv": "conv2", "out": "bn3"},
    CifarBasic: {"conv": "conv2", "out": "bn2"},
    CifarBottleneck: {"conv": "conv2", "out": "bn3"},
    PreBasicBlock: {"conv": "conv2", "out": "conv2"},
    PreBottleneck: {"conv": "conv2", "out": "conv3"},
    WideBasicBlock: {"conv": "conv2", "out": "conv2"},
    CifarInvertedResidual: {"conv": "conv2", "out": "bn3"},
}
_HEADS = ("fc", "linear", "classifier")


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DataParallel/DistributedDataParallel (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _spec(model: nn.Module) -> dict[str, Any]:
    spec = getattr(model, "model_spec", None)
    if not spec:
        raise WeightsError("the model has no model_spec: build it with networks.create_model to export its weights")
    return dict(spec)


def _block_renames(prefix: str, block: nn.Module) -> list[tuple[str, str]]:
    """(our key prefix, the original's) for one block whose attention the SimAM code wrapped."""
    if isinstance(block, InvertedResidual):
        last = len(block.conv)
        if block.attn_position == "conv":  # SimAM between the depthwise conv and its BN: BN 1 -> 2
            dw = last - 3
            return [(f"{prefix}conv.{dw}.1.", f"{prefix}conv.{dw}.2.")]
        return [(f"{prefix}attn.", f"{prefix}conv.{last}.")]  # appended after the projection BN
    layer = _WRAPPED_LAYER[type(block)][block.attn_position]
    return [(f"{prefix}{layer}.", f"{prefix}{layer}.0."), (f"{prefix}attn.", f"{prefix}{layer}.1.")]


def _original_renames(model: nn.Module, spec: dict[str, Any]) -> list[tuple[str, str]]:
    """Prefix renames from our layout to the SimAM code's; refuses what it could not hold."""
    from .attention import default_position

    attention = spec.get("attention", "none")
    if spec.get("arch") == "alexnet":
        raise WeightsError("AlexNet has no original PyTorch layout (its notebook is PaddlePaddle): use weights_format=ours")
    if attention not in _ORIGINAL_ATTENTIONS:
        raise WeightsError(f"the SimAM code has no {attention!r} attention, so no original layout for it: use weights_format=ours")
    renames = [("classifier.1.", "classifier.0.")] if isinstance(model, MobileNetV2) else []  # the original had no dropout
    for name, module in model.named_modules():
        if getattr(module, "attn", None) is None:
            continue
        if module.attn_position != default_position(attention):
            raise WeightsError(f"{name} has its {attention} module at attn_position={module.attn_position!r}, where the "
                               "SimAM code never put it: no original layout; use weights_format=ours")
        renames += _block_renames(f"{name}.", module)
    return renames


def _rename(key: str, renames: list[tuple[str, str]]) -> str:
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _check_torchvision(spec: dict[str, Any]) -> None:
    if spec.get("arch") not in TORCHVISION_ARCHS:
        raise WeightsError(f"torchvision has no {spec.get('arch')} network: use weights_format=original or ours "
                           f"(torchvision layout: {', '.join(TORCHVISION_ARCHS)})")
    if spec.get("attention", "none") not in _PARAMETER_FREE:
        raise WeightsError(f"torchvision's networks cannot hold the parameters of {spec['attention']} attention: "
                           "use weights_format=original or ours")


def weights_state_dict(model: nn.Module, format: str = "original", backbone_only: bool = False) -> dict[str, Any]:
    """The object `save_weights` writes: detached CPU tensors under the format's key names."""
    if format not in WEIGHT_FORMATS:
        raise WeightsError(f"unknown weights format {format!r}; valid: {', '.join(WEIGHT_FORMATS)}")
    model = unwrap(model)
    spec = _spec(model)
    renames: list[tuple[str, str]] = []
    if format == "original":
        renames = _original_renames(model, spec)
    elif format == "torchvision":
        _check_torchvision(spec)
    heads = tuple(f"{h}." for h in _HEADS if isinstance(getattr(model, h, None), nn.Module))
    sd: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if backbone_only and key.startswith(heads):
            continue
        sd[_rename(key, renames)] = value.detach().to("cpu", copy=True)
    if format == "original":
        return {"state_dict": sd}
    if format == "torchvision":
        return sd
    return {"model": sd, "model_spec": spec, "backbone_only": bool(backbone_only)}


def _write_atomic(obj: Any, path: str, save: Callable[[Any, Any], None]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_weights(
    model: nn.Module,
    path: Union[str, os.PathLike],
    format: str = "original",
    backbone_only: bool = False,
) -> dict[str, Any]:
    """Write `model`'s weights to `path` in `format` (see the module docstring); returns what was written.

    Raises `WeightsError` (one line) for a format the model cannot be written in or a path that
    cannot be written; nothing is left at `path` then.
    """
    path = os.fspath(path)
    obj = weights_state_dict(model, format, backbone_only)
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise WeightsError(f"cannot write {path}: the folder {os.path.dirname(os.path.abspath(path))} does not exist")
    try:
        _write_atomic(obj, path, torch.save)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
        raise WeightsError(f"cannot write {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return obj
