"""data.on_device: CIFAR/digits/fake held whole on the device as uint8, batches gathered and augmented there.

`DeviceLoader` stands in for build_loader's DataLoader without worker processes: the same
samplers, so the same indices per batch and rank, `len`, `sampler.set_start_batch` for
mid-epoch resume. Only the "cifar" recipe's crop + flip (and "none") run on the device; anything
else (other recipes, auto_augment, random erasing, repeated augmentation, image folders) is refused
with a DataError that says to set data.on_device=false.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler

from .datasets import ArrayImages, FakeImages
from .errors import DataError
from .loader import train_sampler
from .samplers import EvalSampler
from .seeding import DEVICE_AUG_TAG, SeededDataset, mix
from .transforms import build_transforms

__all__ = ["DEVICE_AUGMENTS", "DEVICE_DATASETS", "DeviceLoader", "build_device_loader", "crop_flip"]

DEVICE_DATASETS = ("cifar10", "cifar100", "digits", "fake")
# recipe -> the zero padding of its random crop (followed by a random horizontal flip); None: no augmentation
DEVICE_AUGMENTS: dict[str, int | None] = {"cifar": 4, "none": None}


def crop_flip(images: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """Per sample: zero-pad by `padding`, crop the original size at (top, left) = shifts[i] and
    mirror where flips[i], as v2.RandomCrop(size, padding) + RandomHorizontalFlip do with those
    parameters, in one gather on the images' device. uint8 (N, H, W, C) in, (N, C, H, W) out (a
    view with channels-last strides).
    """
    n, h, w, _ = images.shape
    padded = F.pad(images, (0, 0, padding, padding, padding, padding))
    x = torch.arange(w, device=images.device)
    rows = shifts[:, :1] + torch.arange(h, device=images.device)  # (n, h)
    cols = shifts[:, 1:] + torch.where(flips[:, None], w - 1 - x, x)  # (n, w), mirrored where flipped
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class DeviceLoader:
    """Batches of a uint8 data set held whole on its device, augmented per batch with tensor ops.

    Yields (uint8 (B, 3, H, W), int64 (B,)) on the device. With `padding` (train), sample i's crop
    offsets and flip in epoch e are drawn for the whole data set from a CPU generator seeded by
    (seed, e), so they depend on (seed, e, i) only: not on the batch, the rank count or where a
    resumed epoch restarts. (They are not the draws of the per-sample pipeline, only the same
    distribution.)
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, sampler: Sampler[int], batch_size: int,
                 padding: int | None, seed: int, dataset: Any = None) -> None:
        self.images = images  # (N, H, W, C) uint8
        self.labels = labels
        self.sampler = sampler
        self.batch_size = batch_size
        self.padding = padding
        self.seed = seed
        self.dataset = dataset  # the SeededDataset it was made from (num_skipped, len)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order and augmentation (call before iterating, like data.set_epoch)."""
        self.epoch = epoch
        for part in (self.sampler, self.dataset):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Not a generator function: the sampler's start batch is consumed when iter() is called.
        order = torch.as_tensor(list(self.sampler), dtype=torch.int64)
        return self._batches(order, self._draw())

    def _draw(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This epoch's (top, left) offsets and flips of every sample (one host-to-device copy)."""
        if self.padding is None:
            return None
        n, device = len(self.images), self.images.device
        generator = torch.Generator().manual_seed(mix(DEVICE_AUG_TAG, self.seed, self.epoch))
        shifts = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        return shifts.to(device), flips.to(device)

    def _batches(self, order: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor] | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        count, order = len(order), order.to(self.images.device)
        for start in range(0, count, self.batch_size):
            index = order[start:start + self.batch_size]
            images = self.images[index]
            if params is None:
                images = images.permute(0, 3, 1, 2)
            else:
                images = crop_flip(images, params[0][index], params[1][index], self.padding)  # type: ignore[arg-type]
            yield images, self.labels[index]


def _stored_images(source: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, H, W, 3) images and int64 labels of digits, torchvision's CIFAR or fake."""
    if isinstance(source, ArrayImages):  # digits
        return torch.from_numpy(np.ascontiguousarray(source.images)), torch.as_tensor(np.asarray(source.labels), dtype=torch.int64)
    if isinstance(getattr(source, "data", None), np.ndarray) and hasattr(source, "targets"):  # torchvision CIFAR
        return torch.from_numpy(np.ascontiguousarray(source.data)), torch.as_tensor(source.targets, dtype=torch.int64)
    if isinstance(source, FakeImages):
        pairs = [source[i] for i in range(len(source))]
        images = torch.from_numpy(np.stack([np.asarray(image) for image, _ in pairs]))
        return images, torch.tensor([label for _, label in pairs], dtype=torch.int64)
    raise DataError(f"data.on_device=true holds the whole data set on the device: only for "
                    f"{', '.join(DEVICE_DATASETS)}, not image folders; set data.on_device=false")


def _uint8_images(dataset: SeededDataset, augment: str, image_size: int, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of the wrapped data set as uint8 (N, H, W, 3) (after the recipe's deterministic
    ops, i.e. a resize for "none" when the size differs) and the int64 labels."""
    images, labels = _stored_images(dataset.dataset)
    height, width = images.shape[1:3]
    if (height, width) != (image_size, image_size):
        if DEVICE_AUGMENTS[augment] is not None:
            raise DataError(f"data.on_device=true crops at the stored size {height}x{width}, not data.image_size="
                            f"{image_size}: set data.image_size={height} or data.on_device=false")
        interpolation = getattr(getattr(dataset, "recipe", None), "interpolation", "bilinear")
        resize = build_transforms(augment, image_size, normalize=False, interpolation=interpolation)[0 if train else 1]
        images = torch.stack([resize(image.permute(2, 0, 1)) for image in images]).permute(0, 2, 3, 1)
    return images.contiguous(), labels


def _check_recipe(dataset: Any, augment: str, train: bool, repeated_aug: int) -> None:
    """DataError for what the device loader cannot reproduce."""
    if augment not in DEVICE_AUGMENTS:
        raise DataError(f"data.on_device=true augments like augment={' or '.join(DEVICE_AUGMENTS)} only, "
                        f"not augment={augment}: set data.on_device=false")
    recipe = getattr(dataset, "recipe", None)
    extras = [f"{key}={value}" for key, value in (("auto_augment", getattr(recipe, "auto_augment", None)),
                                                  ("reprob", getattr(recipe, "reprob", 0.0)),
                                                  ("repeated_aug", repeated_aug)) if value]
    if train and extras:
        raise DataError(f"data.on_device=true does not apply data.{', data.'.join(extras)} (only the cifar crop + "
                        "flip): set data.on_device=false")


def build_device_loader(
    dataset: SeededDataset,
    *,
    device: torch.device | str,
    augment: str,
    image_size: int,
    batch_size: int,
    train: bool,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    drop_last: bool = True,
    repeated_aug: int = 0,
) -> DeviceLoader:
    """A DeviceLoader over this rank's share of `dataset` (CIFAR, digits, fake) copied to `device`.

    Samplers as in build_loader; train batches get the random crop + flip of recipe "cifar"
    (padding 4) on the device, eval batches and recipe "none" none. DataError for other
    recipes and options (see the module) and for image folders.
    """
    _check_recipe(dataset, augment, train, repeated_aug)
    images, labels = _uint8_images(dataset, augment, image_size, train)
    sampler: Sampler[int]
    if train:
        sampler = train_sampler(len(images), batch_size=batch_size, rank=rank, world_size=world_size, seed=seed,
                                drop_last=drop_last)
    else:
        sampler = EvalSampler(len(images), rank=rank, world_size=world_size)
    return DeviceLoader(images.to(device), labels.to(device), sampler=sampler, batch_size=batch_size,
                        padding=DEVICE_AUGMENTS[augment] if train else None, seed=seed, dataset=dataset)
