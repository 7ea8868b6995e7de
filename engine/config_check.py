"""One check of the whole composed config, before anything is created (no run directory, no data
set opened, no model built, no torch import).

    check_config(cfg, "cifar")   # raises UserError: one line naming the key, the value and what is valid

What is checked:
- every key is known: the known keys are read from configs/ (base.yaml, the top config and every
  option of every group), so a key added to a yaml file is known at once; an unknown key, also one
  added with `+`, is refused with the closest known keys;
- the attention options belong to the chosen attention type (`attention=se attention.e_lambda=...`),
  and the keys of one data set are not given to another (`data=cifar10 +data.num_train=...`);
- types (from the explicit rules below, else the type of the key's values in configs/), ranges,
  enum values, architecture names, and the image size each architecture accepts.
The number of processes is not known here: the batch split is checked where it is (engine.runner).
"""
from __future__ import annotations

import functools
import importlib.util
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Optional

import yaml

from .errors import UserError
from .help import suggest

__all__ = [
    "CONFIG_DIR", "RULES", "Rule", "check_config", "default_config", "group_options", "known_keys", "option_keys", "plain_config",
    "read_yaml", "rule_for", "zoo_names",
]

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
GROUPS = ("data", "attention", "optim", "sched", "trainer", "experiment")  # configs/hydra is Hydra's, not the run's
OPEN_KEYS = ("model.kwargs",)  # any key below these is passed on (to the architecture)


def zoo_names() -> ModuleType:
    """networks/names.py, without running networks/__init__.py when that has not been imported yet
    (it imports torch, which alone takes longer than the 1.5 s that --help and a config error may take)."""
    if "networks" in sys.modules:
        import networks.names

        return networks.names
    if "_zoo_names" not in sys.modules:
        spec = importlib.util.spec_from_file_location("_zoo_names", ROOT / "networks" / "names.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["_zoo_names"] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
    return sys.modules["_zoo_names"]


# ----------------------------------------------------------------------------- the config tree
class _YamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """YAML as OmegaConf (and so Hydra) reads it: `1e-4` is a float (YAML 1.1 wants `1.0e-4`)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
               r"|[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> dict:
    """A config file as a plain dict, values as Hydra reads them, interpolations unresolved."""
    return dict(_read_yaml(Path(path)))


@functools.lru_cache(maxsize=None)
def _read_yaml(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_YamlLoader) or {}


def _yaml(path: Path) -> dict:
    """read_yaml without the `defaults` list and the `hydra` node (what a run's config holds)."""
    return {k: v for k, v in _read_yaml(path).items() if k not in ("defaults", "hydra")}


@functools.lru_cache(maxsize=None)
def _is_global(path: Path) -> bool:
    return any(line.strip().replace(" ", "") == "#@package_global_" for line in path.read_text().splitlines()[:5])


def group_options(group: str) -> list[str]:
    """Options of config group `group`, nested folders included: 'paper/cifar100_resnet20', ..."""
    base = CONFIG_DIR / group
    return sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml")) if base.is_dir() else []


def _placed(group: str, option: str) -> dict:
    """The option's keys where Hydra puts them: under the group, or at the top for `@package _global_`."""
    path = CONFIG_DIR / group / f"{option}.yaml"
    return _yaml(path) if _is_global(path) else {group: _yaml(path)}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and empty dicts stay values."""
    if not isinstance(d, Mapping) or not d:
        return {prefix: d} if prefix or not isinstance(d, Mapping) else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _key_values(entry: str) -> dict[str, tuple]:
    """Every known key -> the values configs/ gives it (for the types)."""
    return _key_values_in(entry, CONFIG_DIR)


@functools.lru_cache(maxsize=None)
def _key_values_in(entry: str, config_dir: Path) -> dict[str, tuple]:
    sources = [_yaml(config_dir / "base.yaml"), _yaml(config_dir / f"{entry}.yaml")]
    sources += [_placed(g, o) for g in GROUPS for o in group_options(g)]
    values: dict[str, list] = {}
    for source in sources:
        for key, value in _flatten(source).items():
            values.setdefault(key, []).append(value)
    return {k: tuple(v) for k, v in values.items()}


def known_keys(entry: str) -> list[str]:
    """Every key a run of main_<entry>.py accepts (from configs/), sorted."""
    return sorted(_key_values(entry))


def option_keys(group: str, option: str) -> set[str]:
    """Keys (without the group prefix) that option `option` of `group` defines: option_keys('attention', 'se') == {'name', 'reduction'}."""
    return set(_flatten(_yaml(CONFIG_DIR / group / f"{option}.yaml")))


def _option_named(group: str, name: Any) -> Optional[str]:
    """The option of `group` whose `name:` is `name` (data, attention, optim, sched)."""
    for option in group_options(group):
        if _yaml(CONFIG_DIR / group / f"{option}.yaml").get("name") == name:
            return option
    return None


def plain_config(cfg: Any) -> dict:
    """A composed DictConfig -> a resolved plain dict without the `hydra` node; values that need a
    running Hydra (`${hydra:...}`, e.g. run_dir) are left unresolved."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(cfg, DictConfig):
        return {k: v for k, v in cfg.items() if k != "hydra"}
    raw = OmegaConf.to_container(cfg, resolve=False)
    raw.pop("hydra", None)
    held = {k: v for k, v in _flatten(raw).items() if isinstance(v, str) and "${hydra:" in v}
    for key in held:
        _set(raw, key, None)
    try:
        out = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    except Exception as e:  # noqa: BLE001 - an interpolation the user broke
        key = getattr(e, "full_key", "") or "?"
        raise UserError(f"{key}: {str(e).splitlines()[0]}") from None
    for key, value in held.items():
        _set(out, key, value)
    return out


def _set(d: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for p in parents:
        d = d[p]
    d[last] = value


# ----------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """What a key takes: kind "int" | "num" | "bool" | "str" | "ints" (list of ints) | "nums",
    with optional bounds (`gt`: strictly greater than `low`), choices, and null allowed or not."""

    kind: str
    low: Optional[float] = None
    high: Optional[float] = None
    gt: bool = False
    lt: bool = False
    choices: tuple = ()
    null: bool = False

    def describe(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        else:
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.gt else '>='} {_fmt(self.low)}")
            if self.high is not None:
                bounds.append(f"{'<' if self.lt else '<='} {_fmt(self.high)}")
            text = _KIND_TEXT[self.kind]
            if bounds:
                text += f" (each {' and '.join(bounds)})" if self.kind in ("ints", "nums") else f" {' and '.join(bounds)}"
        return "null or " + text if self.null else text

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.null
        if self.kind in ("ints", "nums"):
            item = Rule(self.kind[:-1], self.low, self.high, self.gt, self.lt)
            return isinstance(value, (list, tuple)) and all(item.accepts(v) for v in value)
        if self.choices:
            return value in self.choices
        if not _has_kind(value, self.kind):
            return False
        if self.kind in ("int", "num") and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.gt else value < self.low):
            return False
        return self.high is None or (value < self.high if self.lt else value <= self.high)


_KIND_TEXT = {"int": "an integer", "num": "a number", "bool": "true or false", "str": "a string",
              "ints": "a list of integers", "nums": "a list of numbers", "dict": "a mapping {key: value}"}


def _has_kind(value: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "num":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "dict":
        return isinstance(value, Mapping)
    return True


def _fmt(value: Any) -> str:
    """A value as it is typed on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def _int(low: int = 1, null: bool = False) -> Rule:
    return Rule("int", low, null=null)


def _pos(null: bool = False) -> Rule:
    return Rule("num", 0, gt=True, null=null)


def _unit(gt: bool = False, lt: bool = False, null: bool = False) -> Rule:
    return Rule("num", 0, 1, gt=gt, lt=lt, null=null)


# explicit rules; other keys must have the type their values have in configs/
RULES: dict[str, Rule] = {
    "seed": Rule("int", 0, 2**32 - 1),
    "simam_lambda": _pos(), "input_size": Rule("int", 1, 1024),
    "model.block": Rule("str", choices=("basic", "bottleneck"), null=True),
    "model.init": Rule("str", choices=("original", "kaiming")),
    "data.batch_size": _int(), "data.eval_batch_size": _int(), "data.workers": _int(0, null=True),
    "data.image_size": Rule("int", 1), "data.num_classes": _int(null=True),
    "data.num_train": _int(), "data.num_val": _int(),
    "data.augment": Rule("str", choices=("cifar", "imagenet", "alexnet", "none")),
    "data.bad_images": Rule("str", choices=("fail", "skip")),
    "data.interpolation": Rule("str", choices=("bilinear", "bicubic", "nearest")),
    "data.drop_last": Rule("bool", null=True), "data.auto_augment": Rule("str", null=True),
    "data.reprob": _unit(), "data.repeated_aug": _int(0), "data.crop_pct": _unit(gt=True, null=True),
    "data.root": Rule("str", null=True), "data.class_order": Rule("str", choices=("imagenet", "sorted", "auto"), null=True),
    "optim.lr": _pos(), "optim.weight_decay": Rule("num", 0), "optim.momentum": _unit(lt=True),
    "optim.betas": Rule("nums", 0, 1, lt=True), "optim.clip_grad": _pos(null=True),
    "optim.clip_mode": Rule("str", choices=("norm", "value")), "optim.lr_base": _pos(null=True),
    "optim.lr_base_size": _int(), "optim.lr_base_scale": Rule("str", choices=("linear", "sqrt")),
    "sched.milestones": Rule("ints", 1), "sched.gamma": _pos(), "sched.warmup_epochs": Rule("num", 0),
    "sched.warmup_lr_init": Rule("num", 0), "sched.min_lr": Rule("num", 0),
    "attention.e_lambda": _pos(), "attention.reduction": _int(), "attention.gamma": _pos(),
    "attention.beta": Rule("num"), "attention.ratio": _unit(gt=True),
    "loss.label_smoothing": _unit(lt=True), "mixup.mixup_alpha": Rule("num", 0), "mixup.cutmix_alpha": Rule("num", 0),
    "mixup.prob": _unit(), "ema.decay": _unit(gt=True, lt=True),
    "trainer.epochs": _int(), "trainer.devices": _int(),
    "trainer.accelerator": Rule("str", choices=("auto", "cpu", "cuda")),
    "trainer.amp": Rule("str", choices=("none", "bf16", "fp16")),
    "trainer.progress": Rule("str", choices=("auto", "bar", "lines", "none")),
    "trainer.dist_backend": Rule("str", choices=("auto", "nccl", "gloo")),
    "trainer.log_every": _int(), "trainer.keep_last": _int(0), "trainer.dist_timeout": _pos(),
    "trainer.max_steps_per_epoch": _int(null=True), "trainer.stop_after_epochs": _int(null=True),
    "trainer.accum_steps": _int(), "trainer.progress_every_s": _pos(),
    "weights_format": Rule("str", choices=("original", "torchvision", "ours")),
    "resume": Rule("str", null=True), "init_from": Rule("str", null=True), "save_weights": Rule("str", null=True),
    "export_backbone": Rule("str", null=True),
}


def _kind_of(value: Any) -> Optional[str]:
    """The rule kind of a value in configs/ (None: no type to learn from it)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "num"
    if isinstance(value, str):
        return None if value.startswith("${") or value == "???" else "str"
    if isinstance(value, (list, tuple)):
        return "ints" if all(_kind_of(v) == "int" for v in value) else "nums" if all(
            _kind_of(v) in ("int", "num") for v in value) else None
    return "dict" if isinstance(value, Mapping) else None


def rule_for(key: str, entry: str) -> Optional[Rule]:
    """The rule of `key`: explicit (RULES), a group's option names, else the type of its values in configs/."""
    group, _, leaf = key.partition(".")
    if key in RULES:
        return RULES[key]
    if leaf == "name" and group in GROUPS:
        return Rule("str", choices=tuple(sorted(_yaml(CONFIG_DIR / group / f"{o}.yaml").get("name") for o in group_options(group))))
    values = _key_values(entry).get(key, ())
    kinds = {_kind_of(v) for v in values} - {None}
    kinds = {"num"} if kinds == {"int", "num"} else {"nums"} if kinds == {"ints", "nums"} else kinds
    if len(kinds) != 1:
        return None
    return Rule(kinds.pop(), null=any(v is None for v in values))


# ----------------------------------------------------------------------------- checks
def check_config(cfg: Any, entry: str) -> None:
    """Validate the composed config of main_<entry>.py (a plain resolved dict, or Hydra's DictConfig);
    raises UserError with one line naming the key, the value and what is valid."""
    cfg = plain_config(cfg)
    flat = _flatten(cfg)
    _check_known(flat, entry)
    _check_names(cfg)
    _check_present(flat, cfg, entry)
    for group in ("data", "attention", "optim", "sched"):
        _check_option_keys(cfg, group, entry)
    for key, value in flat.items():
        _check_value(key, value, entry)
    _check_model(cfg)
    _check_combinations(cfg)


def _is_open(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in OPEN_KEYS)


def _check_known(flat: dict, entry: str) -> None:
    known = _key_values(entry)
    for key, value in flat.items():
        if key in known or _is_open(key):
            continue
        below = [k for k in known if k.startswith(key + ".")]
        if below:
            raise UserError(f"{key}={_fmt(value)}: {key} is a section ({', '.join(below)}); set one of its keys, "
                            f"e.g. {below[0]}={_fmt(value)}")
        raise UserError(f"unknown config key {key} (={_fmt(value)}); {suggest(key, list(known))}")


def _check_names(cfg: dict) -> None:
    """Names that pick code and become parts of paths: architecture and the groups' `name`."""
    arch = cfg.get("model", {}).get("arch")
    archs = zoo_names().ARCHITECTURES
    if arch not in archs:
        raise UserError(f"unknown architecture {_fmt(arch)!r} (model.arch); {suggest(str(arch), list(archs))}")
    for group, what in (("data", "data set"), ("attention", "attention"), ("optim", "optimizer"), ("sched", "schedule")):
        name = cfg.get(group, {}).get("name")
        if _option_named(group, name) is None:
            names = rule_for(f"{group}.name", "cifar").choices
            raise UserError(f"unknown {what} {_fmt(name)!r} ({group}.name); {suggest(str(name), list(names))}")


def _check_present(flat: dict, cfg: dict, entry: str) -> None:
    """Every key of base.yaml, the top config and the chosen options is there (`~key` deletes one)."""
    sources = [_yaml(CONFIG_DIR / "base.yaml"), _yaml(CONFIG_DIR / f"{entry}.yaml")]
    sources += [_placed(g, _option_named(g, cfg[g]["name"])) for g in ("data", "attention", "optim", "sched")]
    sources += [_placed("trainer", o) for o in group_options("trainer")]
    for key in (k for source in sources for k in _flatten(source)):
        if key not in flat and not any(k.startswith(key + ".") for k in flat):
            raise UserError(f"{key} is missing (removed with ~{key}?): every run needs it; set it with {key}=VALUE")


def _outside_keys(group: str, entry: str) -> set[str]:
    """Keys under `group` that files other than the group's options put there (base, top config, experiments)."""
    sources = [_yaml(CONFIG_DIR / "base.yaml"), _yaml(CONFIG_DIR / f"{entry}.yaml")]
    sources += [_placed("experiment", o) for o in group_options("experiment")]
    return {k for s in sources for k in _flatten(s.get(group) or {}) if k}


def _check_option_keys(cfg: dict, group: str, entry: str) -> None:
    """A key of another option of the group (`attention=se attention.e_lambda=0.1`) is refused."""
    chosen = _option_named(group, cfg[group].get("name"))
    allowed = option_keys(group, chosen) | _outside_keys(group, entry)
    for key, value in _flatten(cfg[group]).items():
        if key in allowed or _is_open(f"{group}.{key}"):
            continue
        owners = [o for o in group_options(group) if key in option_keys(group, o)]
        mine = ", ".join(sorted(option_keys(group, chosen) - {"name"})) or "none"
        raise UserError(f"{group}.{key}={_fmt(value)} is not an option of {group}={chosen} (its options: {mine}); "
                        f"{key} belongs to {group}={', '.join(owners)}")


def _check_value(key: str, value: Any, entry: str) -> None:
    rule = rule_for(key, entry)
    if rule is None or rule.accepts(value):
        return
    if rule.choices and len(rule.choices) > 8 and isinstance(value, str):
        raise UserError(f"{key}={_fmt(value)}: {suggest(value, list(rule.choices))}")
    raise UserError(f"{key}={_fmt(value)}: expected {rule.describe()}")


def _check_model(cfg: dict) -> None:
    """The image size and block the architecture accepts."""
    arch, data = cfg["model"]["arch"], cfg.get("data", {})
    facts = zoo_names().ARCHITECTURES[arch]
    size = data.get("image_size")
    if isinstance(size, int) and not facts.min_size <= size <= facts.max_size:
        why = " (its classifier needs a 3x3 final feature map)" if arch == "alexnet" else ""
        raise UserError(f"data.image_size={size}: {arch} takes images of {facts.min_size} to {facts.max_size} px{why}")
    block = cfg["model"].get("block")
    if block is not None and block not in facts.blocks:
        valid = f"valid: {', '.join(facts.blocks)}" if facts.blocks else f"{arch} has no block choice: set model.block=null"
        raise UserError(f"model.block={block}: {valid}")


def _check_combinations(cfg: dict) -> None:
    ema, sched, epochs = cfg.get("ema", {}), cfg.get("sched", {}), cfg["trainer"]["epochs"]
    if ema.get("select_best") and not ema.get("enabled"):
        raise UserError("ema.select_best=true needs the EMA weights: add ema.enabled=true (or ema=true)")
    milestones = sched.get("milestones") or []
    if any(b <= a for a, b in zip(milestones, milestones[1:])):
        raise UserError(f"sched.milestones={_fmt(milestones)}: the epochs must increase")
    warmup = sched.get("warmup_epochs") or 0
    if warmup > epochs:
        raise UserError(f"sched.warmup_epochs={_fmt(warmup)} is longer than trainer.epochs={epochs}: use at most {epochs}")
    _check_auto_augment(cfg["data"].get("auto_augment"))


def _check_auto_augment(name: Any) -> None:
    """A timm auto-augment string is parsed by timm: only when one is given (it imports torch)."""
    if name is None:
        return
    from .data import build_auto_augment

    try:
        build_auto_augment(str(name), 32, (0.5, 0.5, 0.5))
    except ValueError as e:
        raise UserError(f"data.auto_augment={name}: {str(e).splitlines()[0]}") from None


def default_config(entry: str) -> dict:
    """The config of main_<entry>.py with no override, read from the yaml files (interpolations
    not resolved): base.yaml, the default option of each group, the top config."""
    merged = _yaml(CONFIG_DIR / "base.yaml")
    for item in read_yaml(CONFIG_DIR / f"{entry}.yaml").get("defaults", []):
        if isinstance(item, dict) and len(item) == 1:
            (group, option), = item.items()
            if group in GROUPS and option is not None:
                merged = _merged(merged, _placed(group, str(option)))
    return _merged(merged, _yaml(CONFIG_DIR / f"{entry}.yaml"))


def _merged(a: dict, b: dict) -> dict:
    """b over a, dicts merged key by key (as OmegaConf.merge)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
