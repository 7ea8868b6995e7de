"""What a run reports: metrics.jsonl (one line per epoch), TensorBoard scalars, console progress.

Only rank 0 creates a `RunLogger` that writes; other ranks get one with `enabled=False`.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

__all__ = ["RunLogger", "get_logger", "setup_logging"]

LOG = logging.getLogger("simam")


_FORMAT = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S")


def get_logger() -> logging.Logger:
    """The project's logger: console (stderr) until `setup_logging` adds the run's log file."""
    if not LOG.handlers:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(_FORMAT)
        LOG.addHandler(console)
        LOG.propagate = False
    LOG.setLevel(logging.INFO)
    return LOG


def setup_logging(log_file: Optional[Path], enabled: bool = True) -> logging.Logger:
    """The same console format in every process; rank 0 (`enabled`) also appends to `log_file`.

    Called once the run is validated, so a refused command never writes into a run directory.
    Other ranks log warnings only.
    """
    log = get_logger()
    for h in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        log.removeHandler(h)
        h.close()
    if enabled and log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        handler.setFormatter(_FORMAT)
        log.addHandler(handler)
    log.setLevel(logging.INFO if enabled else logging.WARNING)
    return log


def _fmt_time(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class RunLogger:
    """metrics.jsonl + TensorBoard (`tb/`) + progress lines or a bar."""

    def __init__(self, run_dir: Optional[Path], enabled: bool = True, progress: str = "auto") -> None:
        self.enabled = enabled and run_dir is not None
        self.run_dir = run_dir
        self.log = get_logger()
        self.tb = None
        if progress == "auto":
            progress = "bar" if sys.stderr.isatty() else "lines"
        self.progress = progress if self.enabled else "none"
        self._bar = None
        if self.enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / "tb"))
            except ImportError:  # pragma: no cover - tensorboard is a requirement
                self.log.warning("tensorboard not installed: no tb/ events")

    def info(self, msg: str) -> None:
        if self.enabled:
            self.log.info(msg)

    # ------------------------------------------------------------------ progress within an epoch
    def start_epoch(self, epoch: int, epochs: int, steps: int, first: int = 0) -> None:
        self._epoch, self._epochs, self._steps, self._t0 = epoch, epochs, steps, time.perf_counter()
        self._first = first
        if self.progress == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)

    def step(self, info: dict[str, Any]) -> None:
        """Called at logging steps with step, global_step, loss, lr, images_per_s."""
        if not self.enabled:
            return
        if self.tb is not None:
            self.tb.add_scalar("train/step_loss", info["loss"], info["global_step"])
        if self._bar is not None:
            self._bar.n = info["step"]
            self._bar.set_postfix(loss=f"{info['loss']:.4f}", lr=f"{info['lr']:.3g}", img_s=f"{info['images_per_s']:.0f}")
            self._bar.refresh()
        elif self.progress == "lines":
            elapsed = time.perf_counter() - self._t0
            done = info["step"] - self._first
            eta = elapsed / max(done, 1) * (self._steps - info["step"])
            self.log.info(
                f"epoch {self._epoch + 1}/{self._epochs} step {info['step']}/{self._steps} loss {info['loss']:.4f} "
                f"lr {info['lr']:.4g} {info['images_per_s']:.0f} img/s eta {_fmt_time(eta)}"
            )

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # ------------------------------------------------------------------ per-epoch records
    def epoch(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl and write the epoch's TensorBoard scalars."""
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.tb is not None:
            step = record["epoch"]
            for key, tag in (("train_loss", "train/loss"), ("train_acc1", "train/acc1"), ("val_loss", "val/loss"),
                             ("val_acc1", "val/acc1"), ("val_acc5", "val/acc5"), ("lr", "lr"), ("throughput", "throughput"),
                             ("ema_val_acc1", "val/ema_acc1")):
                if record.get(key) is not None:
                    self.tb.add_scalar(tag, record[key], step)
            self.tb.flush()
        self.log.info(
            "epoch {epoch} lr {lr:.4g} train loss {train_loss:.4f} acc1 {train_acc1:.2f} | val loss {val_loss:.4f} "
            "acc1 {val_acc1:.2f} acc5 {val_acc5:.2f} | {throughput:.0f} img/s {epoch_time:.1f}s".format(**record)
        )

    def close(self) -> None:
        self.end_epoch()
        if self.tb is not None:
            self.tb.close()
