"""The data sets by name and `build_datasets`, which wraps them with their seeded transforms.

CIFAR-10/100 (torchvision, from disk or downloaded), image folders (`imagefolder`, and `imagenet`
with ImageNet-1k's class indices: engine.data.class_order), `fake` (synthetic, learnable, no
files) and `digits` (scikit-learn's 8x8 digits upscaled to 32x32, no download).
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import socket
import tarfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils.data import Dataset

from .deferred import DeferredDataset
from .errors import DataError
from .image_folder import BAD_IMAGE_POLICIES, open_image_folders
from .seeding import NOISE_TAG, PATTERN_TAG, SeededDataset, mix
from .transforms import build_transforms

__all__ = ["DATASETS", "DEFAULT_ROOT", "DIGITS_NUM_TRAIN", "IMAGE_FOLDER_DATASETS", "ArrayImages", "FakeImages",
           "Recipe", "build_datasets", "can_reach"]

DEFAULT_ROOT = "./data"
DIGITS_NUM_TRAIN = 1437  # of 1,797: an 80/20 split, val is always the same 360 images
IMAGE_FOLDER_DATASETS = ("imagefolder", "imagenet")


class ArrayImages(Dataset):
    """uint8 images (N, H, W, 3) and integer labels, served as (PIL image, int)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> None:
        self.images = images
        self.labels = labels
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]), int(self.labels[index])


class FakeImages(Dataset):
    """Synthetic learnable images: a fixed smooth colour pattern per class plus per-sample noise.

    Sample `index` has label `index % num_classes`; its pixels depend only on
    (seed, split, index), so every call and every process sees the same data. Train (split 0)
    and val (split 1) share the class patterns and differ in their noise.
    """

    pattern_cells = 4  # the class pattern is a 4x4 colour grid, bilinearly upsampled
    pattern_std = 50.0
    noise_std = 25.0

    def __init__(self, size: int, *, num_classes: int, image_size: int, seed: int, split: int) -> None:
        self.size = size
        self.num_classes = num_classes
        self.image_size = image_size
        self.seed = seed
        self.split = split
        self.classes = [f"class{c}" for c in range(num_classes)]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} fake images")
        label = index % self.num_classes
        pattern = _class_pattern(self.seed, label, self.image_size, self.pattern_cells)
        rng = np.random.default_rng(mix(NOISE_TAG, self.seed, self.split, index))
        noise = rng.standard_normal(pattern.shape, dtype=np.float32)
        pixels = 128.5 + self.pattern_std * pattern + self.noise_std * noise  # +0.5: round
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), label


@functools.lru_cache(maxsize=128)
def _class_pattern(seed: int, label: int, image_size: int, cells: int) -> np.ndarray:
    """The smooth (image_size, image_size, 3) float32 pattern of class `label` (cached)."""
    # numpy, not torch, for the per-sample arithmetic: tiny torch ops can cost milliseconds
    # each when the intra-op thread pool competes with other processes for the cores.
    grid = np.random.default_rng(mix(PATTERN_TAG, seed, label)).standard_normal((1, 3, cells, cells), dtype=np.float32)
    smooth = F.interpolate(torch.from_numpy(grid), size=(image_size, image_size), mode="bilinear", align_corners=False)
    return np.ascontiguousarray(smooth[0].permute(1, 2, 0).numpy())


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (1797, 8, 8) float64 images (values 0..16) and int64 labels, read from
    the file that scikit-learn ships (sklearn/datasets/data/digits.csv.gz) without importing
    scikit-learn (2-3 s of the quickstart's start-up); through `load_digits` if the file is not there."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                data = np.loadtxt(f, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # local: scikit-learn is slow to import

    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


def _digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as (1797, 32, 32, 3) uint8 RGB (bilinear upscale) and labels."""
    images, labels = digits_arrays()
    x = torch.from_numpy(images).float()[:, None] * (255.0 / 16.0)  # values 0..16
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    grey = np.clip(x[:, 0].numpy() + 0.5, 0, 255).astype(np.uint8)  # +0.5: round
    return np.repeat(grey[..., None], 3, axis=-1), labels


@dataclass(frozen=True)
class Request:
    """What build_datasets was asked for, passed to every builder."""

    root: str | None
    image_size: int
    num_classes: int | None
    num_train: int
    num_val: int
    download: bool
    seed: int
    bad_images: str
    class_order: str
    eval_only: bool = False


@dataclass(frozen=True)
class Recipe:
    """The augmentation a SeededDataset's transform was built with (its `recipe` attribute)."""

    augment: str
    image_size: int
    auto_augment: str | None = None
    reprob: float = 0.0
    crop_pct: float | None = None
    interpolation: str = "bilinear"


def _check_num_classes(found: int, requested: int | None, where: str) -> int:
    """`found`, or a DataError if the caller asked for a different number of classes."""
    if requested is not None and requested != found:
        raise DataError(f"{where} has {found} classes but num_classes={requested} was requested: "
                        f"set the model's num_classes to {found} or use another dataset")
    return found


def can_reach(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the URL's host opens within `timeout` seconds."""
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _build_cifar(req: Request, cls: type, label: str) -> tuple[Dataset, Dataset, int]:
    """CIFAR-10/100 at req.root; download (or extract a present tarball) when allowed."""
    root = req.root or DEFAULT_ROOT
    why = "could not be downloaded (offline?)" if req.download else "download is off"
    missing = DataError(f"{label} not found under {os.path.abspath(root)} and {why}: put "
                        f"{cls.filename} or the extracted {cls.base_folder}/ there, or set data.root")
    try:
        train, val = cls(root, train=True), cls(root, train=False)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        tarball_present = os.path.isfile(os.path.join(root, cls.filename))
        if not (tarball_present or (req.download and can_reach(cls.url))):
            raise missing from None
        try:  # with the tarball present and intact, torchvision only extracts it
            train, val = cls(root, train=True, download=True), cls(root, train=False)
        except (OSError, RuntimeError, EOFError, tarfile.TarError) as err:
            raise missing from err
    return train, val, _check_num_classes(len(train.classes), req.num_classes, f"{label} at {root}")


def _build_image_folder(req: Request, default_order: str) -> tuple[Dataset, Dataset, int]:
    order = req.class_order if req.class_order is not None else default_order
    return open_image_folders(req.root, class_order=order, num_classes=req.num_classes, bad_images=req.bad_images,
                              eval_only=req.eval_only)


def _build_fake(req: Request) -> tuple[Dataset, Dataset, int]:
    """Synthetic learnable images (FakeImages), num_classes defaulting to 10."""
    num_classes = req.num_classes or 10
    options = dict(num_classes=num_classes, image_size=req.image_size, seed=req.seed)
    return FakeImages(req.num_train, split=0, **options), FakeImages(req.num_val, split=1, **options), num_classes


def _build_digits(req: Request) -> tuple[Dataset, Dataset, int]:
    """scikit-learn digits at 32x32 RGB; a split fixed by seed 0 whatever req.seed is."""
    images, labels = _digits_images()
    order = np.random.default_rng(0).permutation(len(images))
    train_idx, val_idx = order[:DIGITS_NUM_TRAIN], order[DIGITS_NUM_TRAIN:]
    classes = [str(d) for d in range(10)]
    num_classes = _check_num_classes(10, req.num_classes, "digits")
    return ArrayImages(images[train_idx], labels[train_idx], classes), ArrayImages(images[val_idx], labels[val_idx], classes), num_classes


DATASETS: dict[str, Callable[[Request], tuple[Dataset, Dataset, int]]] = {
    "cifar10": functools.partial(_build_cifar, cls=torchvision.datasets.CIFAR10, label="CIFAR-10"),
    "cifar100": functools.partial(_build_cifar, cls=torchvision.datasets.CIFAR100, label="CIFAR-100"),
    "imagenet": functools.partial(_build_image_folder, default_order="auto"),
    "imagefolder": functools.partial(_build_image_folder, default_order="sorted"),
    "fake": _build_fake,
    "digits": _build_digits,
}


def _check_names(name: str, bad_images: str, deferred: bool) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    if bad_images not in BAD_IMAGE_POLICIES:
        raise ValueError(f"unknown bad_images {bad_images!r}; valid: {', '.join(BAD_IMAGE_POLICIES)}")
    if deferred and name not in IMAGE_FOLDER_DATASETS:
        raise ValueError(f"device decoding (gpu_decode) only applies to JPEG folders ({', '.join(IMAGE_FOLDER_DATASETS)}), not {name!r}")


def build_datasets(
    name: str,
    root: str | None,
    *,
    augment: str,
    image_size: int,
    num_classes: int | None = None,
    num_train: int = 512,
    num_val: int = 128,
    download: bool = True,
    seed: int = 0,
    bad_images: str = "fail",
    normalize: bool = True,
    deferred: bool = False,
    class_order: str | None = None,
    auto_augment: str | None = None,
    reprob: float = 0.0,
    crop_pct: float | None = None,
    interpolation: str = "bilinear",
    eval_only: bool = False,
) -> tuple[SeededDataset | None, SeededDataset, int]:
    """(train, val, num_classes), both wrapped in SeededDataset with the `augment` recipe.

    Samples are (normalised float32 CHW tensor, int label), or with normalize=False (what the
    trainer uses) (uint8 CHW tensor, int label), to be normalised on the device with
    `normalization(augment)`. deferred=True (image folders only) returns DeferredDatasets whose
    decoding and transforms run on the device (DeviceDecoder). num_train/num_val only apply to
    "fake"; for the others a num_classes that differs from the data raises DataError. bad_images
    ("fail"/"skip") and class_order ("auto"/"imagenet"/"sorted", None: "auto" for imagenet,
    "sorted" for imagefolder; see engine.data.class_order) only apply to image folders.
    auto_augment, reprob, crop_pct, interpolation: see build_transforms. ValueError for unknown
    names and options, DataError (a UserError) for data that do not fit. eval_only: an image
    folder needs no train/ (the train set returned is then None).
    """
    _check_names(name, bad_images, deferred)
    options = dict(auto_augment=auto_augment, reprob=reprob, crop_pct=crop_pct, interpolation=interpolation)
    train_tf, val_tf = build_transforms(augment, image_size, normalize=normalize and not deferred, **options)
    request = Request(root=root, image_size=image_size, num_classes=num_classes, num_train=num_train, num_val=num_val,
                      download=download, seed=seed, bad_images=bad_images, class_order=class_order, eval_only=eval_only)
    train, val, found_classes = DATASETS[name](request)
    recipe = Recipe(augment=augment, image_size=image_size, **options)
    wrap = DeferredDataset if deferred else SeededDataset
    train_set = None if train is None else wrap(train, train_tf, seed=seed, recipe=recipe)
    return train_set, wrap(val, val_tf, seed=seed, recipe=recipe), found_classes
