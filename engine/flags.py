"""The original SimAM code's command-line flags, translated into Hydra overrides.

    python main_imagenet.py /data/imagenet --gpu 0,1,2,3 -a resnet50 --attention_type simam --attention_param 0.1
    -> data.root=/data/imagenet trainer.devices=4 model.arch=resnet50 attention=simam attention.e_lambda=0.1
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from networks.registry import SIMAM_CIFAR_NAMES

from .errors import UserError

__all__ = ["HYDRA_FLAGS", "override_value", "translate_argv"]

# Hydra's own flags pass through untouched (with the number of values they take)
HYDRA_FLAGS = {
    "-m": 0, "--multirun": 0, "--cfg": 1, "-c": 1, "--resolve": 0, "--package": 1, "-p": 1, "--help": 0, "-h": 0,
    "--hydra-help": 0, "--info": 0, "-i": 0, "--config-path": 1, "-cp": 1, "--config-name": 1, "-cn": 1,
    "--config-dir": 1, "-cd": 1, "--shell-completion": 0, "-sc": 1, "--run": 0, "-r": 0, "--version": 0,
}

_BLOCKS = {"basic": "basic", "bottleneck": "bottleneck", "bottlenect": "bottleneck"}


@dataclass
class _Flag:
    names: tuple[str, ...]
    takes_value: bool
    to: Callable[[str, dict], list[str]]


def _set(key: str) -> Callable[[str, dict], list[str]]:
    return lambda v, ctx: [f"{key}={v}"]


def _attention_type(v: str, ctx: dict) -> list[str]:
    ctx["attention"] = v.lower()
    return [f"attention={v.lower()}"]


def _attention_param(v: str, ctx: dict) -> list[str]:
    ctx["attention_param"] = v
    return []  # resolved after all flags are read, when the attention type is known


def _gpus(v: str, ctx: dict) -> list[str]:
    ids = _parse_gpu_ids(v)
    ctx["gpus"] = ids
    return []


def _parse_gpu_ids(v: str) -> list[int]:
    """'0,1,2,3' or '0-3' -> [0, 1, 2, 3]."""
    try:
        if re.fullmatch(r"\d+-\d+", v.strip()):
            a, b = (int(x) for x in v.split("-"))
            return list(range(a, b + 1))
        return [int(x) for x in v.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--gpu {v!r}: expected GPU ids such as 0,1,2,3 or 0-3") from None


def _cifar_arch(v: str, ctx: dict) -> list[str]:
    return [f"model.arch={SIMAM_CIFAR_NAMES.get(v, v)}"]


def _block(v: str, ctx: dict) -> list[str]:
    if v not in _BLOCKS:
        raise UserError(f"--block_type {v!r}: valid: basic, bottleneck")
    return [f"model.block={_BLOCKS[v]}"]


def _dataset(v: str, ctx: dict) -> list[str]:
    ctx["data"] = v
    return [f"data={v}"]


def _positional_data_dir(v: str, ctx: dict) -> list[str]:
    return [f"data.root={v}"]


_COMMON = [
    _Flag(("--attention_type",), True, _attention_type),
    _Flag(("--attention_param",), True, _attention_param),
    _Flag(("--seed",), True, _set("seed")),
    _Flag(("--resume",), True, _set("resume")),
    _Flag(("-e", "--evaluate"), False, lambda v, ctx: ["evaluate=true"]),
]
_FLAGS = {
    "imagenet": _COMMON + [
        _Flag(("-a", "--arch"), True, _set("model.arch")),
        _Flag(("-j", "--workers"), True, _set("data.workers")),
        _Flag(("--epochs",), True, _set("trainer.epochs")),
        _Flag(("-b", "--batch-size"), True, _set("data.batch_size")),
        _Flag(("--lr", "--learning-rate"), True, _set("optim.lr")),
        _Flag(("--momentum",), True, _set("optim.momentum")),
        _Flag(("--wd", "--weight-decay"), True, _set("optim.weight_decay")),
        _Flag(("--gpu",), True, _gpus),
        _Flag(("--cos_lr",), False, lambda v, ctx: ["sched=cosine"]),
        _Flag(("--save_weights",), True, _set("save_weights")),
    ],
    "cifar": _COMMON + [
        _Flag(("--arch",), True, _cifar_arch),
        _Flag(("--block_type",), True, _block),
        _Flag(("--dataset",), True, _dataset),
        _Flag(("--dataset_dir",), True, _set("data.root")),
        _Flag(("--batch_size",), True, _set("data.batch_size")),
        _Flag(("--num_epoch",), True, _set("trainer.epochs")),
        _Flag(("--base_lr",), True, _set("optim.lr")),
        _Flag(("--weight_decay",), True, _set("optim.weight_decay")),
        _Flag(("--gpu_ids",), True, _gpus),
        _Flag(("--workers",), True, _set("data.workers")),
        # the SimAM code: lr 0.01 during epoch 0 for deep networks; here a linear per-iteration warmup from 0.01
        _Flag(("--warmup",), False, lambda v, ctx: ["sched.warmup_epochs=1", "sched.warmup_lr_init=0.01"]),
    ],
}
_ATTENTION_PARAM = {"simam": "attention.e_lambda", "se": "attention.reduction", "cbam": "attention.reduction"}


def _gpu_overrides(ids: list[int]) -> list[str]:
    """`--gpu 0,1,2,3`: one DDP process per GPU (the SimAM code used DataParallel)."""
    import torch

    available = torch.cuda.device_count()
    if available == 0:
        print(f"warning: --gpu {','.join(map(str, ids))} but this machine has no CUDA GPU: training on the CPU in one process", file=sys.stderr)
        return ["trainer.accelerator=cpu", "trainer.devices=1"]
    bad = [i for i in ids if i >= available]
    if bad:
        raise UserError(f"--gpu names GPU {bad[0]} but this machine has {available} (valid ids: 0-{available - 1})")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", ",".join(map(str, ids)))
    return [f"trainer.devices={len(ids)}"]


def translate_argv(argv: Sequence[str], entry: str) -> tuple[list[str], list[str], bool]:
    """Split argv into (hydra args, translated overrides, debug). Raises UserError on unknown flags."""
    flags = {name: f for f in _FLAGS[entry] for name in f.names}
    hydra_args: list[str] = []
    translated: list[str] = []
    ctx: dict = {}
    debug = False
    i = 0
    args = list(argv)
    while i < len(args):
        a = args[i]
        name, eq, inline = a.partition("=") if a.startswith("--") else (a, "", "")
        if a == "--debug":
            debug = True
        elif a in HYDRA_FLAGS:
            hydra_args.append(a)
            hydra_args += args[i + 1 : i + 1 + HYDRA_FLAGS[a]]
            i += HYDRA_FLAGS[a]
        elif name in flags:
            f = flags[name]
            if f.takes_value:
                if eq:
                    value = inline
                elif i + 1 < len(args):
                    value = args[i + 1]
                    i += 1
                else:
                    raise UserError(f"flag {name} needs a value")
                translated += f.to(value, ctx)
            else:
                translated += f.to("", ctx)
        elif a.startswith("-") and not re.match(r"^-?\d", a[1:2] or "x"):
            valid = sorted(flags) + ["--debug"]
            raise UserError(f"unknown flag {name} for main_{entry}.py; valid original flags: {' '.join(valid)}; or use Hydra overrides key=value")
        elif "=" in a or a.startswith(("+", "~")):
            hydra_args.append(a)
        elif entry == "imagenet" and "data_dir" not in ctx:
            ctx["data_dir"] = a
            translated += _positional_data_dir(a, ctx)
        else:
            raise UserError(f"unexpected argument {a!r}: use key=value overrides (e.g. model.arch=resnet50)")
        i += 1
    if "attention_param" in ctx:
        att = ctx.get("attention") or override_value(hydra_args, "attention") or "none"
        key = _ATTENTION_PARAM.get(att)
        if key is None:
            raise UserError(f"--attention_param has no meaning for attention type {att!r}; it sets lambda for simam, reduction for se/cbam")
        value = ctx["attention_param"]
        if key.endswith("reduction"):
            value = str(int(float(value)))
        translated.append(f"{key}={value}")
    if "gpus" in ctx:
        translated += _gpu_overrides(ctx["gpus"])
    if entry == "imagenet" and "data_dir" in ctx and not override_value(hydra_args + translated, "data"):
        translated.insert(0, "data=imagenet")
    return hydra_args, translated, debug


def override_value(args: Sequence[str], key: str) -> Optional[str]:
    for a in reversed(list(args)):
        k, eq, v = a.lstrip("+~").partition("=")
        if eq and k == key:
            return v
    return None
