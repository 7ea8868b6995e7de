"""Stop signals: the trainer's stop flag (finish the step, save, exit) and the loader workers' mask.

SLURM sends SIGTERM (preemption) and submitit's SIGUSR2 (time limit) to every process of a job;
the trainer saves `last.pth` and exits with EXIT_PREEMPTED, loader workers ignore them.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any, Optional

import torch

from .distributed import DistInfo

__all__ = ["EXIT_PREEMPTED", "StopFlag", "ignore_stop_signals_in_worker"]

EXIT_PREEMPTED = 3  # exit code after a signal-triggered checkpoint (SLURM requeue / Ctrl-C)


class StopFlag:
    """Set by SIGTERM / SIGUSR1 / SIGUSR2 / SIGINT: finish the step, save last.pth, exit EXIT_PREEMPTED.

    SIGUSR2 is submitit's time-limit warning (hydra/launcher=slurm, signal_delay_s before the end):
    once last.pth is saved, `forward()` gives the signal to the handler installed before ours,
    submitit's, which requeues the job and exits.

    With several processes the ranks must stop after the same step, or the next collective
    hangs: the flag is then agreed on (all-reduce MAX) every `every` steps, at the same steps on
    every rank; a single process checks it after every step.
    """

    def __init__(self, info: Optional[DistInfo] = None, every: int = 1) -> None:
        self.signum: Optional[int] = None
        self._old: dict[int, Any] = {}
        self._info = info
        self._every = max(int(every), 1)
        self._calls = 0

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None), getattr(signal, "SIGUSR2", None)):
            if sig is not None:
                try:
                    self._old[sig] = signal.signal(sig, self._handle)
                except ValueError:  # not the main thread
                    pass

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __call__(self) -> bool:
        if self._info is None or not self._info.distributed:
            return self.signum is not None
        self._calls += 1
        if self._calls % self._every:
            return False
        flag = torch.tensor([float(self.signum is not None)], device=self._info.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def forward(self) -> None:
        """Call the handler that preceded ours for the signal received (submitit's requeue); may exit."""
        old = self._old.get(self.signum) if self.signum is not None else None
        if callable(old) and old is not signal.default_int_handler:
            old(self.signum, None)


def ignore_stop_signals_in_worker() -> None:
    """In a loader worker: ignore SIGUSR1/SIGUSR2, and SIGTERM unless the parent process sends it.

    The parent must still be able to end a worker with SIGTERM: DataLoader's shutdown does when
    a worker does not stop by itself, and multiprocessing's exit handler terminates (then joins)
    every worker still alive when the trainer exits, e.g. those of an iterator left unfinished by
    an exception; a worker ignoring that SIGTERM makes the trainer hang at exit. So SIGTERM is
    blocked and a thread waits for it with sigwaitinfo, which gives the sender: from the parent
    it kills the worker as SIGTERM would, from anyone else (SLURM's job-wide signal) it is dropped.
    Without sigwaitinfo (not Linux) SIGTERM is ignored entirely.
    """
    for name in ("SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # before the thread starts: it inherits the mask

    def wait_for_parent() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # in this thread only
        os.kill(os.getpid(), signal.SIGTERM)  # default action: the worker ends as if never blocked

    threading.Thread(target=wait_for_parent, name="sigterm-from-parent", daemon=True).start()
