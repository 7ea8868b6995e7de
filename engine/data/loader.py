"""DataLoaders over this rank's share, the per-epoch call that reaches their workers, and worker counts.

How the epoch reaches the workers: DataLoader workers hold a copy of the dataset made when the
iterator is created, so `build_loader` always uses persistent_workers=False and the trainer
calls `set_epoch(loader, epoch)` *before* `iter(loader)` / `for batch in loader` of every epoch.
Workers are then started afresh with the new epoch (torchvision's reference scripts also
re-create workers every epoch).
"""
from __future__ import annotations

import os
import random
import warnings
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from engine.signals import ignore_stop_signals_in_worker

from .deferred import DeferredDataset, collate_deferred
from .samplers import EvalSampler, RepeatAugSampler, TrainSampler
from .seeding import EPOCH_TAG, SeededDataset, mix

__all__ = ["MAX_DEFAULT_WORKERS", "available_cpus", "build_loader", "default_workers", "seed_worker", "set_epoch",
           "train_sampler"]

MAX_DEFAULT_WORKERS = 16  # torchvision's reference default; more rarely helps one GPU


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as DataLoader's own check counts them)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_workers(local_processes: int) -> int:
    """Loader workers per process when data.workers is not set: the CPUs shared by the
    `local_processes` training processes of this machine, minus one for each process itself,
    at most MAX_DEFAULT_WORKERS (2 CPUs, 1 process: 1; 16 CPUs, 4 processes: 3; 1 CPU: 0)."""
    if local_processes < 1:
        raise ValueError(f"local_processes must be >= 1, got {local_processes}")
    return max(0, min(available_cpus() // local_processes - 1, MAX_DEFAULT_WORKERS))


def seed_worker(worker_id: int) -> None:
    """Seed numpy and `random` in a worker from its torch seed (set by the loader's generator).

    Also ignore the trainer's stop signals: SLURM sends them (preemption: SIGTERM; time limit:
    SIGUSR2) to every process of the job, and a loader worker killed by one makes PyTorch's SIGCHLD
    handler fail the trainer in the middle of its step instead of letting it save last.pth. The
    trainer ends its workers itself (see engine.signals.ignore_stop_signals_in_worker for SIGTERM).
    """
    ignore_stop_signals_in_worker()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def train_sampler(dataset_len: int, *, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                  drop_last: bool = True, repeated_aug: int = 0) -> TrainSampler:
    """TrainSampler, or RepeatAugSampler with `repeated_aug` >= 2 repeats (0 or 1: none)."""
    if repeated_aug < 0:
        raise ValueError(f"repeated_aug must be >= 0 (0: off), got {repeated_aug}")
    common = dict(batch_size_per_rank=batch_size, rank=rank, world_size=world_size, seed=seed, drop_last=drop_last)
    if repeated_aug >= 2:
        return RepeatAugSampler(dataset_len, repeats=repeated_aug, **common)
    return TrainSampler(dataset_len, **common)


def _capped_workers(workers: int) -> int:
    """`workers`, at most the CPUs available (DataLoader would warn at every epoch otherwise)."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    cpus = available_cpus()
    if workers > cpus:
        warnings.warn(f"data.workers={workers} is more than the {cpus} CPUs this process may use: using {cpus} "
                      "loader workers", stacklevel=3)
        return cpus
    return workers


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    train: bool,
    workers: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    pin_memory: bool = False,
    drop_last: bool = True,
    repeated_aug: int = 0,
) -> DataLoader:
    """A DataLoader over this rank's share; batch_size is per process.

    train: `train_sampler` (shuffled per epoch; `drop_last` and `repeated_aug` as described there)
    exposed as `loader.sampler`; eval: EvalSampler (no padding, never drops). persistent_workers is
    always False so that `set_epoch(loader, epoch)` reaches the workers' dataset copies. workers
    above the CPU count are lowered to it (with a warning).
    """
    sampler: Sampler[int]
    if train:
        sampler = train_sampler(len(dataset), batch_size=batch_size, rank=rank, world_size=world_size,  # type: ignore[arg-type]
                                seed=seed, drop_last=drop_last, repeated_aug=repeated_aug)
    else:
        sampler = EvalSampler(len(dataset), rank=rank, world_size=world_size)  # type: ignore[arg-type]
    workers = _capped_workers(workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=False,  # the samplers decide what is dropped
        persistent_workers=False,
        worker_init_fn=seed_worker if workers > 0 else None,
        generator=torch.Generator().manual_seed(mix(EPOCH_TAG, seed, 0)),
        collate_fn=collate_deferred if isinstance(dataset, DeferredDataset) else None,
    )


def set_epoch(loader: Any, epoch: int) -> None:
    """Set the epoch of the loader's sampler, its SeededDataset and its worker-seed generator.

    Call before iterating the loader for that epoch. Loaders with their own `set_epoch`
    (DeviceLoader, DevicePrefetcher) are handed the call.
    """
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
        return
    sampler, dataset = loader.sampler, loader.dataset
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if isinstance(dataset, SeededDataset):
        dataset.set_epoch(epoch)
    if loader.generator is not None:  # worker seeds then depend on (seed, epoch) only
        loader.generator.manual_seed(mix(EPOCH_TAG, getattr(sampler, "seed", 0), epoch))
