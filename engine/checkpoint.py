"""The checkpoint format, its versions, the run directory's files and the last/best/epoch_N policy.

A checkpoint of this project is a dict (read with `torch.load(weights_only=True)`):

    format_version  2 (files without it are version 1: same keys, read as they are)
    model           the unwrapped model's state dict (CPU tensors, no `module.`/`_orig_mod.`/thop keys)
    model_spec      arch, attention, attention_kwargs, num_classes: what `networks` builds
    config          the run's resolved config (a plain dict): what a resume is compared with
    optimizer, scaler, ema, scheduler (informative: the schedule is rebuilt from config and step)
    epoch, batch, step, best_acc1, best_epoch, best_metric, metrics   the `TrainState`
    rng             this process's generators; rng_ranks: one entry per rank (bit-exact resume)
    torch_version

Files of a run directory (`RunPaths`): checkpoints/last.pth (every epoch and on a stop signal),
checkpoints/best.pth (a copy when the selected val acc1 improves), checkpoints/epoch_NNNN.pth
(`trainer.keep_last` newest kept), metrics.jsonl, summary.json, status.json, eval.json,
evals.jsonl, .hydra/config.yaml + overrides.yaml, tb/, <job>.log. All go through engine.files.
"""
from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from networks.weights import WeightsError, read_checkpoint

from .errors import UserError
from .files import copy_atomic, write_atomic

__all__ = [
    "FORMAT_VERSION", "RunPaths", "TrainState", "capture_rng", "is_run_checkpoint", "load_checkpoint",
    "make_checkpoint", "prune_checkpoints", "restore_rng", "save_atomic", "save_epoch_files", "to_cpu",
]

FORMAT_VERSION = 2
_RUN_KEYS = ("model", "model_spec", "optimizer", "epoch", "step")


@dataclass(frozen=True)
class RunPaths:
    """Where each file of a run lives."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pth"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pth"

    def epoch_file(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:04d}.pth"

    def has_checkpoints(self) -> bool:
        return self.checkpoints.is_dir() and any(p.suffix == ".pth" for p in self.checkpoints.iterdir())

    def __getattr__(self, name: str) -> Path:
        files = {"metrics": "metrics.jsonl", "summary": "summary.json", "status": "status.json", "eval_json": "eval.json",
                 "evals": "evals.jsonl", "config_snapshot": ".hydra/config.yaml", "overrides_snapshot": ".hydra/overrides.yaml",
                 "tb": "tb"}
        if name in files:
            return self.root / files[name]
        raise AttributeError(name)

    def log(self, job: str) -> Path:
        return self.root / f"{job}.log"


@dataclass
class TrainState:
    """Progress of a run: `epoch` epochs and `batch` batches of the next one are done."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_acc1: float = float("-inf")
    best_epoch: int = -1
    best_metric: str = "val_acc1"
    metrics: dict = field(default_factory=dict)

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "TrainState":
        return cls(epoch=int(ckpt["epoch"]), batch=int(ckpt.get("batch", 0)), step=int(ckpt["step"]),
                   best_acc1=float(ckpt.get("best_acc1", float("-inf"))), best_epoch=int(ckpt.get("best_epoch", -1)),
                   best_metric=str(ckpt.get("best_metric", "val_acc1")), metrics=dict(ckpt.get("metrics") or {}))


def to_cpu(obj: Any) -> Any:
    """The same structure with every tensor on the CPU (a checkpoint loads on a machine without GPUs)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def make_checkpoint(*, model: torch.nn.Module, optimizer: Any, scheduler: Any, scaler: Any, ema: Any, state: TrainState,
                    config: dict, rng_ranks: list) -> dict:
    """The dict written to last.pth: everything needed to continue exactly."""
    return {
        "format_version": FORMAT_VERSION,
        "model": to_cpu(model.state_dict()),
        "model_spec": dict(getattr(model, "model_spec", {}) or {}),
        "optimizer": to_cpu(optimizer.state_dict()),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": to_cpu(ema.module.state_dict()) if ema is not None else None,
        **{k: v for k, v in asdict(state).items()},
        "best_acc1": float(state.best_acc1),
        "metrics": {k: float(v) for k, v in state.metrics.items() if isinstance(v, (int, float))},
        "rng": rng_ranks[0] if rng_ranks else capture_rng(),
        "rng_ranks": rng_ranks,
        "config": config,
        "torch_version": str(torch.__version__),
    }


def is_run_checkpoint(obj: Any) -> bool:
    """A checkpoint of this project that a run can continue from (not just weights)."""
    return isinstance(obj, dict) and all(k in obj for k in _RUN_KEYS)


def load_checkpoint(path: os.PathLike | str, trust: bool = False, mmap: bool = False) -> dict:
    """Read a checkpoint on CPU; unreadable files and unknown format versions are a one-line `UserError`.
    mmap: tensors mapped, not read (for looking at its config and progress)."""
    try:
        obj = read_checkpoint(path, trust=trust, mmap=mmap)
    except WeightsError as e:
        raise UserError(str(e)) from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a checkpoint (a {type(obj).__name__}, expected a dict)")
    version = obj.get("format_version", 1 if is_run_checkpoint(obj) else None)
    if version is not None and int(version) > FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format {version}, newer than this code's {FORMAT_VERSION}: update the project")
    return obj


def save_atomic(obj: Any, path: os.PathLike | str) -> None:
    """`torch.save` through engine.files' temp-file protocol."""
    write_atomic(path, lambda f: torch.save(obj, f))


def save_epoch_files(paths: RunPaths, ckpt: dict, *, improved: bool, keep_last: int) -> None:
    """last.pth, then a copy to best.pth when improved and to epoch_NNNN.pth when keeping epochs."""
    save_atomic(ckpt, paths.last)
    if improved:
        copy_atomic(paths.last, paths.best)
    if keep_last > 0 and int(ckpt.get("batch", 0)) == 0:
        copy_atomic(paths.last, paths.epoch_file(int(ckpt["epoch"])))
        prune_checkpoints(paths.checkpoints, keep_last)


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    """Keep the `keep` newest `epoch_XXXX.pth` files, delete older ones."""
    files = sorted(ckpt_dir.glob("epoch_*.pth"))
    for f in files[: max(len(files) - keep, 0)]:
        f.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ RNG
def _numpy_state_to_plain(st: tuple) -> tuple:
    """NumPy's RNG state with its key array as a tensor, so `torch.load(weights_only=True)` reads it."""
    name, keys, pos, has_gauss, cached = st
    return (str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached))


def _numpy_state_from_plain(st: Any) -> tuple:
    name, keys, pos, has_gauss, cached = st
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    return (name, keys.astype(np.uint32), int(pos), int(has_gauss), float(cached))


def capture_rng(extra: Optional[dict[str, torch.Generator]] = None) -> dict[str, Any]:
    """States of every generator the process uses: Python, NumPy, torch CPU, CUDA, and named extras."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    for name, gen in (extra or {}).items():
        state[f"gen:{name}"] = gen.get_state()
    return state


def restore_rng(state: dict[str, Any], extra: Optional[dict[str, torch.Generator]] = None) -> bool:
    """Inverse of `capture_rng`; False when the CUDA states could not be restored (fewer GPUs)."""
    if "python" in state:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]) if isinstance(py, (list, tuple)) else py)
    if "numpy" in state:
        np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    exact = True
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):
            exact = False
    for name, gen in (extra or {}).items():
        if f"gen:{name}" in state:
            gen.set_state(state[f"gen:{name}"])
    return exact
