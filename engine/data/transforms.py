"""Augmentation recipes (data.augment) and their normalisation, as torchvision v2 transforms on uint8.

A recipe gives (train ops, eval ops) on uint8 CHW images; `build_transforms` adds the options of
timm-style recipes to the training side (data.auto_augment after the crop/flip, then data.reprob
random erasing, as timm orders them) and data.crop_pct / data.interpolation to the evaluation
resize, then either stops at uint8 (what the trainer's loaders carry; the device normalises with
`normalization(augment)`) or converts and normalises per sample by the same arithmetic.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torchvision.transforms import v2

from .auto_augment import build_auto_augment
from .random_erasing import RandomErasing

__all__ = ["AUGMENTS", "CIFAR_MEAN", "CIFAR_STD", "IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "NORMALIZATION",
           "build_transforms", "normalization"]

Transform = Callable[[Any], Any]

# The std is the one of the original SimAM CIFAR script (and many CIFAR repos), not the true
# per-channel std (0.247, 0.243, 0.261); kept for comparability with the reference numbers.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# augment recipe -> the (mean, std) its images are normalised with: on the device by
# engine.data.prefetch.DevicePrefetcher, or per sample by the transforms of normalize=True.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar": (CIFAR_MEAN, CIFAR_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "alexnet": (IMAGENET_MEAN, IMAGENET_STD),
    "none": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

# data.interpolation: the evaluation resize's filter (the ones torchvision offers for tensors)
INTERPOLATIONS = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}
DEFAULT_CROP_PCT = 224 / 256  # the standard single-crop ImageNet evaluation: resize 256, crop 224


class FitSize(torch.nn.Module):
    """Resize to a square `size` only when the image has another size (CIFAR's own 32 px images
    pass untouched, bit for bit; an image folder's images are brought to the network's size)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)
        self.resize = v2.Resize((self.size, self.size), antialias=True)

    def forward(self, image: Any) -> Any:
        h, w = v2.functional.get_size(image)
        return image if (h, w) == (self.size, self.size) else self.resize(image)


def _cifar_ops(image_size: int, crop_pct: float | None, filt: Any) -> tuple[list[Transform], list[Transform]]:
    """Pad 4 + random crop + flip (the SimAM CIFAR recipe); eval: nothing. Images of another size
    (an image folder under main_cifar.py) are first resized to image_size."""
    return [FitSize(image_size), v2.RandomCrop(image_size, padding=4), v2.RandomHorizontalFlip()], [FitSize(image_size)]


def _imagenet_ops(image_size: int, crop_pct: float | None, filt: Any) -> tuple[list[Transform], list[Transform]]:
    """RandomResizedCrop + flip; eval: resize the short side to size / crop_pct, centre crop (single crop)."""
    train = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    resize = int(image_size / (DEFAULT_CROP_PCT if crop_pct is None else crop_pct))  # timm: floor
    return train, [v2.Resize(resize, interpolation=filt, antialias=True), v2.CenterCrop(image_size)]


def _alexnet_ops(image_size: int, crop_pct: float | None, filt: Any) -> tuple[list[Transform], list[Transform]]:
    """The AlexNet CIFAR-10 notebook recipe (128 px); eval: resize the short side to image_size."""
    train = [
        v2.Resize(image_size + 2, antialias=True),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomRotation(20),
    ]
    return train, [v2.Resize(image_size, interpolation=filt, antialias=True)]


def _plain_ops(image_size: int, crop_pct: float | None, filt: Any) -> tuple[list[Transform], list[Transform]]:
    """No augmentation: resize to a square image_size (normalised to [-1, 1])."""
    return ([v2.Resize((image_size, image_size), antialias=True)],
            [v2.Resize((image_size, image_size), interpolation=filt, antialias=True)])


# recipe -> (train ops, eval ops), all on uint8 CHW images
AUGMENTS: dict[str, Callable[[int, Any, Any], tuple[list[Transform], list[Transform]]]] = {
    "cifar": _cifar_ops,
    "imagenet": _imagenet_ops,
    "alexnet": _alexnet_ops,
    "none": _plain_ops,
}
CROP_PCT_AUGMENTS = ("imagenet",)  # the recipes whose evaluation is a resize + centre crop


def normalization(augment: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of recipe `augment`; ValueError listing the recipes if unknown."""
    if augment not in NORMALIZATION:
        raise ValueError(f"unknown augment {augment!r}; valid: {', '.join(sorted(NORMALIZATION))}")
    return NORMALIZATION[augment]


def _check_options(augment: str, reprob: float, crop_pct: float | None, interpolation: str) -> None:
    """ValueError naming the option and what is valid."""
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; valid: {', '.join(sorted(AUGMENTS))}")
    if not 0.0 <= reprob <= 1.0:
        raise ValueError(f"reprob must be a probability in [0, 1], got {reprob}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
    if crop_pct is not None and augment not in CROP_PCT_AUGMENTS:
        raise ValueError(f"crop_pct applies to augment={' or '.join(CROP_PCT_AUGMENTS)} (evaluation by resize + centre "
                         f"crop), not augment={augment}: leave crop_pct unset")
    if crop_pct is not None and not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")


def build_transforms(
    augment: str,
    image_size: int,
    *,
    normalize: bool = True,
    auto_augment: str | None = None,
    reprob: float = 0.0,
    crop_pct: float | None = None,
    interpolation: str = "bilinear",
) -> tuple[Transform, Transform]:
    """(train, val) transforms of recipe `augment`; ValueError naming a bad option and the valid ones.

    Both take a PIL image or a uint8 CHW tensor and output plain uint8 CHW tensors with
    normalize=False, or float32 tensors normalised with `normalization(augment)` (ToDtype(scale=True)
    + Normalize) with normalize=True. auto_augment (see engine.data.auto_augment) and reprob
    (random erasing, see engine.data.random_erasing) apply to training only, crop_pct (default
    224/256) and interpolation to the evaluation resize.
    """
    _check_options(augment, reprob, crop_pct, interpolation)
    train_ops, val_ops = AUGMENTS[augment](image_size, crop_pct, INTERPOLATIONS[interpolation])
    mean, std = NORMALIZATION[augment]
    if auto_augment:
        train_ops.append(build_auto_augment(auto_augment, image_size, mean))
    if reprob > 0:
        train_ops.append(RandomErasing(reprob, mean, std))
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))] if normalize else []
    return tuple(v2.Compose([v2.ToImage(), *ops, *tail, v2.ToPureTensor()])  # type: ignore[return-value]
                 for ops in (train_ops, val_ops))
