"""The run contract: what a command may do with a run directory and a checkpoint, decided before
anything is written.

    fresh     no resume: the run directory must not hold checkpoints (another run lives there)
    resume    resume=CKPT (or trainer.auto_resume with last.pth): the same run continues. The stored
              config is compared with the new one; only RESUME_MAY_CHANGE may differ. A larger
              trainer.epochs extends the run (the schedule is rebuilt for the new length), a
              smaller one than already trained is refused.
    init      init_from=WEIGHTS: a new run starting from weights only (fine-tuning)
    evaluate  evaluate=true resume=CKPT: the network, classes, image size, normalisation (and the
              data set, when the command names none) come from the checkpoint's own config

Every refusal is one `UserError` line naming what differs and the ways on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from .errors import UserError

__all__ = ["RESUME_MAY_CHANGE", "StartPlan", "config_changes", "evaluation_overrides", "flatten", "plan_start",
           "override_text", "resume_group_overrides", "resume_value_overrides"]

# keys a resume may change: where and how the run executes, not what it computes
RESUME_MAY_CHANGE = frozenset({
    "trainer.epochs", "data.root", "data.workers", "trainer.devices", "trainer.accelerator", "trainer.dist_backend",
    "trainer.log_every", "trainer.progress", "trainer.progress_every_s", "trainer.keep_last", "trainer.dist_timeout",
    "trainer.cudnn_benchmark",
})
# keys that say what this command does, not what the run is: never compared
_COMMAND_KEYS = frozenset({
    "run_dir", "resume", "init_from", "evaluate", "trust_checkpoint", "save_weights", "weights_format", "export_backbone",
    "trainer.auto_resume", "trainer.stop_after_epochs", "data.download", "simam_lambda", "input_size",
})


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def config_changes(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(key, old, new) for every compared key whose value differs; keys unknown to `old` (added to
    the project after it was written) are not compared."""
    a, b = flatten(old), flatten(new)
    changes = []
    for key in sorted(set(a) | set(b)):
        if key in _COMMAND_KEYS or key.split(".")[0] == "hydra" or key not in a:
            continue
        if _norm(a.get(key)) != _norm(b.get(key, "<removed>")):
            changes.append((key, a.get(key), b.get(key, "<removed>")))
    return changes


def _norm(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return v


@dataclass
class StartPlan:
    kind: str                          # fresh | resume | init | evaluate
    checkpoint: Optional[Path] = None
    stored: dict = field(default_factory=dict)    # the checkpoint's meta: config, epoch, batch, step
    changes: list = field(default_factory=list)   # allowed changes of a resume
    extend_from: Optional[int] = None             # the stored trainer.epochs when extended
    finished: bool = False                        # resume of a run already at trainer.epochs


def _existing_path(value: Any, what: str) -> Path:
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise UserError(f"{what} checkpoint not found: {path} (check {what}=)")
    return path


def plan_start(cfg: dict, run_dir: Path, read_meta: Any) -> StartPlan:
    """Decide what this command does; `read_meta(path) -> dict | None` gives a checkpoint's
    config/epoch/batch/step (None for weights that are not a run of this project)."""
    if cfg.get("resume") and cfg.get("init_from"):
        raise UserError("resume= continues a run and init_from= starts a new one from weights: give one of them")
    if cfg.get("save_weights") and not (cfg.get("resume") or cfg.get("init_from")):
        raise UserError("save_weights=PATH writes the weights of resume=/init_from= in weights_format and exits (the original "
                        "--save_weights): add resume=CHECKPOINT; to write the trained backbone after training use export_backbone=PATH")
    if cfg.get("evaluate"):
        if not cfg.get("resume") and not cfg.get("init_from"):
            raise UserError("evaluate=true (-e) needs a checkpoint: add resume=PATH (--resume PATH)")
        return StartPlan("evaluate", _existing_path(cfg.get("resume") or cfg.get("init_from"), "resume"))
    if cfg.get("save_weights"):
        return StartPlan("weights", _existing_path(cfg.get("resume") or cfg.get("init_from"), "resume"))
    if cfg.get("init_from"):
        _refuse_existing_run(run_dir, read_meta, "init_from=")
        return StartPlan("init", _existing_path(cfg["init_from"], "init_from"))
    last = run_dir / "checkpoints" / "last.pth"
    path = _existing_path(cfg["resume"], "resume") if cfg.get("resume") else (
        last if cfg["trainer"].get("auto_resume") and last.is_file() else None)
    if path is None:
        _refuse_existing_run(run_dir, read_meta, "a fresh run")
        return StartPlan("fresh")
    meta = read_meta(path)
    if meta is None:  # weights of the original code or a bare state dict: the original --resume semantics
        return StartPlan("resume", path)
    return _plan_resume(cfg, path, meta)


def _refuse_existing_run(run_dir: Path, read_meta: Any, what: str) -> None:
    ckpts = run_dir / "checkpoints"
    found = sorted(p for p in ckpts.glob("*.pth")) if ckpts.is_dir() else []
    if not found:
        return
    last = ckpts / "last.pth"
    meta = read_meta(last) if last.is_file() else None
    where = f"epoch {meta['epoch']} of {flatten(meta.get('config') or {}).get('trainer.epochs', '?')}" if meta else found[0].name
    raise UserError(f"{run_dir} already holds a run ({where}); {what} would overwrite it: continue it with "
                    f"resume={last} or start elsewhere with hydra.run.dir=OTHER_DIR")


def _plan_resume(cfg: dict, path: Path, meta: dict) -> StartPlan:
    stored_cfg = meta.get("config") or {}
    changes = config_changes(stored_cfg, cfg)
    refused = [c for c in changes if c[0] not in RESUME_MAY_CHANGE]
    if refused:
        listed = ", ".join(f"{k} {o!r} -> {n!r}" for k, o, n in refused)
        raise UserError(f"resume changes the run's recipe ({listed}): drop these overrides to continue the run, "
                        f"or start a new run from its weights with init_from={path}")
    done = int(meta["epoch"]) + (1 if int(meta.get("batch", 0)) else 0)
    epochs = int(cfg["trainer"]["epochs"])
    if epochs < done:
        raise UserError(f"trainer.epochs={epochs} but the run already trained {done} epochs ({path}): "
                        f"use trainer.epochs>={done}")
    old_epochs = flatten(stored_cfg).get("trainer.epochs")
    extend = int(old_epochs) if old_epochs is not None and epochs > int(old_epochs) else None
    finished = int(meta["epoch"]) >= epochs and not int(meta.get("batch", 0))
    return StartPlan("resume", path, meta, changes, extend, finished)


# -------------------------------------------------------------------------------- evaluation
# what the checkpoint decides when evaluating it: config key -> how it is given on the command line
_IDENTITY = ("model.arch", "model.block", "model.kwargs", "data.num_classes", "data.image_size", "data.augment")
_DATA_COPY = ("root", "num_classes", "image_size", "augment", "num_train", "num_val", "crop_pct", "interpolation")


def evaluation_overrides(stored: dict, overrides: Sequence[str], data_given: bool, num_classes: Optional[int] = None) -> list[str]:
    """Overrides that make the command build the checkpoint's network (and data set when the command
    gives none). An explicit override that contradicts the checkpoint is refused naming both."""
    flat = flatten(stored)
    given = {o.lstrip("+").split("=", 1)[0]: o.split("=", 1)[1] for o in overrides if "=" in o and not o.startswith("~")}
    wanted: dict[str, Any] = {"attention": flat.get("attention.name")}
    wanted.update({k: v for k, v in flat.items() if k in _IDENTITY or k.startswith("model.kwargs.")})
    if num_classes is not None:  # the classes the network was built with (data.num_classes may be null: from folders)
        wanted["data.num_classes"] = int(num_classes)
    wanted.update({k: v for k, v in flat.items() if k.startswith("attention.") and k != "attention.name"})
    if not data_given and "data.name" in flat:
        wanted["data"] = flat["data.name"]
        wanted.update({f"data.{k}": flat[f"data.{k}"] for k in _DATA_COPY if f"data.{k}" in flat and f"data.{k}" not in given})
    out = []
    for key, value in wanted.items():
        if key in given:
            _check_same(key, given[key], value)
            continue
        out.append(f"{key}={override_text(value)}")
    return out


def _check_same(key: str, given: str, stored: Any) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_override(f"{key}={given}").value()
    except Exception:  # noqa: BLE001 - compare as text
        parsed = given
    if _norm(parsed) != _norm(stored) and str(parsed) != str(stored):
        raise UserError(f"{key}={given} contradicts the checkpoint, which holds {key}={override_text(stored)}: "
                        f"drop {key}= (evaluation takes it from the checkpoint)")


def override_text(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{override_text(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(override_text(x) for x in v) + "]"
    if isinstance(v, str) and (not v or any(c in v for c in " ,=[]{}:'\"\\")):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(v)


def read_meta(path: os.PathLike | str, trust: bool = False) -> Optional[dict]:
    """config/epoch/batch/step of one of this project's checkpoints, None for other weights."""
    from .checkpoint import is_run_checkpoint, load_checkpoint

    obj = load_checkpoint(path, trust=trust, mmap=True)
    if not is_run_checkpoint(obj):
        return None
    return {k: obj.get(k) for k in ("config", "epoch", "batch", "step", "model_spec", "format_version")}


# --------------------------------------------------------------------------------------- resume
_GROUPS = ("data", "attention", "optim", "sched")


def _given_keys(overrides: Sequence[str]) -> set[str]:
    return {o.lstrip("+~").split("=", 1)[0] for o in overrides}


def resume_group_overrides(stored: dict, overrides: Sequence[str]) -> list[str]:
    """A resume starts from the checkpoint's config: the groups the run used (data=, attention=,
    optim=, sched=) unless the command names one."""
    given = _given_keys(overrides)
    return [f"{g}={stored[g]['name']}" for g in _GROUPS
            if g not in given and isinstance(stored.get(g), dict) and stored[g].get("name")]


def resume_value_overrides(stored: dict, composed: dict, overrides: Sequence[str]) -> list[str]:
    """...and every stored value the command does not set itself (keys the project has since
    dropped are left out); what the command sets is then compared with the run (plan_start)."""
    given = _given_keys(overrides)
    now = flatten(composed)
    out = []
    for key, value in flatten(stored).items():
        if key in _COMMAND_KEYS or key.split(".")[0] == "hydra" or key not in now:
            continue
        if any(key == g or key.startswith(g + ".") or g.startswith(key + ".") for g in given):
            continue
        if _norm(now[key]) != _norm(value):
            out.append(f"{key}={override_text(value)}")
    return out
