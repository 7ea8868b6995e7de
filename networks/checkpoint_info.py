"""What a checkpoint holds, read from its keys and shapes alone: layout, attention type, classes.

`inspect_checkpoint(obj)` takes a checkpoint object (ours, the SimAM code's, a bare state dict)
or a path to one (read with `torch.load(weights_only=True)` on the CPU) and returns a dict:

    container   "ours" ({"model", "model_spec", ...}), "original" (the SimAM code's own files:
                {"state_dict"} plus at most "epoch", "arch", "best_acc", "optimizer"), "other"
                (another {"state_dict"} file: timm, mmcv) or "state_dict" (a bare state dict)
    layout      "ours" (attention under `.attn.`), "original" (attention wrapped with the layer it
                follows: `conv2.0.weight` + `conv2.1.*`, `bn3.1.fc.0.weight`, MobileNetV2's
                `features.N.conv.M`, `classifier.0`), or "plain" (no attention keys: the names
                ours, the original and torchvision share)
    attention   "simam", "se", "cbam", "eca", "srm", "gc", "none", or None when the keys cannot
                tell (SimAM has no parameters: only the original's wrapping shows it; a plain
                state dict may be either "none" or "simam" in our layout)
    attention_param  SE/CBAM reduction from the shapes (C / hidden), else None
    num_classes the classifier's output size (None if no head was found)
    arch        the architecture the file names ("arch" of the original, our model_spec), or None
    evidence    up to 3 keys that show the attention type

The SimAM code's layout, read from its `networks/` (block.py, imagenet/resnet.py,
imagenet/mobilenetv2.py, wideresnet.py): SimAM wraps the 3x3 (or depthwise) conv, so its
blocks have `conv2.0.weight` and no `conv2.1.*`; SE and CBAM wrap the last BN (post-activation
blocks) or the last conv (pre-activation blocks, WRN) and add `<layer>.1.fc.0.weight` (SE) or
`<layer>.1.ChannelGate.mlp.1.weight` (CBAM); ImageNet MobileNetV2 puts SimAM inside the depthwise
ConvBNReLU (its BN moves to index 2) and appends SE/CBAM to `features.N.conv`.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping, Optional

import torch
from torch import nn

__all__ = ["ORIGINAL_CHECKPOINT_KEYS", "inspect_checkpoint", "strip_wrappers"]

# the keys of the SimAM code's checkpoint files (main_*.py save_checkpoint; --save_weights writes state_dict alone)
ORIGINAL_CHECKPOINT_KEYS = frozenset({"state_dict", "epoch", "arch", "best_acc", "optimizer"})
_PREFIXES = ("module.", "_orig_mod.")
_THOP_KEYS = ("total_ops", "total_params")

# attention-specific parameter names (suffix after the module that holds the attention)
_ATTN_PARAMS = [
    ("se", re.compile(r"^fc\.0\.weight$")),
    ("cbam", re.compile(r"^ChannelGate\.mlp\.1\.weight$")),
    ("srm", re.compile(r"^cfc$")),
    ("gc", re.compile(r"^conv_attn\.weight$")),
    ("eca", re.compile(r"^conv\.weight$")),
]
_OURS = re.compile(r"^(?:.*\.)?attn\.(.+)$")
_WRAPPED = re.compile(r"^(.*\.)?((?:conv|bn)\d)\.1\.(.+)$")  # original: attention behind convN/bnN
_MBV2_APPENDED = re.compile(r"^(features\.\d+\.conv\.\d+)\.((?:fc|ChannelGate)\..+)$")
_WRAPPED_CONV = re.compile(r"^(.*\.)?(conv\d)\.0\.weight$")
_MBV2_DW_BN = re.compile(r"^(features\.\d+\.conv\.\d+)\.2\.running_mean$")
_HEADS = (re.compile(r"^fc\.weight$"), re.compile(r"^linear\.weight$"), re.compile(r"^head\.weight$"),
          re.compile(r"^classifier\.(\d+)\.weight$"), re.compile(r"^classifier\.weight$"))


def strip_wrappers(key: str) -> str:
    """A key without DataParallel/DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes."""
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key.replace("._orig_mod.", ".")


def _container(obj: Any) -> tuple[str, Mapping[str, Any], Mapping[str, Any]]:
    """(container kind, state dict, the checkpoint dict around it)."""
    if isinstance(obj, nn.Module):
        return "state_dict", obj.state_dict(), {}
    if not isinstance(obj, Mapping):
        return "other", {}, {}
    if isinstance(obj.get("model"), Mapping):
        return "ours", obj["model"], obj
    if isinstance(obj.get("state_dict"), Mapping):
        kind = "original" if set(obj) <= ORIGINAL_CHECKPOINT_KEYS else "other"
        return kind, obj["state_dict"], obj
    return "state_dict", obj, {}


def _clean(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        key = strip_wrappers(str(key))
        if isinstance(value, torch.Tensor) and key.rsplit(".", 1)[-1] not in _THOP_KEYS:
            out[key] = value
    return out


def _param_kind(suffix: str) -> Optional[str]:
    for name, pattern in _ATTN_PARAMS:
        if pattern.match(suffix):
            return name
    return None


def _attention_from_keys(sd: Mapping[str, torch.Tensor]) -> tuple[Optional[str], str, list[str]]:
    """(attention, layout, evidence) from the parameter names of attention modules."""
    for key in sd:
        m = _OURS.match(key)
        if m and _param_kind(m.group(1)):
            return _param_kind(m.group(1)), "ours", _evidence(sd, r"(^|\.)attn\.")
    for key in sd:
        m = _WRAPPED.match(key) or _MBV2_APPENDED.match(key)
        suffix = m and m.groups()[-1]
        if suffix and _param_kind(suffix) in ("se", "cbam"):
            kind = _param_kind(suffix)
            return kind, "original", _evidence(sd, r"\.(fc\.0|ChannelGate\.mlp\.1)\.weight$")
    wrapped = [k for k in sd if _WRAPPED_CONV.match(k) and not _has_prefix(sd, k[: -len("0.weight")] + "1.")]
    dw_bn = [k for k in sd if _MBV2_DW_BN.match(k) and not _has_prefix(sd, k[: -len("2.running_mean")] + "1.")]
    if wrapped or dw_bn:
        return "simam", "original", (wrapped or dw_bn)[:3]
    return None, "plain", []


def _has_prefix(sd: Mapping[str, Any], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in sd)


def _evidence(sd: Mapping[str, Any], pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [k for k in sd if rx.search(k)][:3]


def _reduction(sd: Mapping[str, torch.Tensor], attention: Optional[str]) -> Optional[int]:
    """SE/CBAM reduction r from the first squeeze layer's shape (hidden = C // r)."""
    suffix = {"se": "fc.0.weight", "cbam": "ChannelGate.mlp.1.weight"}.get(str(attention))
    for key, value in sd.items():
        if suffix and key.endswith(suffix) and value.dim() == 2 and value.shape[0] > 0:
            hidden, channels = value.shape
            return int(round(channels / hidden))
    return None


def _num_classes(sd: Mapping[str, torch.Tensor]) -> Optional[int]:
    """Output size of the classifier: `fc`, `linear`, `head` or the last `classifier.N`."""
    found = []
    for key, value in sd.items():
        for rank, pattern in enumerate(_HEADS):
            m = pattern.match(key)
            if m and value.dim() == 2:
                index = int(m.group(1)) if m.groups() else 0
                found.append((rank, -index, int(value.shape[0])))
    return min(found)[2] if found else None


def inspect_checkpoint(checkpoint: Any) -> dict[str, Any]:
    """Layout, attention type, SE/CBAM reduction, classes and arch of a checkpoint (see the module doc)."""
    if isinstance(checkpoint, (str, os.PathLike)):
        from .weights import read_checkpoint  # late import: weights imports this module

        checkpoint = read_checkpoint(checkpoint)
    container, raw, outer = _container(checkpoint)
    sd = _clean(raw)
    attention, layout, evidence = _attention_from_keys(sd)
    spec = outer.get("model_spec") if container == "ours" else None
    if attention is None and isinstance(spec, Mapping) and spec.get("attention"):
        attention = str(spec["attention"])  # our own files say what they hold
    elif attention is None and container == "original":
        attention = "none"  # the SimAM code's own file without any wrapped attention
        evidence = _evidence(sd, r"(^|\.)conv2\.weight$|^features\.\d+\.conv\.\d+\.1\.running_mean$")
    if layout == "plain" and ("classifier.0.weight" in sd and "features.1.conv.0.0.weight" in sd):
        layout = "original"  # the SimAM code's MobileNetV2 head has no dropout: classifier.0
    arch = spec.get("arch") if isinstance(spec, Mapping) else outer.get("arch") if container == "original" else None
    return {
        "container": container,
        "layout": layout,
        "attention": attention,
        "attention_param": _reduction(sd, attention),
        "num_classes": _num_classes(sd),
        "arch": str(arch) if arch else None,
        "evidence": evidence,
    }
