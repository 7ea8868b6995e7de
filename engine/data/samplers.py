"""Samplers that never pad: training (one permutation per epoch, whole batches, mid-epoch resume),
repeated augmentation, and evaluation (every index exactly once over all ranks).

See PITFALLS "DistributedSampler pads": nothing here repeats a sample to even out the ranks.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from .errors import DataError

__all__ = ["EvalSampler", "RepeatAugSampler", "TrainSampler"]


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


class TrainSampler(Sampler[int]):
    """This rank's share of one permutation per epoch, in whole batches, with no padding.

    The permutation comes from a generator seeded with seed + epoch, identical on all ranks.
    Global batch i is order[i*B*W : (i+1)*B*W] (B = batch_size_per_rank, W = world_size) and
    rank r takes its r-th slice of B, so the global batches do not depend on W. With
    drop_last the incomplete last global batch is dropped on every rank; without it, the
    remainder is split over the ranks (sizes differing by at most one) when each can get at least
    one sample (else dropped), so all ranks always take the same number of steps.
    """

    def __init__(
        self,
        dataset_len: int,
        *,
        batch_size_per_rank: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        _check_rank(rank, world_size)
        if batch_size_per_rank < 1:
            raise ValueError(f"batch_size_per_rank must be >= 1, got {batch_size_per_rank}")
        self.dataset_len = dataset_len
        self.batch_size = batch_size_per_rank
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0
        if self.num_batches == 0:
            raise DataError(f"the training set has {dataset_len} samples, fewer than one global batch "
                            f"of {batch_size_per_rank} x {world_size} ranks: lower the batch size")

    @property
    def remainder(self) -> int:
        """Samples after the last full global batch that are used (0 if dropped)."""
        rest = self.dataset_len % (self.batch_size * self.world_size)
        return 0 if self.drop_last or rest < self.world_size else rest

    @property
    def num_batches(self) -> int:
        """Batches per epoch on every rank (the last one may be smaller without drop_last)."""
        full = self.dataset_len // (self.batch_size * self.world_size)
        return full + (1 if self.remainder else 0)

    def _remainder_bounds(self) -> tuple[int, int]:
        """[start, end) of this rank's contiguous share of the remainder."""
        base, extra = divmod(self.remainder, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def _rank_len(self) -> int:
        """Samples per epoch of this rank, before skipping start batches."""
        start, end = self._remainder_bounds()
        return (self.dataset_len // (self.batch_size * self.world_size)) * self.batch_size + (end - start)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation (call before each epoch, on every rank)."""
        self.epoch = epoch

    def set_start_batch(self, batch: int) -> None:
        """Make the next __iter__ skip the first `batch` batches of this epoch (mid-epoch resume)."""
        if not 0 <= batch <= self.num_batches:
            raise ValueError(f"start batch must be in [0, {self.num_batches}], got {batch}")
        self.start_batch = batch

    def order(self) -> torch.Tensor:
        """The epoch's global order of (dataset_len) sample indices."""
        if not self.shuffle:
            return torch.arange(self.dataset_len)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.dataset_len, generator=generator)

    def _full_batches(self, order: torch.Tensor, full: int) -> torch.Tensor:
        """This rank's part of the full global batches, (full, B): the r-th slice of each."""
        return order[: full * self.batch_size * self.world_size].view(full, self.world_size, self.batch_size)[:, self.rank]

    def rank_indices(self) -> list[int]:
        """All indices of this rank for the current epoch, ignoring start_batch."""
        order = self.order()
        full = self.dataset_len // (self.batch_size * self.world_size)
        start, end = self._remainder_bounds()
        tail = order[full * self.batch_size * self.world_size:][start:end]
        return torch.cat([self._full_batches(order, full).reshape(-1), tail]).tolist()

    def __iter__(self) -> Iterator[int]:
        # Not a generator function: start_batch must be consumed when the DataLoader asks for
        # the iterator, not at its first next().
        skip = self.start_batch * self.batch_size
        self.start_batch = 0
        return iter(self.rank_indices()[skip:])

    def __len__(self) -> int:
        return max(0, self._rank_len() - self.start_batch * self.batch_size)


class RepeatAugSampler(TrainSampler):
    """Repeated augmentation (Hoffer et al., arXiv:1901.09335; DeiT's RASampler, timm's
    RepeatAugSampler): each epoch holds dataset_len draws made of dataset_len / repeats images,
    each `repeats` times, and the repeats of an image go to different ranks in the same step.

    The order is the TrainSampler's permutation with each image repeated in place, cut to
    dataset_len. Repeat k of sample i is yielded as the virtual index k * dataset_len + i:
    SeededDataset loads sample i and seeds its augmentation with the virtual index, so every
    repeat gets its own augmentation, still a function of (seed, epoch, index). Global batch g
    holds the same draws as with TrainSampler's layout, but rank r takes every W-th entry of it
    (r, r+W, ...) instead of a contiguous slice. Mid-epoch resume and drop_last as TrainSampler.
    """

    def __init__(self, dataset_len: int, *, repeats: int, **kwargs) -> None:
        if repeats < 2:
            raise ValueError(f"repeats must be >= 2 (use TrainSampler for none), got {repeats}")
        self.repeats = repeats
        super().__init__(dataset_len, **kwargs)

    def order(self) -> torch.Tensor:
        images = super().order()[: -(-self.dataset_len // self.repeats)]  # ceil(n / repeats) images
        copies = torch.arange(self.repeats).repeat(len(images)) * self.dataset_len
        return (images.repeat_interleave(self.repeats) + copies)[: self.dataset_len]

    def _full_batches(self, order: torch.Tensor, full: int) -> torch.Tensor:
        return order[: full * self.batch_size * self.world_size].view(full, self.batch_size, self.world_size)[:, :, self.rank]


class EvalSampler(Sampler[int]):
    """A contiguous shard of range(n) per rank: every index exactly once over all ranks.

    Shard sizes differ by at most one; nothing is padded or repeated, so metrics summed over
    ranks (sum and count, then divide) are exact.
    """

    def __init__(self, dataset_len: int, *, rank: int = 0, world_size: int = 1) -> None:
        _check_rank(rank, world_size)
        base, extra = divmod(dataset_len, world_size)
        self.start = rank * base + min(rank, extra)
        self.end = self.start + base + (1 if rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end))

    def __len__(self) -> int:
        return self.end - self.start
