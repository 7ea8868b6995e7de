"""Process groups for DistributedDataParallel: torchrun (one or many nodes) or `trainer.devices=N`.

NCCL on GPUs, gloo on CPU; a finite timeout so that a dead rank makes the others fail instead of
hanging (PITFALLS). Only rank 0 writes files and logs. One process per GPU: more local processes
than visible GPUs are refused (two ranks on one GPU make NCCL fail with "Duplicate GPU").
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional


import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "CPUSyncBatchNorm", "DistInfo", "EXIT_CRASH", "EXIT_INTERRUPTED", "SpawnError", "all_reduce_min", "all_reduce_sum",
    "available_cores", "barrier", "broadcast_object", "cleanup", "convert_sync_batchnorm", "find_free_port",
    "init_distributed", "spawn", "threads_per_process", "world_size",
]

EXIT_CRASH = 1  # an unexpected exception (a bug, an out-of-memory...) or a rank killed by a signal
EXIT_INTERRUPTED = 130  # a second Ctrl-C: stopped at once, nothing saved (128 + SIGINT, as a shell reports it)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(accelerator: str, local_rank: int, local_world: Optional[int]) -> torch.device:
    """cuda:LOCAL_RANK, one GPU per process; `local_world` is LOCAL_WORLD_SIZE (torchrun, spawn).

    Without LOCAL_WORLD_SIZE, a process that sees a single GPU uses it whatever its local rank (a
    launcher binding one GPU per task through CUDA_VISIBLE_DEVICES).
    """
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    from .errors import UserError

    if not torch.cuda.is_available():
        raise UserError("trainer.accelerator=cuda but no CUDA GPU is visible: use trainer.accelerator=cpu")
    count = torch.cuda.device_count()
    processes = local_world if local_world is not None else local_rank + 1
    if processes > count and not (local_world is None and count == 1):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "not set")
        raise UserError(f"{processes} processes on this node but {count} visible GPU(s) "
                        f"(CUDA_VISIBLE_DEVICES {visible}): start at most {count} per node "
                        f"(torchrun --nproc_per_node={count} or trainer.devices={count})")
    index = local_rank if local_rank < count else 0
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_distributed(accelerator: str = "auto", backend: str = "auto", timeout_s: float = 1800) -> DistInfo:
    """Join the process group described by the environment (RANK, WORLD_SIZE, MASTER_ADDR, ...)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = os.environ.get("LOCAL_WORLD_SIZE")
    device = _pick_device(accelerator, local_rank, int(local_world) if local_world else None)
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return DistInfo(rank, world_size, local_rank, device)


def cleanup() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def world_size() -> int:
    """Processes in the default group (1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_min(t: torch.Tensor) -> torch.Tensor:
    """Minimum of `t` over all ranks (in place; a no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over all ranks (in place; a no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` of rank `src` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is again a sum over ranks (gradients of global statistics)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        t = t.clone()
        dist.all_reduce(t, group=group)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm over the global batch of all ranks, for CPU (gloo) process groups.

    torch's `nn.SyncBatchNorm` only runs on GPUs (DDP refuses it on CPU). Here the per-channel
    sum, sum of squares and count are summed over ranks in forward, and their gradients in
    backward, exactly as SyncBatchNorm does; statistics are accumulated in float64. The
    reductions use a process group of their own: on the default group they would interleave
    with DDP's asynchronous gradient buckets. With one process it is BN with float64 statistics,
    so that 1- and N-process runs do the same arithmetic.
    """

    group: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        c = x.shape[1]
        xd = x.double()
        count = torch.full((1,), float(x.numel() // c), dtype=torch.float64, device=x.device)
        stats = torch.cat([xd.sum(dim=(0, 2, 3)), (xd * xd).sum(dim=(0, 2, 3)), count])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            stats = _AllReduceSum.apply(stats, self.group)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = (xd - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight.double()[None, :, None, None] + self.bias.double()[None, :, None, None]
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BN layers -> nn.SyncBatchNorm on GPUs, CPUSyncBatchNorm on CPU (weights and stats kept).

    Every rank must call this at the same point (it creates a process group on CPU).
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    group = dist.new_group(backend="gloo") if dist.is_available() and dist.is_initialized() else None
    return _to_cpu_sync(model, group)


def _to_cpu_sync(module: nn.Module, group: Any) -> nn.Module:
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CPUSyncBatchNorm):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        out.load_state_dict(module.state_dict())
        out.train(module.training)
        out.group = group
    for name, child in module.named_children():
        out.add_module(name, _to_cpu_sync(child, group))
    return out


def find_free_port() -> int:
    """A free TCP port on localhost for MASTER_PORT."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a SLURM allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def threads_per_process(nprocs: int, cores: Optional[int] = None, environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """Intra-op threads for each of `nprocs` processes on this node: cores / nprocs (at least 1).

    None when OMP_NUM_THREADS is set: the user's choice stands (torch reads it at start-up).
    A process started by torch.multiprocessing otherwise uses every core's threads, so N of
    them oversubscribe N-fold (torchrun sets OMP_NUM_THREADS=1 for this reason).
    """
    env = os.environ if environ is None else environ
    if env.get("OMP_NUM_THREADS"):
        return None
    return max(1, (available_cores() if cores is None else int(cores)) // max(int(nprocs), 1))


class SpawnError(Exception):
    """The ranks started by `spawn` did not all finish; `str(e)` is one line for the user.

    exit_code: 2 (EXIT_USER_ERROR: the message is the rank's UserError), 3 (EXIT_PREEMPTED: a stop
    signal; the ranks saved what they could), 1 (EXIT_CRASH: an exception or a rank killed by a
    signal; `detail` holds the rank's traceback when there is one), 130 (EXIT_INTERRUPTED: a
    second Ctrl-C). rank: the rank reported; signum: the stop signal the parent received, if any.
    """

    def __init__(self, message: str, exit_code: int, rank: Optional[int] = None, signum: Optional[int] = None, detail: str = "") -> None:
        super().__init__(message)
        self.exit_code, self.rank, self.signum, self.detail = exit_code, rank, signum, detail


def _run_rank(fn: Callable, args: tuple) -> tuple[int, str, str]:
    """fn(*args) -> (exit code, one-line message, traceback)."""
    from .errors import EXIT_USER_ERROR, UserError

    try:
        fn(*args)
    except UserError as e:
        return EXIT_USER_ERROR, str(e), ""
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0), "", ""
        return EXIT_CRASH, str(e.code), ""
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED, "interrupted by a second Ctrl-C; nothing was saved", ""
    except BaseException as e:  # noqa: BLE001 - reported to the parent in one line, traceback kept
        first = (str(e).strip().splitlines() or [""])[0]
        return EXIT_CRASH, f"{type(e).__name__}: {first}" if first else type(e).__name__, traceback.format_exc()
    return 0, "", ""


def _spawn_entry(local_rank: int, nprocs: int, port: int, threads: Optional[int], report_dir: str, fn: Callable, args: tuple) -> None:
    os.environ.update(
        RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nprocs),
        LOCAL_WORLD_SIZE=str(nprocs), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    if threads is not None:  # before any work: the thread pool is sized once
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    code, message, detail = _run_rank(fn, args)
    if code:
        tmp = Path(report_dir) / f".rank{local_rank}.tmp"
        tmp.write_text(json.dumps({"code": code, "message": message, "detail": detail}))
        os.replace(tmp, Path(report_dir) / f"rank{local_rank}.json")
    sys.exit(code)


_STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")  # those engine.signals.StopFlag handles


def _forward_stop_signals(processes: list, received: list[int]) -> dict[int, Any]:
    """Install handlers that pass the parent's stop signals on to the ranks; returns the old ones.

    SIGINT is passed on as SIGTERM: a Ctrl-C in the terminal also reaches the ranks directly (one
    process group), and a second SIGINT means "stop now, do not save" to a rank. SIGTERM has the
    same effect on a rank as one SIGINT (save at the next step and exit with code 3).
    """

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        sent = signal.SIGTERM if signum == signal.SIGINT else signum
        for p in processes:
            if p.is_alive():
                os.kill(p.pid, sent)

    old = {}
    for name in _STOP_SIGNALS:
        if hasattr(signal, name):
            try:
                old[getattr(signal, name)] = signal.signal(getattr(signal, name), forward)
            except ValueError:  # not the main thread: nothing to forward from here
                pass
    return old


def _read_reports(report_dir: str) -> dict[int, dict]:
    reports = {}
    for f in Path(report_dir).glob("rank*.json"):
        reports[int(f.stem[len("rank"):])] = json.loads(f.read_text())
    return reports


def _spawn_error(e: Exception, report_dir: str, signum: Optional[int]) -> SpawnError:
    """One line and one exit code for the first failure (a rank's user error first: its cause)."""
    from .errors import EXIT_USER_ERROR
    from .signals import EXIT_PREEMPTED

    reports = _read_reports(report_dir)
    users = [r for r, rep in sorted(reports.items()) if rep["code"] == EXIT_USER_ERROR]
    rank = users[0] if users else int(getattr(e, "error_index", 0))
    rep = reports.get(rank)
    stop = f" after this process received {signal.Signals(signum).name}" if signum else ""
    if rep is not None:
        code, message = int(rep["code"]), rep["message"]
        if code == EXIT_USER_ERROR:
            return SpawnError(message, code, rank, signum)
        if code == EXIT_PREEMPTED:
            return SpawnError(f"training process {rank} stopped{stop} (exit code {code})", code, rank, signum)
        if code == EXIT_INTERRUPTED:
            return SpawnError(f"training process {rank}: {message}", code, rank, signum)
        what = f"failed: {message}" if message else f"exited with code {code}"
        return SpawnError(f"training process {rank} {what}", code, rank, signum, rep["detail"])
    if getattr(e, "signal_name", None):  # killed: by the stop signal's default action, or e.g. the OOM killer
        code = EXIT_PREEMPTED if signum else EXIT_CRASH
        return SpawnError(f"training process {rank} died ({e.signal_name}){stop}; the others were stopped", code, rank, signum)
    if getattr(e, "exit_code", None) is not None:  # no report: it ended before or outside `fn`
        return SpawnError(f"training process {rank} exited with code {e.exit_code} before saying why (see its output above)",
                          EXIT_CRASH, rank, signum)
    lines = [line for line in str(getattr(e, "msg", e)).splitlines() if line.strip()]  # ProcessRaisedException
    last = lines[-1].strip() if lines else type(e).__name__
    return SpawnError(f"training process {rank} failed: {last}", EXIT_CRASH, rank, signum, str(getattr(e, "msg", "")))


def spawn(fn: Callable, nprocs: int, args: tuple = (), grace_s: float = 30.0) -> None:
    """Run `fn(*args)` in `nprocs` processes forming one process group on this node.

    Each process gets RANK/LOCAL_RANK/WORLD_SIZE/LOCAL_WORLD_SIZE/MASTER_* and, unless
    OMP_NUM_THREADS is set, `threads_per_process(nprocs)` intra-op threads before `fn` runs.
    SIGTERM, SIGUSR1, SIGUSR2 and SIGINT sent to this (parent) process are passed on to the ranks
    (SIGINT as SIGTERM, see `_forward_stop_signals`); the parent's own handlers are restored after.
    Returns when every rank returned. Otherwise raises SpawnError (one line, an exit code) once
    the other ranks ended: on their own within `grace_s` seconds, else by SIGTERM, then SIGKILL
    after `grace_s` more (torch.multiprocessing). A rank's UserError, SystemExit(code),
    KeyboardInterrupt or exception is reported by the rank itself; a rank killed by a signal or
    failing before `fn` (ProcessExitedException / ProcessRaisedException) by torch.
    """
    import torch.multiprocessing as mp

    report_dir = tempfile.mkdtemp(prefix="simam-spawn-")
    received: list[int] = []
    try:
        entry_args = (nprocs, find_free_port(), threads_per_process(nprocs), report_dir, fn, args)
        context = mp.spawn(_spawn_entry, args=entry_args, nprocs=nprocs, join=False)
        old = _forward_stop_signals(context.processes, received)
        try:
            while not context.join(grace_period=grace_s):
                pass
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
            raise _spawn_error(e, report_dir, received[0] if received else None) from None
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
    finally:
        shutil.rmtree(report_dir, ignore_errors=True)
