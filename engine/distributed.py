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

__all__ = ["DistInfo", "all_reduce_sum", "barrier", "broadcast_object", "cleanup", "find_free_port", "init_distributed", "spawn"]


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
    """Run `fn(*args)` in `nprocs` processes forming one process group on this node."""
    import torch.multiprocessing as mp

    mp.spawn(_spawn_entry, args=(nprocs, find_free_port(), fn, args), nprocs=nprocs, join=True)
