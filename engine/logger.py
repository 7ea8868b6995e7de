"""What a run reports: metrics.jsonl (one line per epoch), TensorBoard scalars, console progress.

Only rank 0 creates a `RunLogger` that writes; other ranks get one with `enabled=False`.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, TextIO

from .files import json_line

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


class _NoCudaRuntimeNote(logging.Filter):
    """torch.utils.cpp_extension warns "No CUDA runtime is found" whenever Inductor compiles on a
    machine without CUDA (every SimAM run on CPU): not the user's concern, and it breaks the bar."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No CUDA runtime is found" not in record.getMessage()


def setup_logging(log_file: Optional[Path], enabled: bool = True) -> logging.Logger:
    """The same console format in every process; rank 0 (`enabled`) also appends to `log_file`.

    Called once the run is validated, so a refused command never writes into a run directory.
    Other ranks log warnings only.
    """
    log = get_logger()
    cpp = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaRuntimeNote) for f in cpp.filters):
        cpp.addFilter(_NoCudaRuntimeNote())
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
    """metrics.jsonl + TensorBoard (`tb/`) + progress: a bar on a terminal, lines otherwise.

    Progress comes from the training loop's callbacks: `advance` after every batch (host values
    only: the bar moves every step without a sync), `step` at logging steps (loss and lr). Both
    show images/s and the ETA of the epoch and of the whole run; the run's ETA counts the
    remaining batches at this epoch's pace plus, per remaining epoch, the time measured between
    the end of one epoch's training and the start of the next (evaluation, checkpoints). Without
    a terminal (`progress="lines"`) a line is written at each logging step and, between them, at
    least every `progress_every_s` seconds.
    """

    def __init__(self, run_dir: Optional[Path], enabled: bool = True, progress: str = "auto", progress_every_s: float = 30.0,
                 tensorboard: bool = True, stream: Optional[TextIO] = None, clock: Callable[[], float] = time.perf_counter,
                 resume_at: Optional[tuple[int, int]] = None) -> None:
        self.enabled = enabled and run_dir is not None
        self.run_dir = run_dir
        self.log = get_logger()
        self.tb = self.tb_steps = None
        self.stream = stream
        if progress == "auto":
            progress = "bar" if (stream or sys.stderr).isatty() else "lines"
        self.progress = progress if self.enabled else "none"
        self.progress_every_s, self.clock = float(progress_every_s), clock
        self._bar = None
        self._last: dict[str, Any] = {}
        self._ended: Optional[float] = None
        self._overhead = 0.0
        if self.enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                self._open_tensorboard(run_dir, resume_at)

    def _open_tensorboard(self, run_dir: Path, resume_at: Optional[tuple[int, int]]) -> None:
        """tb/ (per-epoch scalars, step = epoch) and tb/steps/ (per-step loss, step = update). On a
        resume at (epoch, step) each writer purges what a killed run logged after the checkpoint,
        so TensorBoard shows no epoch or step twice."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is a requirement
            self.log.warning("tensorboard not installed: no tb/ events")
            return
        epoch, step = resume_at or (None, None)
        self.tb = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=None if epoch is None else epoch + 1)
        self.tb_steps = SummaryWriter(log_dir=str(run_dir / "tb" / "steps"), purge_step=None if step is None else step + 1)

    def info(self, msg: str) -> None:
        if self.enabled:
            self.log.info(msg)

    # ------------------------------------------------------------------ progress within an epoch
    def start_epoch(self, epoch: int, epochs: int, steps: int, first: int = 0, run_steps_left: Optional[int] = None) -> None:
        """`steps` batches in this epoch, from batch `first`; `run_steps_left`: batches left in the
        run from here (default: the rest of this epoch and `steps` per later epoch)."""
        now = self.clock()
        if self._ended is not None:
            self._overhead = now - self._ended
        self._epoch, self._epochs, self._steps, self._first, self._t0 = epoch, epochs, steps, first, now
        self._run_left = (steps - first) + (epochs - epoch - 1) * steps if run_steps_left is None else int(run_steps_left)
        self._pos, self._last, self._line_t = first, {}, now
        if self.progress == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=steps, initial=first, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                             dynamic_ncols=True, file=self.stream)

    @property
    def position(self) -> int:
        """The last batch reported in this epoch (the bar's counter)."""
        return getattr(self, "_pos", 0)

    def _status(self) -> str:
        """images/s, the ETA of the epoch and of the run, and the last logged loss and lr."""
        elapsed = max(self.clock() - self._t0, 1e-9)
        done = self._pos - self._first
        per_step = elapsed / max(done, 1)
        later_epochs = self._epochs - self._epoch - 1
        eta_run = per_step * (self._run_left - done) + self._overhead * later_epochs
        parts = [f"{self._last.get('images', 0) / elapsed:.0f} img/s",
                 f"eta {_fmt_time(per_step * (self._steps - self._pos))}", f"run eta {_fmt_time(eta_run)}"]
        if "loss" in self._last:
            parts[:0] = [f"loss {self._last['loss']:.4f}", f"lr {self._last['lr']:.4g}"]
        return " ".join(parts)

    def advance(self, info: dict[str, Any]) -> None:
        """After every batch: step (batch number in the epoch), images (all ranks, so far)."""
        if self.progress == "none":
            return
        self._pos = int(info["step"])
        self._last["images"] = info.get("images", 0)
        if self._bar is not None:
            self._bar.set_postfix_str(self._status(), refresh=False)
            self._bar.update(self._pos - self._bar.n)
            if self._pos >= self._steps:
                self._bar.refresh()  # the final count, even within tqdm's minimum interval
        elif self.progress == "lines" and self.clock() - self._line_t >= self.progress_every_s:
            self._line()

    def _line(self) -> None:
        self._line_t = self.clock()
        self.log.info(f"epoch {self._epoch + 1}/{self._epochs} step {self._pos}/{self._steps} {self._status()}")

    def step(self, info: dict[str, Any]) -> None:
        """At logging steps: step, global_step, loss, lr, images_per_s (and images)."""
        if not self.enabled:
            return
        if self.tb_steps is not None:
            self.tb_steps.add_scalar("train/step_loss", info["loss"], info["global_step"])
        self._pos = int(info["step"])
        self._last.update(loss=info["loss"], lr=info["lr"], images=info.get("images", self._last.get("images", 0)))
        if self._bar is not None:
            self._bar.set_postfix_str(self._status(), refresh=False)
            self._bar.update(self._pos - self._bar.n)
        elif self.progress == "lines":
            self._line()

    def end_epoch(self) -> None:
        self._ended = self.clock()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # ------------------------------------------------------------------ per-epoch records
    def epoch(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl and write the epoch's TensorBoard scalars."""
        if not self.enabled:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json_line(record) + "\n")
        if self.tb is not None:
            step = record["epoch"]
            for key, tag in (("train_loss", "train/loss"), ("train_acc1", "train/acc1"), ("val_loss", "val/loss"),
                             ("val_acc1", "val/acc1"), ("val_acc5", "val/acc5"), ("lr", "lr"), ("throughput", "throughput"),
                             ("ema_val_acc1", "val/ema_acc1")):
                if record.get(key) is not None:
                    self.tb.add_scalar(tag, record[key], step)
            self.tb.flush()
        ema = f" | ema acc1 {record['ema_val_acc1']:.2f} acc5 {record['ema_val_acc5']:.2f}" if "ema_val_acc1" in record else ""
        self.log.info(
            "epoch {epoch} lr {lr:.4g} train loss {train_loss:.4f} acc1 {train_acc1:.2f} | val loss {val_loss:.4f} "
            "acc1 {val_acc1:.2f} acc5 {val_acc5:.2f}".format(**record) + ema
            + " | {throughput:.0f} img/s {epoch_time:.1f}s".format(**record)
        )

    def close(self) -> None:
        self.end_epoch()
        for writer in (self.tb, self.tb_steps):
            if writer is not None:
                writer.close()
