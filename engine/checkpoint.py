"""Complete, atomic checkpoints: model, optimizer, scheduler, scaler, EMA, progress, RNG states, config.

Saved through a temporary file in the same directory, fsync'ed and renamed with `os.replace`,
so a crash or a kill during `torch.save` never leaves a broken `last.pth` (PITFALLS: atomic
saves). Metrics are stored as Python floats, never device tensors.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from networks.weights import WeightsError, read_checkpoint

from .errors import UserError

__all__ = ["capture_rng", "load_checkpoint", "prune_checkpoints", "restore_rng", "save_atomic"]


def save_atomic(obj: Any, path: os.PathLike | str) -> None:
    """`torch.save` to a temp file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600 files
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise UserError(f"cannot write checkpoint {path}: {e.strerror or e} (disk full or not writable?); the previous checkpoint is kept") from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    """Keep the `keep` newest `epoch_XXXX.pth` files, delete older ones."""
    files = sorted(ckpt_dir.glob("epoch_*.pth"))
    for f in files[: max(len(files) - keep, 0)]:
        f.unlink(missing_ok=True)


def load_checkpoint(path: os.PathLike | str, trust: bool = False) -> dict:
    """Read a checkpoint on CPU, turning unreadable files into a one-line `UserError`."""
    try:
        obj = read_checkpoint(path, trust=trust)
    except WeightsError as e:
        raise UserError(str(e)) from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a checkpoint (a {type(obj).__name__}, expected a dict)")
    return obj


def _numpy_state_to_plain(st: tuple) -> tuple:
    """NumPy's RNG state with its key array as a tensor, so `torch.load(weights_only=True)` reads it."""
    name, keys, pos, has_gauss, cached = st
    return (str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached))


def _numpy_state_from_plain(st: Any) -> tuple:
    name, keys, pos, has_gauss, cached = st
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    return (name, keys.astype(np.uint32), int(pos), int(has_gauss), float(cached))


def capture_rng(extra: Optional[dict[str, torch.Generator]] = None) -> dict[str, Any]:
    """States of every generator the run uses: Python, NumPy, torch CPU, CUDA, and named extras."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for name, gen in (extra or {}).items():
        state[f"gen:{name}"] = gen.get_state()
    return state


def restore_rng(state: dict[str, Any], extra: Optional[dict[str, torch.Generator]] = None) -> None:
    """Inverse of `capture_rng`."""
    if "python" in state:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]) if isinstance(py, (list, tuple)) else py)
    if "numpy" in state:
        np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):  # fewer GPUs than when saved: seeds differ, results not bit-exact
            pass
    for name, gen in (extra or {}).items():
        if f"gen:{name}" in state:
            gen.set_state(state[f"gen:{name}"])
