"""`--help` of main_cifar.py / main_imagenet.py, and "did you mean ...?" for unknown names.

    print(help_text("cifar"))                      # one screen, without importing torch
    suggest("resnt50", ["resnet50", "resnet18"])   # "did you mean resnet50?"
    explain_compose_error(exc, overrides, "cifar")  # Hydra's composition error -> one line

Everything listed comes from the registries and configs/: architectures and attention types from
networks/names.py (checked against networks' registries by a test), experiments and data sets from
configs/experiment and configs/data, the original flags from engine/flags.py.
"""
from __future__ import annotations

import difflib
import re
import textwrap
from typing import Any, Sequence

__all__ = ["explain_compose_error", "help_text", "suggest", "suggest_key"]


def suggest(name: str, options: Sequence[str], limit: int = 3) -> str:
    """"did you mean a or b?" (closest first), or "valid: ..." when nothing is close."""
    options = sorted({str(o) for o in options})
    lower = {o.lower(): o for o in options}
    name = str(name).lower()
    close = difflib.get_close_matches(name, list(lower), n=limit, cutoff=0.6)
    best = difflib.SequenceMatcher(None, name, close[0]).ratio() if close else 0.0
    close = [lower[o] for o in close if difflib.SequenceMatcher(None, name, o).ratio() >= best - 0.1]  # not the also-rans
    if close:
        listed = close[0] if len(close) == 1 else ", ".join(close[:-1]) + " or " + close[-1]
        return f"did you mean {listed}?"
    if len(options) > 30:  # config keys: their sections
        sections = sorted({re.split(r"[./]", o)[0] for o in options})
        return f"valid: the keys of {', '.join(sections)} (--cfg job shows them all)"
    return "valid: " + ", ".join(options)


def explain_compose_error(exc: BaseException, overrides: Sequence[str], entry: str) -> str:
    """One line for an exception of Hydra's compose(): an unknown group option gets the closest
    options (nested ones such as experiment=paper/... included), a key that does not exist gets
    the closest keys instead of Hydra's `+key=value` hint."""
    from .config_check import group_options

    text = str(exc)
    found = re.search(r"Could not find '([^']+)'", text)
    missing = getattr(exc, "missing_cfg_file", None) or (found.group(1) if found else None)
    if missing:
        group = missing.split("/")[0]
        value = _override(overrides, group) or missing.partition("/")[2]
        if group_options(group):
            return f"unknown {group} {value!r}; {suggest(value, group_options(group))}"
    hint = suggest_key(text, overrides, entry)
    if hint:
        return hint
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "invalid override: " + ("; ".join(lines[:2]) if lines else type(exc).__name__)


def suggest_key(message: str, overrides: Sequence[str], entry: str = "cifar") -> str:
    """Hydra's message about a key that does not exist ("Could not override 'trainer.epoch'", which
    suggests `+trainer.epoch=...`) -> one line with the closest existing keys; "" for other messages."""
    from .config_check import OPEN_KEYS, group_options, known_keys, option_keys

    m = re.search(r"Could not (?:override|append to|delete) '([^']+)'", message) or re.search(
        r"Key '([^']+)' is not in struct", message)
    if not m:
        return ""
    key = m.group(1)
    if any(key.startswith(k + ".") for k in OPEN_KEYS):
        return f"{key} is a new key under {key.rsplit('.', 1)[0]}: add it with +{key}={_override(overrides, key) or 'VALUE'}"
    group, _, leaf = key.partition(".")
    owners = [o for o in group_options(group) if leaf and leaf in option_keys(group, o)]
    if owners:
        chosen = _override(overrides, group) or "its default"
        return f"{key} is not an option of {group}={chosen}; {leaf} belongs to {group}={', '.join(owners)}"
    return f"unknown config key {key}; {suggest(key, known_keys(entry))}"


def _override(overrides: Sequence[str], key: str) -> str:
    for o in reversed(list(overrides)):
        k, eq, v = o.lstrip("+~").partition("=")
        if eq and k == key:
            return v
    return ""


# keys shown with their defaults in --help, by line
_MAIN_KEYS = (
    ("model.arch", "model.block", "model.init", "attention", "seed", "data", "data.root"),
    ("data.batch_size", "data.eval_batch_size", "data.workers", "data.image_size", "data.augment"),
    ("data.auto_augment", "data.reprob", "mixup.mixup_alpha", "loss.label_smoothing", "ema.enabled"),
    ("optim", "optim.lr", "optim.weight_decay", "optim.lr_base", "sched", "sched.milestones"),
    ("trainer.epochs", "trainer.devices", "trainer.accelerator", "trainer.amp", "trainer.channels_last"),
    ("trainer.compile", "trainer.accum_steps", "trainer.log_every", "trainer.progress", "trainer.auto_resume"),
    ("resume", "init_from", "evaluate", "save_weights", "weights_format", "export_backbone"),
)
_EXAMPLES = {
    "cifar": ("python main_cifar.py experiment=paper/cifar100_resnet20 attention=simam seed=1",
              "python main_cifar.py -m experiment=paper/cifar100_resnet56 attention=none,se,simam seed=1,2,3",
              "python main_cifar.py --dataset cifar100 --arch resnet20 --block_type basic --attention_type simam "
              "--attention_param 0.0001"),
    "imagenet": ("torchrun --nproc_per_node=4 main_imagenet.py experiment=paper/imagenet_resnet50 data.root=/data/imagenet",
                 "python main_imagenet.py /data/imagenet --gpu 0,1,2,3 -j 20 -a resnet50 --attention_type simam "
                 "--attention_param 0.1",
                 "python main_imagenet.py /data/imagenet -a resnet50 -e --resume best.pth --attention_type simam"),
}


def _wrapped(title: str, words: Sequence[str], width: int = 100) -> list[str]:
    return textwrap.wrap(" ".join(words), width=width, initial_indent=f"{title:<22}", subsequent_indent=" " * 22,
                         break_on_hyphens=False)


def _flag_lines(entry: str) -> list[str]:
    from .flags import FLAGS

    lines = ["  DIR                      the data folder (train/ and val/): data=imagenet data.root=DIR"] if entry == "imagenet" else []
    for f in FLAGS[entry]:
        if f.help:
            names = ", ".join(f.names) + (f" {f.metavar}" if f.metavar else "")
            lines.append(f"  {names:<24} {f.help}")
    return lines


def _default_words(entry: str) -> list[list[str]]:
    from .config_check import default_config

    cfg = default_config(entry)
    out = []
    for keys in _MAIN_KEYS:
        words = []
        for key in keys:
            node: Any = cfg
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict):  # a group: its option's name
                node = node.get("name")
            words.append(f"{key}={_shown(node)}")
        out.append(words)
    return out


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def help_text(entry: str) -> str:
    """`--help` of main_<entry>.py: usage, original flags, names to choose from, main keys, examples."""
    from .config_check import group_options, zoo_names

    zoo = zoo_names()
    what = "CIFAR-10/100 (32 px networks)" if entry == "cifar" else "ImageNet or an image folder"
    lines = [f"usage: python main_{entry}.py [key=value ...] [original flags] [-m] [--cfg job] [--hydra-help] [--debug]",
             f"Train or evaluate a ConvNet with attention (SimAM, SE, CBAM, ECA, SRM, GC) on {what}.",
             "Settings are Hydra overrides key=value; the original SimAM flags below are translated into them (and printed).",
             f"Original flags (main_{entry}.py of github.com/ZjjConan/SimAM; any flag that sets the model, data or",
             "recipe brings the original's defaults for the rest):"]
    lines += _flag_lines(entry)
    lines += [""]
    for family in ("cifar", "imagenet"):
        archs = sorted(n for n, f in zoo.ARCHITECTURES.items() if f.family == family)
        lines += _wrapped(f"model.arch= {family}:", archs)
    lines += _wrapped("attention=", [f"{n}" for n in zoo.ATTENTIONS] + ["(options: simam e_lambda, se/cbam reduction, "
                                                                         "eca gamma beta, gc ratio)"])
    lines += _wrapped("data=", group_options("data"))
    lines += _wrapped("experiment=", group_options("experiment"))
    lines += ["", f"Main keys, with the defaults of main_{entry}.py (all keys: python main_{entry}.py --cfg job):"]
    for words in _default_words(entry):
        lines += textwrap.wrap(" ".join(words), width=112, initial_indent="  ", subsequent_indent="    ")
    lines += ["  ema=true means ema.enabled=true; a typo in a key or name gets the closest valid ones", "", "Examples:"]
    lines += [f"  {e}" for e in _EXAMPLES[entry]]
    return "\n".join(lines)
