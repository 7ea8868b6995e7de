"""Process groups for DistributedDataParallel: torchrun (one or many nodes) or `trainer.devices=N`.

NCCL on GPUs, gloo on CPU; a finite timeout so that a dead rank makes the others fail instead of
hanging (PITFALLS). Only rank 0 writes files and logs.
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["CPUSyncBatchNorm", "DistInfo", "convert_sync_batchnorm", "all_reduce_sum", "barrier", "broadcast_object", "cleanup", "find_free_port", "init_distributed", "spawn"]


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


def _pick_device(accelerator: str, local_rank: int) -> torch.device:
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from .errors import UserError

        raise UserError("trainer.accelerator=cuda but no CUDA GPU is visible: use trainer.accelerator=cpu")
    torch.cuda.set_device(local_rank % torch.cuda.device_count())
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(accelerator: str = "auto", backend: str = "auto", timeout_s: float = 1800) -> DistInfo:
    """Join the process group described by the environment (RANK, WORLD_SIZE, MASTER_ADDR, ...)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(accelerator, local_rank)
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


def _spawn_entry(local_rank: int, world_size: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(
        RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    fn(*args)


def spawn(fn: Callable, nprocs: int, args: tuple = ()) -> None:
    """Run `fn(*args)` in `nprocs` processes forming one process group on this node.

    SIGTERM and SIGUSR1 sent to this (parent) process are forwarded to the workers, which save
    and stop; SIGINT (Ctrl-C) reaches them from the terminal directly, so the parent ignores it.
    If a worker dies, the others are terminated (torch.multiprocessing) and
    `ProcessExitedException` is raised.
    """
    import signal

    import torch.multiprocessing as mp

    context = mp.spawn(_spawn_entry, args=(nprocs, find_free_port(), fn, args), nprocs=nprocs, join=False)

    def forward(signum: int, frame: Any) -> None:
        for p in context.processes:
            if p.is_alive():
                os.kill(p.pid, signum)

    handlers = {signal.SIGTERM: forward, signal.SIGINT: signal.SIG_IGN}
    if hasattr(signal, "SIGUSR1"):
        handlers[signal.SIGUSR1] = forward
    old = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
    try:
        while not context.join():
            pass
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
