"""The original SimAM code's command-line flags, translated into Hydra overrides.

    python main_imagenet.py /data/imagenet --gpu 0,1,2,3 -a resnet50 --attention_type simam --attention_param 0.1
    -> data=imagenet data.root=/data/imagenet model.arch=resnet50 attention=simam attention.e_lambda=0.1
       trainer.accelerator=cuda trainer.devices=4 data.workers=1 trainer.epochs=90 ... sched.milestones=[30,60]

Semantics kept from the original scripts (github.com/ZjjConan/SimAM, main_imagenet.py, main_cifar.py):
- a command that uses a flag defining the model, data or recipe gets the original's defaults for
  everything it does not set (main_imagenet.py: -a resnet18, --epochs 90, -b 256, -j 4, lr 0.1 x0.1
  every 30 epochs, i.e. `epoch // 30` whatever --epochs is; main_cifar.py: --dataset cifar10, batch
  128, 164 epochs, lr 0.1 x0.1 at 82 and 123, seed 1, --attention_param 4 with --attention_type).
  -e, --resume, --seed and -p alone do not; an evaluation (-e) or --save_weights takes the network
  from its checkpoint and gets none; an `experiment=` override sets the recipe instead. The
  translation shows them all.
- -j/--workers counts the loader workers of a node (the original's DataParallel process): each of
  the N processes started for --gpu gets j // N (at least 1).
- --gpu ids are positions in CUDA_VISIBLE_DEVICES when it is set (SLURM sets it); with a SLURM
  launcher (-m hydra/launcher=slurm) the GPUs are not probed here but on the node the job runs on.
- -p N (print frequency) sets trainer.log_every on both entry points; Hydra's --package is still
  available under its long name.
- `ema=true|false` means ema.enabled (the `ema` node holds decay and select_best as well).
"""
from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from .config_check import Rule, zoo_names
from .errors import UserError

__all__ = ["FLAGS", "HYDRA_FLAGS", "ORIGINAL_DEFAULTS", "Flag", "override_value", "translate_argv"]

# Hydra's own flags pass through untouched (with the number of values they take); -p is the
# original's --print-freq here, Hydra's package option stays available as --package
HYDRA_FLAGS = {
    "-m": 0, "--multirun": 0, "--cfg": 1, "-c": 1, "--resolve": 0, "--package": 1, "--help": 0, "-h": 0,
    "--hydra-help": 0, "--info": 0, "-i": 0, "--config-path": 1, "-cp": 1, "--config-name": 1, "-cn": 1,
    "--config-dir": 1, "-cd": 1, "--shell-completion": 0, "-sc": 1, "--run": 0, "-r": 0, "--version": 0,
}


@dataclass
class _State:
    """What the flags of one command said (filled while reading argv)."""

    entry: str
    current: str = ""  # the flag being read (for messages)
    set: dict = field(default_factory=dict)  # override key -> value, from the flags as given
    original: bool = False  # a flag that defines the model, data or recipe was given
    attention_param: Optional[str] = None
    block: Optional[str] = None
    workers: Optional[int] = None
    gpus: Optional[list] = None


@dataclass(frozen=True)
class Flag:
    """One original flag: its names, value (metavar, None for a switch), help and translation."""

    names: tuple
    metavar: Optional[str]
    help: str
    to: Callable[[str, _State], None]
    recipe: bool = True  # using it brings in the original's defaults


def _typed(key: str, kind: str, low: float, gt: bool = False, high: Optional[float] = None, lt: bool = False) -> Callable:
    """A numeric flag: parsed as the original's argparse type, range-checked, then `key=value`."""
    rule = Rule(kind, low, high, gt=gt, lt=lt)

    def to(v: str, st: _State) -> None:
        st.set[key] = _number(v, rule, st.current)

    return to


def _number(v: str, rule: Rule, flag: str) -> str:
    try:
        value = int(v) if rule.kind == "int" else float(v)
    except ValueError:
        value = None
    if value is None or not rule.accepts(value):
        raise UserError(f"{flag} {v}: expected {rule.describe()}")
    return v.strip()


def _set(key: str) -> Callable[[str, _State], None]:
    def to(v: str, st: _State) -> None:
        st.set[key] = v

    return to


def _attention_type(v: str, st: _State) -> None:
    names = zoo_names().ATTENTIONS
    if v.lower() not in names:
        from .help import suggest

        raise UserError(f"--attention_type {v}: unknown attention type; {suggest(v, list(names))}")
    st.set["attention"] = v.lower()


def _attention_param(v: str, st: _State) -> None:
    st.attention_param = v  # checked once the attention type is known (_resolve_attention_param)


def _gpus(v: str, st: _State) -> None:
    """'0,1,2,3' or '0-3' -> [0, 1, 2, 3]."""
    try:
        if re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", v):
            a, b = (int(x) for x in v.split("-"))
            ids = list(range(a, b + 1))
        else:
            ids = [int(x) for x in v.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--gpu {v!r}: expected GPU ids such as 0,1,2,3 or 0-3") from None
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise UserError(f"--gpu {v!r}: expected distinct GPU ids >= 0 such as 0,1,2,3 or 0-3")
    st.gpus = ids


def _workers(v: str, st: _State) -> None:
    st.workers = int(_number(v, Rule("int", 0), st.current))


def _cifar_arch(v: str, st: _State) -> None:
    zoo = zoo_names()
    cifar = sorted(n for n, f in zoo.ARCHITECTURES.items() if f.family == "cifar")
    if v in zoo.SIMAM_CIFAR_NAMES or v in cifar:
        st.set["model.arch"] = zoo.SIMAM_CIFAR_NAMES.get(v, v)
        return
    from .help import suggest

    where = " (an ImageNet network: run it with main_imagenet.py -a " + v + ")" if v in zoo.ARCHITECTURES else ""
    raise UserError(f"--arch {v}: not a CIFAR network of main_cifar.py, which refused it in the original too{where}; "
                    f"{suggest(v, list(zoo.SIMAM_CIFAR_NAMES) + cifar)}")


def _block(v: str, st: _State) -> None:
    st.block = v  # checked against the architecture at the end (_resolve_block)


def _refuse(reason: str) -> Callable[[str, _State], None]:
    """An original flag without a counterpart here: refused with what to do instead."""
    def to(v: str, st: _State) -> None:
        raise UserError(f"unknown flag {st.current} for main_{st.entry}.py: {reason}; {_flag_list(st.entry)}")

    return to


def _flag_list(entry: str) -> str:
    names = " ".join(n for f in FLAGS[entry] if f.help for n in f.names)
    return f"original flags: {names} --debug; or use Hydra overrides key=value"


def _switch(*pairs: str) -> Callable[[str, _State], None]:
    def to(v: str, st: _State) -> None:
        for pair in pairs:
            key, _, value = pair.partition("=")
            st.set[key] = value

    return to


_POS_INT, _LR = ("int", 1), ("num", 0)
_COMMON = [
    Flag(("--attention_type",), "TYPE", "none | simam | se | cbam | eca | srm | gc (default none)", _attention_type),
    Flag(("--attention_param",), "P", "lambda of simam, reduction of se/cbam (default 4, as the original)", _attention_param),
    Flag(("--seed",), "N", "random seed", _typed("seed", "int", 0), recipe=False),
    Flag(("--resume",), "PATH", "checkpoint to continue (ours or the original's); with -e: to evaluate", _set("resume"), recipe=False),
    Flag(("-e", "--evaluate"), None, "evaluate --resume on the validation set", _switch("evaluate=true"), recipe=False),
    Flag(("-p", "--print-freq"), "N", "steps between progress lines (trainer.log_every)", _typed("trainer.log_every", *_POS_INT), recipe=False),
]
FLAGS: dict[str, list[Flag]] = {
    "imagenet": [
        Flag(("-a", "--arch"), "ARCH", "architecture (default resnet18)", _set("model.arch")),
        Flag(("-j", "--workers"), "N", "loader workers of the node, split over its processes (default 4)", _workers, recipe=False),
        Flag(("--epochs",), "N", "epochs (default 90)", _typed("trainer.epochs", *_POS_INT)),
        Flag(("-b", "--batch-size"), "N", "batch size of all processes together (default 256)", _typed("data.batch_size", *_POS_INT)),
        Flag(("--lr", "--learning-rate"), "LR", "learning rate (default 0.1; x0.1 every 30 epochs)", _typed("optim.lr", *_LR, gt=True)),
        Flag(("--momentum",), "M", "SGD momentum (default 0.9)", _typed("optim.momentum", "num", 0, high=1, lt=True)),
        Flag(("--wd", "--weight-decay"), "W", "weight decay (default 1e-4)", _typed("optim.weight_decay", "num", 0)),
        Flag(("--cos_lr",), None, "cosine schedule instead of x0.1 every 30 epochs", _switch("sched=cosine")),
        Flag(("--gpu",), "IDS", "GPUs, e.g. 0,1,2,3 or 0-3: one DDP process each", _gpus, recipe=False),
        Flag(("--save_weights",), "PATH", "with --resume: write its weights for mmdetection and exit", _set("save_weights"), recipe=False),
        Flag(("--dist-backend",), "B", "nccl | gloo", _set("trainer.dist_backend"), recipe=False),
    ] + _COMMON + [
        Flag(("--pretrained",), None, "", _refuse("the original accepted it but never loaded weights; start from weights with init_from=PATH")),
        Flag(("--start-epoch",), "N", "", _refuse("--resume continues at the checkpoint's epoch")),
        Flag(("--world-size", "--rank", "--dist-url"), "X", "",
             _refuse("start the processes with torchrun (several nodes) or trainer.devices=N (one node)")),
        Flag(("--multiprocessing-distributed",), None, "", _refuse("--gpu 0,1,2,3 already starts one DDP process per GPU")),
        Flag(("--ckpt",), "DIR", "", _refuse("runs are written to hydra.run.dir (default outputs/...): set hydra.run.dir=DIR")),
        Flag(("--log_freq",), "N", "", _refuse("every progress line goes to the run's log file: -p N sets how often")),
    ],
    "cifar": [
        Flag(("--arch",), "ARCH", "resnet20|32|56|110|164, preresnet20..164, wideresnet16x8|28x10|40x10, mobilenetv2", _cifar_arch),
        Flag(("--block_type",), "B", "basic | bottlenect | prebasic | prebottlenect | widebasic | ivrd", _block),
        Flag(("--dataset",), "NAME", "cifar10 | cifar100 (default cifar10), or any data= of configs/data", _set("data")),
        Flag(("--dataset_dir",), "DIR", "data set folder (default data)", _set("data.root")),
        Flag(("--workers",), "N", "loader workers of the node, split over its processes (default 16, at most the cores)",
             _workers, recipe=False),
        Flag(("--gpu_ids",), "IDS", "GPUs, e.g. 0,1 or 0-3: one DDP process each", _gpus, recipe=False),
        Flag(("--batch_size",), "N", "batch size (default 128; evaluation 100)", _typed("data.batch_size", *_POS_INT)),
        Flag(("--num_epoch",), "N", "epochs (default 164; lr x0.1 at 82 and 123)", _typed("trainer.epochs", *_POS_INT)),
        Flag(("--base_lr",), "LR", "learning rate (default 0.1)", _typed("optim.lr", *_LR, gt=True)),
        Flag(("--beta1",), "M", "SGD momentum (default 0.9)", _typed("optim.momentum", "num", 0, high=1, lt=True)),
        Flag(("--weight_decay",), "W", "weight decay (default 5e-4)", _typed("optim.weight_decay", "num", 0)),
        # the original: lr 0.01 during epoch 0; here a linear per-iteration warmup from 0.01 over epoch 0
        Flag(("--warmup",), None, "lr 0.01 during the first epoch (deep networks)",
             _switch("sched.warmup_epochs=1", "sched.warmup_lr_init=0.01")),
        Flag(("--disp_iter",), "N", "steps between progress lines (trainer.log_every, default 100)",
             _typed("trainer.log_every", *_POS_INT), recipe=False),
    ] + _COMMON + [
        Flag(("--optim",), "NAME", "", _refuse("the original always trained with SGD whatever it said: use optim=sgd|adam|adamw")),
        Flag(("--num_base_filters", "--expansion"), "N", "", _refuse("the original's networks ignored it (it only named the folder)")),
        Flag(("--wrn",), None, "", _refuse("the original ignored it: --arch wideresnet28x10 picks a WRN")),
        Flag(("--ckpt",), "DIR", "", _refuse("runs are written to hydra.run.dir (default outputs/...): set hydra.run.dir=DIR")),
    ],
}

# what the original scripts did when a flag was not given (read from their argparse defaults and
# learning-rate functions); data.workers, attention.* and the imagenet milestones are derived
ORIGINAL_DEFAULTS: dict[str, dict[str, str]] = {
    "imagenet": {
        "model.arch": "resnet18", "trainer.epochs": "90", "data.batch_size": "256", "optim": "sgd", "optim.lr": "0.1",
        "optim.momentum": "0.9", "optim.weight_decay": "1e-4", "sched": "step", "sched.gamma": "0.1", "trainer.log_every": "10",
    },
    "cifar": {
        "data": "cifar10", "data.root": "data", "data.batch_size": "128", "data.eval_batch_size": "100", "trainer.epochs": "164",
        "optim": "sgd", "optim.lr": "0.1", "optim.momentum": "0.9", "optim.weight_decay": "5e-4", "sched": "step",
        "sched.milestones": "[82,123]", "sched.gamma": "0.1", "seed": "1", "trainer.log_every": "100",
    },
}
_ORIGINAL_WORKERS = {"imagenet": 4, "cifar": 16}
# the original CIFAR --block_type names -> (the family of networks it builds, model.block)
_BLOCKS = {
    "basic": ("resnet", "basic"), "bottlenect": ("resnet", "bottleneck"), "bottleneck": ("resnet", "bottleneck"),
    "prebasic": ("preresnet", "basic"), "prebottlenect": ("preresnet", "bottleneck"),
    "widebasic": ("wideresnet", None), "ivrd": ("mobilenetv2", None),
}
_FAMILY_BLOCKS = {"resnet": "basic or bottlenect", "preresnet": "prebasic or prebottlenect", "wideresnet": "widebasic", "mobilenetv2": "ivrd"}


def translate_argv(argv: Sequence[str], entry: str) -> tuple[list[str], list[str], bool]:
    """Split argv into (Hydra args, translated overrides, debug). Raises UserError on a bad flag."""
    flags = {name: f for f in FLAGS[entry] for name in f.names}
    hydra_args: list[str] = []
    st = _State(entry)
    debug, args, i = False, list(argv), 0
    while i < len(args):
        a = args[i]
        name, eq, inline = a.partition("=") if a.startswith("--") else (a, "", "")
        if a == "--debug":
            debug = True
        elif a in HYDRA_FLAGS:
            hydra_args += args[i: i + 1 + HYDRA_FLAGS[a]]
            i += HYDRA_FLAGS[a]
        elif name in flags:
            f, st.current = flags[name], name
            if f.metavar is not None and not eq:
                if i + 1 >= len(args):
                    raise UserError(f"flag {name} needs a value ({f.metavar})")
                inline, i = args[i + 1], i + 1
            f.to(inline if f.metavar is not None else "", st)
            st.original = st.original or f.recipe
        elif a.startswith("-") and not re.match(r"^-?\d", a[1:2] or "x"):
            raise UserError(f"unknown flag {name} for main_{entry}.py; {_flag_list(entry)}")
        elif "=" in a or a.startswith(("+", "~")):
            hydra_args.append(re.sub(r"^ema=(?!\{)", "ema.enabled=", a))  # `ema=true`: the node also holds decay, select_best
        elif entry == "imagenet" and "data.root" not in st.set:
            st.set["data.root"], st.original = a, True  # the original's positional DIR
        else:
            raise UserError(f"unexpected argument {a!r}: use key=value overrides (e.g. model.arch=resnet50)")
        i += 1
    return hydra_args, _translation(st, hydra_args), debug


def _translation(st: _State, hydra_args: list[str]) -> list[str]:
    """The overrides of the flags read, with the original's defaults and derived values."""
    if st.entry == "imagenet" and "data.root" in st.set and not _given("data", st, hydra_args):
        st.set = {"data": "imagenet", **st.set}
    defaults = _defaults(st, hydra_args) if st.original else {}
    _resolve_attention_param(st, hydra_args, defaults)
    if st.entry == "cifar":
        _resolve_block(st, hydra_args, bool(defaults))
    out = {**st.set, **defaults}
    processes = None
    if st.gpus is not None:
        gpu, processes = _gpu_overrides(st.gpus, hydra_args)
        out.update(gpu)
    out.update(_workers_override(st, hydra_args, processes, bool(defaults)))
    return [f"{k}={v}" for k, v in out.items()]


def _given(key: str, st: _State, hydra_args: Sequence[str]) -> bool:
    return key in st.set or override_value(hydra_args, key) is not None


def _defaults(st: _State, hydra_args: list[str]) -> dict[str, str]:
    """The original's defaults for what neither a flag nor an override sets; none with experiment=."""
    if "evaluate" in st.set or "save_weights" in st.set:  # the checkpoint says what the network is; no recipe
        return {}
    if override_value(hydra_args, "experiment") is not None:
        print(f"note: experiment={override_value(hydra_args, 'experiment')} sets the recipe: the original's defaults "
              "are not applied", file=sys.stderr)
        return {}
    chosen = {g for g in ("data", "optim", "sched", "attention") if override_value(hydra_args, g) is not None}
    out = {}
    for key, value in ORIGINAL_DEFAULTS[st.entry].items():
        if _given(key, st, hydra_args) or key.split(".")[0] in chosen and "." in key:
            continue
        if key.startswith("sched.") and st.set.get("sched", value) == "cosine":
            continue
        out[key] = value
    if st.entry == "imagenet":
        if "data.eval_batch_size" not in chosen and not _given("data.eval_batch_size", st, hydra_args):
            out["data.eval_batch_size"] = st.set.get("data.batch_size", out.get("data.batch_size", "256"))
        sched = st.set.get("sched") or override_value(hydra_args, "sched") or "step"
        if sched == "step" and not _given("sched.milestones", st, hydra_args):  # lr x0.1 at every epoch // 30
            epochs = int(st.set.get("trainer.epochs") or override_value(hydra_args, "trainer.epochs") or out["trainer.epochs"])
            out["sched.milestones"] = "[" + ",".join(str(e) for e in range(30, epochs, 30)) + "]"
    return out


def _resolve_attention_param(st: _State, hydra_args: list[str], defaults: dict) -> None:
    """--attention_param: lambda of simam, reduction (an integer >= 1) of se/cbam; 4 by default, as in the original."""
    attention = st.set.get("attention") or override_value(hydra_args, "attention") or "none"
    keys = {"simam": "attention.e_lambda", "se": "attention.reduction", "cbam": "attention.reduction"}
    value = st.attention_param
    if value is None:  # the original's default 4 goes with its --attention_type, not with attention=
        if not defaults or "attention" not in st.set or attention not in keys or _given(keys[attention], st, hydra_args):
            return
        value = "4"
        if attention == "simam":  # faithful, but rarely what a user means: say so loudly
            print("warning: --attention_type simam without --attention_param: the original's default 4 gives SimAM "
                  "lambda 4 (the paper used 1e-4 on CIFAR, 0.1 on ImageNet); pass --attention_param to choose", file=sys.stderr)
    if attention not in keys:
        raise UserError(f"--attention_param has no meaning for attention type {attention!r}; it sets lambda for simam, "
                        f"the reduction for se/cbam")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if attention == "simam":
        if not (math.isfinite(number) and number > 0):
            raise UserError(f"--attention_param {value}: simam takes lambda, a number > 0 (the paper: 1e-4 CIFAR, 0.1 ImageNet)")
        st.set[keys[attention]] = value.strip()
    elif math.isfinite(number) and number >= 1 and number.is_integer():
        st.set[keys[attention]] = str(int(number))
    else:
        raise UserError(f"--attention_param {value}: {attention} takes a reduction ratio, an integer >= 1 (e.g. 16)")


def _cifar_family(arch: str) -> str:
    """cifar_preresnet56 -> 'preresnet' (the original's network families, named as its --block_type is)."""
    for prefix, family in (("cifar_preresnet", "preresnet"), ("cifar_resnet", "resnet"), ("cifar_wrn", "wideresnet"),
                           ("cifar_mobilenetv2", "mobilenetv2")):
        if arch.startswith(prefix):
            return family
    return ""


def _resolve_block(st: _State, hydra_args: list[str], defaults: bool) -> None:
    """--block_type with the original's names: the block must fit the network, as it had to there."""
    arch = st.set.get("model.arch") or override_value(hydra_args, "model.arch")
    if arch is None and (defaults or st.block is not None) and override_value(hydra_args, "experiment") is None:
        raise UserError("main_cifar.py needs --arch: the original's default resnet18 is not a CIFAR network (it failed "
                        "with KeyError there); e.g. --arch resnet20 --block_type basic")
    if arch is None:
        return
    family = _cifar_family(arch)
    block = st.block if st.block is not None else ("basic" if defaults else None)  # the original's default
    if block is None or _given("model.block", st, hydra_args):
        return
    if block not in _BLOCKS:
        raise UserError(f"--block_type {block}: valid (the original's names): {', '.join(_BLOCKS)}")
    kind, value = _BLOCKS[block]
    if kind == family:
        if value is not None:
            st.set["model.block"] = value
        return
    if block == "basic" and family in ("wideresnet", "mobilenetv2"):
        return  # the original's default, which these networks ignored
    given = "--block_type " + block if st.block is not None else "the original's default --block_type basic"
    raise UserError(f"{given} does not fit {arch}: the original's {family} networks take --block_type {_FAMILY_BLOCKS[family]}")


def _gpu_overrides(ids: list[int], hydra_args: list[str]) -> tuple[dict[str, str], int]:
    """`--gpu 0,1,2,3`: one DDP process per GPU (the SimAM code used DataParallel); -> (overrides, processes)."""
    shown = ",".join(map(str, ids))
    launcher = override_value(hydra_args, "hydra/launcher") or ""
    if "slurm" in launcher or "submitit" in launcher:  # the job's node has the GPUs, not this one
        out = {"trainer.accelerator": "cuda", "trainer.devices": str(len(ids))}
        if override_value(hydra_args, "hydra.launcher.gpus_per_node") is None:
            out["hydra.launcher.gpus_per_node"] = str(len(ids))
        return out, len(ids)
    if "LOCAL_RANK" in os.environ:
        raise UserError(f"--gpu {shown} under torchrun: torchrun starts the processes, one per GPU; drop --gpu "
                        "(choose GPUs with CUDA_VISIBLE_DEVICES)")
    import torch  # only here: the GPU count (not cached by torch before CUDA is initialised)

    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    available = torch.cuda.device_count()  # under the current mask
    if available == 0:
        print(f"warning: --gpu {shown} but this machine has no CUDA GPU: training on the CPU in one process", file=sys.stderr)
        return {"trainer.accelerator": "cpu", "trainer.devices": "1"}, 1
    bad = [i for i in ids if i >= available]
    if bad:
        where = "this machine has" if mask is None else f"CUDA_VISIBLE_DEVICES={mask} shows"
        raise UserError(f"--gpu names GPU {bad[0]} but {where} {available} (valid ids: 0-{available - 1})")
    if mask is not None:  # ids are positions in the existing mask, as CUDA numbers them
        visible = [m.strip() for m in mask.split(",") if m.strip()]
        physical = ",".join(visible[i] for i in ids)
        print(f"note: --gpu {shown} with CUDA_VISIBLE_DEVICES={mask}: CUDA_VISIBLE_DEVICES={physical}", file=sys.stderr)
    else:
        physical = shown
    os.environ["CUDA_VISIBLE_DEVICES"] = physical
    return {"trainer.accelerator": "cuda", "trainer.devices": str(len(ids))}, len(ids)


def _workers_override(st: _State, hydra_args: list[str], processes: Optional[int], defaults: bool) -> dict[str, str]:
    """-j/--workers counts a node's loader workers (the original's one DataParallel process): j // processes each."""
    if st.workers is None and not (defaults and override_value(hydra_args, "data.workers") is None):
        return {}
    if processes is None:
        devices = override_value(hydra_args, "trainer.devices")
        processes = int(devices) if devices and devices.isdigit() else int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    total = st.workers
    if total is None:  # the original's default, at most the cores (worker counts do not change results)
        total = min(_ORIGINAL_WORKERS[st.entry], os.cpu_count() or 1)
    each = 0 if total == 0 else max(1, total // max(processes, 1))
    if processes > 1:
        print(f"note: {total} loader workers per node (-j, as the original counts them): {each} for each of the "
              f"{processes} processes", file=sys.stderr)
    return {"data.workers": str(each)}


def override_value(args: Sequence[str], key: str) -> Optional[str]:
    """The value the last `key=value` (also `+key=`, `++key=`) of `args` gives, or None."""
    for a in reversed(list(args)):
        k, eq, v = a.lstrip("+~").partition("=")
        if eq and k == key:
            return v
    return None
