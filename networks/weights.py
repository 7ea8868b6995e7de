"""Loading weights from this project's checkpoints, the SimAM code's checkpoints and torchvision.

The SimAM code stored attention modules inside `nn.Sequential` wrappers (`conv2.0.weight` +
`conv2.1.*`, `bn3.0.*` + `bn3.1.*`, MobileNetV2's `features.N.conv.M`), saved DataParallel models
(`module.`), and its thop profiling left `total_ops`/`total_params` buffers in the state dict.
`load_weights` undoes all of that, then loads strictly: a mismatch is an error naming the first
keys and the likely cause, never a silently random network (the SimAM script's `strict=False`).
Before the keys are compared, the checkpoint's attention type is read from its keys
(`networks.checkpoint_info.inspect_checkpoint`): a SimAM checkpoint of the SimAM code has the
same parameters as a plain one, so only its wrapped convs (`conv2.0.weight`) tell them apart; a
strict load into a model of another attention type is refused with the flags that build the
right one.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping, NamedTuple, Optional, Union

import torch
from torch import nn

from .checkpoint_info import inspect_checkpoint, strip_wrappers

__all__ = ["LoadReport", "WeightsError", "check_attention", "extract_state_dict", "inspect_checkpoint", "load_weights", "read_checkpoint",
           "to_model_keys"]

_THOP_KEYS = ("total_ops", "total_params")
# (pattern, replacement) tried in order for a key the model does not have; a rename is kept only
# if it produces a key of the model. Comments give where the pattern comes from.
_RENAMES = [
    (re.compile(r"^(.*)\.(conv\d|bn\d)\.0\.([^.]+)$"), r"\1.\2.\3"),  # layer wrapped with its attention
    (re.compile(r"^(.*)\.(conv\d|bn\d)\.1\.(.+)$"), r"\1.attn.\3"),  # the wrapped attention itself
    (re.compile(r"^(features\.\d+\.conv\.\d+)\.2\.([^.]+)$"), r"\1.1.\2"),  # MobileNetV2 dw BN behind SimAM
    (re.compile(r"^(features\.\d+)\.conv\.\d+\.(.+)$"), r"\1.attn.\2"),  # MobileNetV2 appended attention
    (re.compile(r"^classifier\.0\.([^.]+)$"), r"classifier.1.\1"),  # MobileNetV2 head without dropout
]
_HEAD_RE = re.compile(r"^(fc|linear|classifier\.\d+|head)\.(weight|bias)$")


class WeightsError(ValueError):
    """The weights cannot be read or do not fit the model; the message says why in one line."""


class LoadReport(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]
    renamed: int  # keys renamed from the SimAM code's layout
    format: str  # "project", "simam", "state_dict"


def _safe_globals() -> list[Any]:
    """Non-tensor types that old checkpoints commonly hold (numpy scalars for accuracies)."""
    try:
        import numpy as np

        out: list[Any] = [np.dtype, np.ndarray]
        try:
            from numpy.core.multiarray import scalar  # numpy < 2 pickles scalars through this
        except Exception:  # pragma: no cover - numpy 2 without the alias
            scalar = None
        try:
            from numpy._core.multiarray import scalar as scalar2
        except Exception:  # pragma: no cover
            scalar2 = None
        out += [s for s in (scalar, scalar2) if s is not None]
        out += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32")]
        return out
    except ImportError:  # pragma: no cover
        return []


def read_checkpoint(path: Union[str, os.PathLike], trust: bool = False, mmap: bool = False) -> Any:
    """`torch.load` on CPU with `weights_only=True`; full unpickling only when `trust` is set.
    `mmap`: map the tensors instead of reading them (to look at a checkpoint's small entries);
    files torch cannot map (the legacy format) are read as usual."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"checkpoint not found: {path} (check the path)")
    if os.path.getsize(path) == 0:
        raise WeightsError(f"checkpoint {path} is empty (an interrupted save?); use an older checkpoint")
    if mmap:
        try:
            with torch.serialization.safe_globals(_safe_globals()):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - not mappable or not safe: the full read below says why
            pass
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - classified below
        msg = str(e)
        # torch mentions weights_only in every such failure, also for bytes that are no pickle at all
        if "Unsupported operand" in msg or "invalid load key" in msg:
            raise WeightsError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle); check the path") from None
        unsafe = "weights_only" in msg or "Unsupported global" in msg or "WeightsUnpickler" in msg
        if unsafe and trust:
            try:
                return torch.load(path, map_location="cpu", weights_only=False)
            except Exception as e2:  # noqa: BLE001
                raise WeightsError(f"cannot read checkpoint {path}: {type(e2).__name__}: {str(e2).splitlines()[0]}") from None
        if unsafe:
            raise WeightsError(
                f"checkpoint {path} contains pickled Python objects besides tensors; if you trust its source, "
                "load it with trust_checkpoint=true (Python: trust=True)"
            ) from None
        first = msg.splitlines()[0] if msg else type(e).__name__
        raise WeightsError(f"checkpoint {path} is corrupt or truncated ({first}); use an older checkpoint") from None


def extract_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], str]:
    """The model's state dict inside a checkpoint object, and which layout it came in."""
    if isinstance(obj, nn.Module):
        return obj.state_dict(), "state_dict"
    if not isinstance(obj, Mapping):
        raise WeightsError(f"expected a checkpoint dict or a state dict, got {type(obj).__name__}")
    if "model" in obj and isinstance(obj["model"], Mapping):
        return dict(obj["model"]), "project"
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        return dict(obj["state_dict"]), "simam"
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError("no state dict found in the checkpoint (keys: " + ", ".join(map(str, list(obj)[:6])) + ")")
    return dict(obj), "state_dict"


def to_model_keys(sd: Mapping[str, torch.Tensor], model_keys: set[str]) -> tuple[dict[str, torch.Tensor], int]:
    """Strip wrapper prefixes and thop buffers, rename the SimAM code's layout to ours; (state dict, renamed keys)."""
    out: dict[str, torch.Tensor] = {}
    renamed = 0
    for key, value in sd.items():
        key = strip_wrappers(str(key))
        if key.rsplit(".", 1)[-1] in _THOP_KEYS:
            continue
        if key not in model_keys:
            for pattern, repl in _RENAMES:
                new = pattern.sub(repl, key)
                if new != key and new in model_keys and new not in sd:
                    key, renamed = new, renamed + 1
                    break
        out[key] = value
    return out, renamed


def _cause(missing: list[str], unexpected: list[str], shape_errors: list[str], classes: Optional[int] = None) -> str:
    """A guess at why a state dict does not fit."""
    if shape_errors and all(_HEAD_RE.match(k.split(" ")[0]) for k in shape_errors):
        held = f" ({classes} in the checkpoint)" if classes else ""
        return f"the classifier has another number of classes{held}: set num_classes to it, or load with strict=False to skip the head"
    # ours (`.attn.`) and the SimAM code's wrapped attention (`bn2.1.fc.0.weight`, MobileNetV2's appended module)
    attn = re.compile(r"(^|\.)attn\.|\.(conv\d|bn\d)\.1\.|^features\.\d+\.conv\.\d+\.(fc|ChannelGate|SpatialGate)\.")
    if (missing or unexpected) and all(attn.search(k) for k in missing + unexpected):
        if unexpected and not missing:
            return "the checkpoint has attention modules the model lacks: other attention type?"
        if missing and not unexpected:
            return "the model has attention modules the checkpoint lacks: other attention type?"
        return "the attention modules differ: other attention type or reduction?"
    return "other architecture, attention type or number of classes?"


def _list(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_weights(
    model: nn.Module,
    source: Union[str, os.PathLike, Mapping[str, Any]],
    strict: bool = True,
    trust: bool = False,
) -> LoadReport:
    """Load weights from a path or a dict into `model` (see the module docstring for the formats).

    With `strict=False`, loads what matches (by name and shape) and reports the rest in the
    returned `LoadReport`; with `strict=True` any mismatch raises `WeightsError`.
    """
    obj = read_checkpoint(source, trust=trust) if isinstance(source, (str, os.PathLike)) else source
    sd, fmt = extract_state_dict(obj)
    target = model.state_dict()
    sd, renamed = to_model_keys(sd, set(target))
    if isinstance(obj, Mapping) and strict:
        _check_spec(model, obj.get("model_spec"))
    info = inspect_checkpoint(obj)
    if strict:
        check_attention(model, info)
    shape_errors = [
        f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in sd.items()
        if k in target and isinstance(v, torch.Tensor) and v.shape != target[k].shape
    ]
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    if strict and (missing or unexpected or shape_errors):
        parts = []
        if shape_errors:
            parts.append("shape mismatch: " + _list(shape_errors, 2))
        if missing:
            parts.append("missing: " + _list(missing))
        if unexpected:
            parts.append("unexpected: " + _list(unexpected))
        raise WeightsError(f"weights do not fit {type(model).__name__} ({'; '.join(parts)}): {_cause(missing, unexpected, shape_errors, info['num_classes'])}")
    bad = {k.split(" ")[0] for k in shape_errors}
    loadable = {k: v for k, v in sd.items() if k in target and k not in bad}
    model.load_state_dict(loadable, strict=False)
    return LoadReport(missing + sorted(bad), unexpected, renamed, fmt)


def _check_spec(model: nn.Module, spec: Optional[Mapping[str, Any]]) -> None:
    """Our checkpoints record arch and attention: refuse a parameter-free mismatch (simam vs none)."""
    mine = getattr(model, "model_spec", None)
    if not spec or not mine:
        return
    for key in ("arch", "attention", "attention_kwargs"):
        if key in spec and key in mine and str(spec[key]) != str(mine[key]):
            raise WeightsError(
                f"checkpoint was trained with {key}={spec[key]} but the model has {key}={mine[key]}: "
                f"set {key} to {spec[key]}"
            )


_ATTN_NAMES = {"simam": "SimAM", "se": "SE", "cbam": "CBAM", "eca": "ECA", "srm": "SRM", "gc": "GC"}
# the parameter the SimAM code's --attention_param sets, and its config key here
_PARAM_KEYS = {"simam": "attention.e_lambda", "se": "attention.reduction", "cbam": "attention.reduction"}


def _network_name(arch: str, attention: str) -> str:
    """E.g. "SimAM-ResNet-50", "plain ResNet-20 (CIFAR)"."""
    m = re.match(r"^(cifar_)?(pre)?resnet(\d+)$", arch)
    base = f"{'Pre' if m.group(2) else ''}ResNet-{m.group(3)}{' (CIFAR)' if m.group(1) else ''}" if m else arch
    base = {"mobilenet_v2": "MobileNetV2", "cifar_mobilenetv2": "MobileNetV2 (CIFAR)", "alexnet": "AlexNet"}.get(base, base)
    return f"{_ATTN_NAMES[attention]}-{base}" if attention in _ATTN_NAMES else f"plain {base}"


def _suggested_param(attention: str, arch: str, inferred: Optional[int]) -> Optional[str]:
    """The --attention_param to pass: the reduction read from the shapes, SimAM's published lambda."""
    if attention in ("se", "cbam"):
        return str(inferred or 16)
    if attention != "simam":
        return None
    from .registry import model_info  # late import: registry imports nothing from here

    try:
        family = model_info(arch).family
    except ValueError:
        family = "imagenet"
    return "1e-5" if arch == "alexnet" else "0.1" if family == "imagenet" else "1e-4"


def check_attention(model: nn.Module, info: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose keys show another attention type than the model's."""
    mine = (getattr(model, "model_spec", None) or {}).get("attention")
    theirs = info.get("attention")
    if not mine or not theirs or theirs == mine:
        return
    arch = str((getattr(model, "model_spec", None) or {}).get("arch") or info.get("arch") or type(model).__name__)
    param = _suggested_param(theirs, arch, info.get("attention_param"))
    if theirs == "none":
        flags, overrides = "remove --attention_type (or pass --attention_type none)", "attention=none"
    else:
        flags = f"add --attention_type {theirs}" + (f" --attention_param {param}" if param else "")
        overrides = f"attention={theirs}" + (f" {_PARAM_KEYS[theirs]}={param}" if theirs in _PARAM_KEYS else "")
    evidence = ", ".join((info.get("evidence") or [])[:2])
    raise WeightsError(
        f"this checkpoint holds {_network_name(arch, theirs)} weights (keys {evidence or 'of the classifier only'}) "
        f"but the model was built with attention={mine}: {flags} (config overrides: {overrides})"
    )
