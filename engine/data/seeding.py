"""Augmentation that is a pure function of (seed, epoch, index): exact whatever the workers or a resume.

`SeededDataset` applies its transform to sample `index` of epoch `epoch` with every RNG a
transform may draw from (torch's CPU generator, Python's `random`, numpy's global RNG: timm's
auto-augment policies use the last two) seeded by `sample_seed(seed, epoch, index)`, and restores
them afterwards. The data therefore do not depend on the number of workers, on which worker loads
which sample, or on whether the run was resumed.

An index may be a *virtual* index `k * len(dataset) + i` (k >= 0): it loads sample `i` with the
augmentation seed of the virtual index. Repeated-augmentation sampling (`RepeatAugSampler`) uses
this so that the repeats of one image in an epoch get different augmentations.
"""
from __future__ import annotations

import hashlib
import random
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["EPOCH_TAG", "DEVICE_AUG_TAG", "NOISE_TAG", "PATTERN_TAG", "SeededDataset", "mix", "sample_seed",
           "seeded_call"]

Transform = Callable[[Any], Any]

# Tags that keep the seeds of unrelated random streams apart.
AUGMENT_TAG, PATTERN_TAG, NOISE_TAG, EPOCH_TAG, DEVICE_AUG_TAG = 1, 2, 3, 4, 5


def mix(*values: int) -> int:
    """Hash integers to a 63-bit seed, identical in every process and on every machine."""
    digest = hashlib.blake2b(repr(tuple(int(v) for v in values)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The RNG seed used for the random transform of sample `index` in epoch `epoch`."""
    return mix(AUGMENT_TAG, seed, epoch, index)


def seeded_call(transform: Transform, image: Any, seed: int) -> Any:
    """transform(image) with torch's CPU RNG, `random` and numpy's global RNG seeded by `seed`;
    all three are restored afterwards."""
    # fork_rng restores the CPU RNG; torch.default_generator (not torch.manual_seed) so that
    # the CUDA generators are left alone when this runs in the main process (workers=0).
    with torch.random.fork_rng(devices=[]):
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            return transform(image)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class SeededDataset(Dataset):
    """Applies `transform` to `dataset[index]` with the RNGs seeded by (seed, epoch, index).

    `recipe` (set by build_datasets) records the augmentation options the transform was built
    with, so that loaders which augment elsewhere (the on-device loader) can refuse what they
    cannot reproduce.
    """

    def __init__(self, dataset: Dataset, transform: Transform | None, *, seed: int = 0, recipe: Any = None) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.recipe = recipe
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation __getitem__ reproduces."""
        self.epoch = epoch

    @property
    def num_skipped(self) -> int:
        """Unreadable images replaced so far by the wrapped dataset (0 if it never skips)."""
        return int(getattr(self.dataset, "num_skipped", 0))

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.dataset[index % len(self)]
        if self.transform is None:
            return image, label
        return seeded_call(self.transform, image, sample_seed(self.seed, self.epoch, index)), label
