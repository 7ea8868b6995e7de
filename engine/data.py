"""Datasets, transforms, samplers and loaders, with augmentation that is exact on resume.

Plain typed arguments only (no Hydra config in here). The pieces:

- ``build_datasets(name, root, augment=..., image_size=...)`` -> ``(train, val, num_classes)``:
  CIFAR-10/100 and ImageFolder/ImageNet from disk, ``fake`` (synthetic, learnable, no files) and
  ``digits`` (scikit-learn's 8x8 digits upscaled to 32x32, no download). Both returned datasets
  are ``SeededDataset`` wrappers, yielding ``(uint8 tensor CHW, int label)`` with
  ``normalize=False`` (the trainer's loaders: 4x less to move between processes and to the
  device, where ``engine.prefetch.DevicePrefetcher`` normalises with ``normalization(augment)``)
  or ``(float tensor CHW, int label)`` normalised per sample (the default, for the report scripts).
  The transforms are torchvision v2 on uint8 tensors; JPEGs are decoded by
  ``torchvision.io.decode_jpeg`` (PIL for other files, grayscale/CMYK JPEGs and as a fallback).
- ``SeededDataset``: the random transform of sample ``index`` in epoch ``epoch`` is a pure
  function of ``(seed, epoch, index)``, so the augmented data do not depend on the number of
  workers, on which worker loads which sample, or on whether the run was resumed.
- ``TrainSampler`` (same permutation on every rank, no padding, every rank does the same number
  of steps, mid-epoch resume with ``set_start_batch``) and ``EvalSampler`` (every index exactly
  once over all ranks, no padding, no duplicates; see PITFALLS "DistributedSampler pads").
- ``build_loader`` and ``set_epoch``.
- ``build_device_loader`` (``data.on_device``): CIFAR/digits/fake held whole on the device as
  uint8, batches gathered and augmented there (``DeviceLoader``, no worker processes).
- ``DeferredDataset`` + ``DeviceDecoder`` (``data.gpu_decode``): workers only read JPEG files,
  the main process decodes them on the GPU and applies the seeded transforms there.

How the epoch reaches the workers: DataLoader workers hold a copy of the dataset made when the
iterator is created, so ``build_loader`` always uses ``persistent_workers=False`` and the trainer
calls ``set_epoch(loader, epoch)`` *before* ``iter(loader)`` / ``for batch in loader`` of every
epoch. Workers are then started afresh with the new epoch (torchvision's reference scripts do
the same, since they also re-create workers every epoch).

User mistakes (missing files, empty class folders, unreadable images) raise
``engine.errors.UserError`` with a one-line message naming the path; programming mistakes
(unknown registry names, bad sampler arguments) raise ``ValueError``.
"""
from __future__ import annotations

import functools
import hashlib
import io
import math
import multiprocessing
import os
import random
import socket
import tarfile
import urllib.parse
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from torchvision.io import ImageReadMode
from torchvision.transforms import v2

from engine.errors import UserError
from engine.signals import ignore_stop_signals_in_worker

__all__ = [
    "AUGMENTS",
    "BAD_IMAGE_POLICIES",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DATASETS",
    "DEVICE_AUGMENTS",
    "DEVICE_DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_FOLDER_DATASETS",
    "NORMALIZATION",
    "ArrayImages",
    "CheckedImageFolder",
    "DataError",
    "DeferredDataset",
    "DeviceDecoder",
    "DeviceLoader",
    "EvalSampler",
    "FakeImages",
    "SeededDataset",
    "TrainSampler",
    "build_datasets",
    "build_device_loader",
    "build_loader",
    "build_transforms",
    "collate_deferred",
    "crop_flip",
    "normalization",
    "sample_seed",
    "seeded_call",
    "set_epoch",
]

# The std is the one of the original SimAM CIFAR script (and many CIFAR repos), not the true
# per-channel std (0.247, 0.243, 0.261); kept for comparability with the reference numbers.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULT_ROOT = "./data"
BAD_IMAGE_POLICIES = ("fail", "skip")

Transform = Callable[[Any], Any]


# --------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------

def _mix(*values: int) -> int:
    """Hash integers to a 63-bit seed, identical in every process and on every machine."""
    digest = hashlib.blake2b(repr(tuple(int(v) for v in values)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


_AUGMENT_TAG, _PATTERN_TAG, _NOISE_TAG, _EPOCH_TAG = 1, 2, 3, 4


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The RNG seed used for the random transform of sample `index` in epoch `epoch`."""
    return _mix(_AUGMENT_TAG, seed, epoch, index)


class DataError(UserError):
    """A UserError about the data; its message stays one line even from a DataLoader worker.

    A worker's exception reaches the main process re-created as `type(err)(traceback_text)`;
    the last line of that text is "engine.data.DataError: <original message>", which
    __init__ extracts again.
    """

    def __init__(self, message: str) -> None:
        lines = message.strip().splitlines()
        if len(lines) > 1 and lines[-1].startswith(f"{__name__}.DataError: "):
            message = lines[-1].split(": ", 1)[1]
        super().__init__(" ".join(message.split("\n")))


def _fail(message: str) -> DataError:
    """A DataError (a UserError) whose message is one line."""
    return DataError(message)


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------

# augment recipe -> the (mean, std) its images are normalised with: on the device by
# engine.prefetch.DevicePrefetcher, or per sample by the transforms of normalize=True.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar": (CIFAR_MEAN, CIFAR_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "alexnet": (IMAGENET_MEAN, IMAGENET_STD),
    "none": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def _cifar_ops(image_size: int) -> tuple[list[Transform], list[Transform]]:
    """Pad 4 + random crop + flip (the SimAM CIFAR recipe); eval: nothing."""
    return [v2.RandomCrop(image_size, padding=4), v2.RandomHorizontalFlip()], []


def _imagenet_ops(image_size: int) -> tuple[list[Transform], list[Transform]]:
    """RandomResizedCrop + flip; eval: resize to size*256/224 and centre crop (single crop)."""
    train = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    val = [v2.Resize(int(image_size * 256 / 224), antialias=True), v2.CenterCrop(image_size)]
    return train, val


def _alexnet_ops(image_size: int) -> tuple[list[Transform], list[Transform]]:
    """The AlexNet CIFAR-10 notebook recipe (128 px); mixup is applied per batch elsewhere."""
    train = [
        v2.Resize(image_size + 2, antialias=True),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomRotation(20),
    ]
    return train, [v2.Resize(image_size, antialias=True)]


def _plain_ops(image_size: int) -> tuple[list[Transform], list[Transform]]:
    """No augmentation: resize to a square image_size (normalised to [-1, 1])."""
    plain = [v2.Resize((image_size, image_size), antialias=True)]
    return plain, list(plain)


# recipe -> (train ops, eval ops), all on uint8 CHW images
AUGMENTS: dict[str, Callable[[int], tuple[list[Transform], list[Transform]]]] = {
    "cifar": _cifar_ops,
    "imagenet": _imagenet_ops,
    "alexnet": _alexnet_ops,
    "none": _plain_ops,
}


def normalization(augment: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of recipe `augment`; ValueError listing the recipes if unknown."""
    if augment not in NORMALIZATION:
        raise ValueError(f"unknown augment {augment!r}; valid: {', '.join(sorted(NORMALIZATION))}")
    return NORMALIZATION[augment]


def build_transforms(augment: str, image_size: int, *, normalize: bool = True) -> tuple[Transform, Transform]:
    """(train, val) transforms of recipe `augment`; ValueError listing the recipes if unknown.

    Both take a PIL image or a uint8 CHW tensor and work on uint8 tensors (transforms v2), so
    they output plain uint8 CHW tensors with normalize=False (what the trainer's loaders carry;
    it normalises on the device) and, with normalize=True, float32 tensors normalised with
    `normalization(augment)` by the same arithmetic (ToDtype(scale=True) + Normalize).
    """
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; valid: {', '.join(sorted(AUGMENTS))}")
    train_ops, val_ops = AUGMENTS[augment](image_size)
    mean, std = NORMALIZATION[augment]
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))] if normalize else []
    return tuple(v2.Compose([v2.ToImage(), *ops, *tail, v2.ToPureTensor()])  # type: ignore[return-value]
                 for ops in (train_ops, val_ops))


# --------------------------------------------------------------------------------------------
# Deterministic augmentation
# --------------------------------------------------------------------------------------------

class SeededDataset(Dataset):
    """Applies `transform` to `dataset[index]` with the RNG seeded by (seed, epoch, index).

    The global torch CPU RNG and Python's `random` are restored afterwards, so loading data
    neither depends on nor disturbs anyone else's random state. (torchvision.transforms.v2 only
    draws from torch's CPU RNG; Python's `random` is seeded too for custom transforms.)
    """

    def __init__(self, dataset: Dataset, transform: Transform | None, *, seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
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
        image, label = self.dataset[index]
        if self.transform is None:
            return image, label
        return seeded_call(self.transform, image, sample_seed(self.seed, self.epoch, index)), label


def seeded_call(transform: Transform, image: Any, seed: int) -> Any:
    """transform(image) with the CPU torch RNG and `random` seeded by `seed`, both restored after."""
    # fork_rng restores the CPU RNG; torch.default_generator (not torch.manual_seed) so that
    # the CUDA generators are left alone when this runs in the main process (workers=0).
    with torch.random.fork_rng(devices=[]):
        python_state = random.getstate()
        try:
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            return transform(image)
        finally:
            random.setstate(python_state)


class DeferredDataset(SeededDataset):
    """A SeededDataset of an image folder whose JPEGs are decoded and transformed later, on the
    device, by `DeviceDecoder` (data.gpu_decode): the loader workers only read the files.

    __getitem__ returns ((payload, seed), label): payload is the file's bytes (a 1-D uint8 tensor)
    when it is an 8-bit 3-component JPEG that ends properly, else the image decoded here on the
    CPU (uint8 CHW, where the bad_images policy applies as usual); seed is the sample's
    `sample_seed`. Batch them with `collate_deferred`.
    """

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, int], int]:  # type: ignore[override]
        payload, label = self.dataset.load_encoded(index)  # type: ignore[attr-defined]
        return (payload, sample_seed(self.seed, self.epoch, index)), label


def collate_deferred(batch: list[tuple[tuple[torch.Tensor, int], int]]) -> tuple[tuple[list[torch.Tensor], torch.Tensor], torch.Tensor]:
    """DeferredDataset samples -> ((payloads, int64 seeds), int64 labels)."""
    payloads = [payload for (payload, _), _ in batch]
    seeds = torch.tensor([seed for (_, seed), _ in batch], dtype=torch.int64)
    return (payloads, seeds), torch.tensor([label for _, label in batch], dtype=torch.int64)


class DeviceDecoder:
    """Decodes a `collate_deferred` batch on `device` (nvJPEG on CUDA, batched) and applies each
    sample's transform there with the sample's seed: the same augmentation parameters as
    SeededDataset would draw, so the batch is the per-sample pipeline's up to decoder rounding.

    A batch the device decoder rejects is decoded again on the CPU (PIL fallback included); a file
    that fails there too raises DataError (set data.gpu_decode=false to have it named or skipped).
    """

    def __init__(self, transform: Transform, device: torch.device | str) -> None:
        self.transform = transform
        self.device = torch.device(device)

    def __call__(self, images: tuple[list[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        payloads, seeds = images
        decoded = list(payloads)
        encoded = [i for i, payload in enumerate(payloads) if payload.dim() == 1]
        if encoded:
            for i, image in zip(encoded, self._decode([payloads[i] for i in encoded])):
                decoded[i] = image
        return torch.stack([seeded_call(self.transform, image.to(self.device, non_blocking=True), seed)
                            for image, seed in zip(decoded, seeds.tolist())])

    def _decode(self, encoded: list[torch.Tensor]) -> list[torch.Tensor]:
        try:
            return _decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            pass
        try:
            return [_decode_bytes(bytes(e.cpu().numpy())) for e in encoded]
        except _DECODE_ERRORS as err:
            raise _fail(f"cannot decode an image of this batch ({type(err).__name__}: {err}): set "
                        "data.gpu_decode=false to have the file named (or skipped with data.bad_images=skip)") from err


# --------------------------------------------------------------------------------------------
# In-memory and synthetic datasets
# --------------------------------------------------------------------------------------------

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
        rng = np.random.default_rng(_mix(_NOISE_TAG, self.seed, self.split, index))
        noise = rng.standard_normal(pattern.shape, dtype=np.float32)
        pixels = 128.5 + self.pattern_std * pattern + self.noise_std * noise  # +0.5: round
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), label


@functools.lru_cache(maxsize=128)
def _class_pattern(seed: int, label: int, image_size: int, cells: int) -> np.ndarray:
    """The smooth (image_size, image_size, 3) float32 pattern of class `label` (cached)."""
    # numpy, not torch, for the per-sample arithmetic: tiny torch ops can cost milliseconds
    # each when the intra-op thread pool competes with other processes for the cores.
    grid = np.random.default_rng(_mix(_PATTERN_TAG, seed, label)).standard_normal(
        (1, 3, cells, cells), dtype=np.float32)
    smooth = F.interpolate(torch.from_numpy(grid), size=(image_size, image_size),
                           mode="bilinear", align_corners=False)
    return np.ascontiguousarray(smooth[0].permute(1, 2, 0).numpy())


def _digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as (1797, 32, 32, 3) uint8 RGB (bilinear upscale) and labels."""
    from sklearn.datasets import load_digits  # local: scikit-learn is slow to import

    digits = load_digits()
    x = torch.from_numpy(digits.images).float()[:, None] * (255.0 / 16.0)  # values 0..16
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    grey = np.clip(x[:, 0].numpy() + 0.5, 0, 255).astype(np.uint8)  # +0.5: round
    return np.repeat(grey[..., None], 3, axis=-1), digits.target.astype(np.int64)


# --------------------------------------------------------------------------------------------
# ImageFolder with bad-image handling
# --------------------------------------------------------------------------------------------

# A SemLock made in a "fork" context cannot be sent to spawn/forkserver workers, while one made
# in a "spawn" context works with workers of every start method.
_SHARED_CONTEXT = multiprocessing.get_context("spawn")


class _SharedCounter:
    """An integer shared with DataLoader workers (fork or spawn); a plain int once pickled."""

    def __init__(self) -> None:
        self._value = _SHARED_CONTEXT.Value("q", 0)

    def add(self, n: int = 1) -> None:
        """Add n (under the lock, so concurrent workers do not lose counts)."""
        with self._value.get_lock():
            self._value.value += n

    @property
    def value(self) -> int:
        """Current count."""
        return int(self._value.value)

    def __getstate__(self) -> dict[str, Any]:
        # Shared memory may only travel to a process being started; copy.deepcopy or
        # pickle.dumps elsewhere get a snapshot instead of an error.
        if multiprocessing.context.get_spawning_popen() is not None:
            return {"shared": self._value}
        return {"snapshot": self.value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "shared" in state:
            self._value = state["shared"]
        else:
            self._value = _SHARED_CONTEXT.Value("q", state["snapshot"])


_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"
_DEVICE_JPEG_FRAMES = (0xC0, 0xC1, 0xC2)  # baseline, extended, progressive Huffman: what nvJPEG takes


def _decode_jpeg(data: Any, *, mode: ImageReadMode = ImageReadMode.UNCHANGED, device: Any = "cpu") -> Any:
    """torchvision.io.decode_jpeg (one tensor or a list) without its deprecation warning.

    torchvision 0.29 deprecates its decoders in favour of TorchCodec; the function is unchanged.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torchvision.io.decode_jpeg(data, mode=mode, device=device)


def _decode_bytes(encoded: bytes) -> torch.Tensor:
    """An image file's bytes -> RGB uint8 tensor (3, H, W); raises OSError etc. if it is corrupt.

    3-component JPEGs go through torchvision.io.decode_jpeg (libjpeg-turbo straight into a tensor,
    about 1.3x faster than PIL + conversion); anything else (PNG, grayscale or CMYK JPEG, a JPEG
    decode_jpeg rejects) through PIL as before, which also gives a corrupt file's error.
    """
    if encoded.startswith(_JPEG_MAGIC):
        try:
            image = _decode_jpeg(torch.frombuffer(bytearray(encoded), dtype=torch.uint8))
        except RuntimeError:  # truncated, corrupt or exotic: PIL decides
            image = None
        if image is not None and image.shape[0] == 3:
            return image
    with Image.open(io.BytesIO(encoded)) as pil:
        return v2.functional.pil_to_tensor(pil.convert("RGB"))


def _load_rgb(path: str) -> torch.Tensor:
    """Decode an image file fully into an RGB uint8 tensor (3, H, W) (raises on corrupt files)."""
    with open(path, "rb") as f:
        return _decode_bytes(f.read())


def _jpeg_frame(encoded: bytes) -> tuple[int, int, int]:
    """(SOF marker, bits per sample, components) of a JPEG's frame header; zeros if not found."""
    i = 2
    while i + 9 < len(encoded) and encoded[i] == 0xFF:
        marker = encoded[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn, not DHT/JPG/DAC
            return marker, encoded[i + 4], encoded[i + 9]
        if marker == 0xDA:  # scan data before a frame header
            break
        i += 2 + int.from_bytes(encoded[i + 2:i + 4], "big")
    return 0, 0, 0


def _load_encoded(path: str) -> torch.Tensor:
    """The file's bytes (1-D uint8) if a device decoder can take them, else the CPU-decoded image."""
    with open(path, "rb") as f:
        encoded = f.read()
    marker, bits, components = _jpeg_frame(encoded) if encoded.startswith(_JPEG_MAGIC) else (0, 0, 0)
    if marker in _DEVICE_JPEG_FRAMES and bits == 8 and components == 3 and encoded.rstrip(b"\0").endswith(_JPEG_END):
        return torch.frombuffer(bytearray(encoded), dtype=torch.uint8)
    return _decode_bytes(encoded)  # also what raises for a truncated or unreadable file


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class CheckedImageFolder(torchvision.datasets.ImageFolder):
    """ImageFolder that turns an unreadable image into a UserError ("fail") or skips it ("skip").

    Images are uint8 CHW tensors (decode_jpeg for JPEGs, PIL for the rest). With "skip", the
    sample is replaced by the next readable one (index + 1, wrapping) and `num_skipped` counts
    the replacements, summed over DataLoader workers (a file read in two epochs counts twice).
    """

    def __init__(self, root: str, *, bad_images: str = "fail") -> None:
        if bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(f"unknown bad_images {bad_images!r}; valid: {', '.join(BAD_IMAGE_POLICIES)}")
        super().__init__(root, loader=_load_rgb)
        self.bad_images = bad_images
        self._skipped = _SharedCounter()

    @property
    def num_skipped(self) -> int:
        """Number of unreadable images replaced so far (over all workers)."""
        return self._skipped.value

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._read(index, self.loader)

    def load_encoded(self, index: int) -> tuple[torch.Tensor, int]:
        """(payload, label) for DeferredDataset: the encoded JPEG, or the image decoded on the CPU."""
        return self._read(index, _load_encoded)

    def _read(self, index: int, load: Callable[[str], torch.Tensor]) -> tuple[torch.Tensor, int]:
        for attempt in range(len(self.samples)):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                return load(path), label
            except _DECODE_ERRORS as err:
                if self.bad_images == "fail":
                    raise _fail(f"cannot read image {path} ({type(err).__name__}: {err}): "
                                "delete or replace the file, or set data.bad_images=skip") from err
                self._skipped.add()
                warnings.warn(f"skipping unreadable image {path}: {err}", stacklevel=3)
        raise _fail(f"no readable image under {self.root}: check the files")


def _check_dir(path: str, what: str) -> None:
    """UserError naming `path` unless it is a directory."""
    if not os.path.isdir(path):
        raise _fail(f"{what} {path} does not exist or is not a folder: "
                    "expected ROOT/train/CLASS/*.jpg and ROOT/val/CLASS/*.jpg (set data.root)")


def _empty_class_folders(split_dir: str) -> list[str]:
    """Class folders of `split_dir` that hold no file with an image extension (recursively)."""
    classes, _ = torchvision.datasets.folder.find_classes(split_dir)
    return [
        name for name in classes
        if not any(has_file_allowed_extension(f, IMG_EXTENSIONS)
                   for _, _, files in os.walk(os.path.join(split_dir, name), followlinks=True)
                   for f in files)
    ]


def _open_image_folder(split_dir: str, bad_images: str) -> CheckedImageFolder:
    """CheckedImageFolder on split_dir with torchvision's FileNotFoundErrors made UserErrors."""
    _check_dir(split_dir, "image folder")
    try:
        return CheckedImageFolder(split_dir, bad_images=bad_images)
    except FileNotFoundError as err:
        if not any(entry.is_dir() for entry in os.scandir(split_dir)):
            raise _fail(f"{split_dir} has no class folders: "
                        f"put images in {split_dir}/CLASS_NAME/*.jpg") from err
        empty = _empty_class_folders(split_dir)
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise _fail(f"class folder(s) {shown} under {split_dir} contain no images "
                    f"({' '.join(IMG_EXTENSIONS)}): add images or delete the folder(s)") from err


# --------------------------------------------------------------------------------------------
# Dataset builders
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Request:
    """What build_datasets was asked for, passed to every builder."""

    root: str | None
    image_size: int
    num_classes: int | None
    num_train: int
    num_val: int
    download: bool
    seed: int
    bad_images: str


def _check_num_classes(found: int, requested: int | None, where: str) -> int:
    """`found`, or a UserError if the caller asked for a different number of classes."""
    if requested is not None and requested != found:
        raise _fail(f"{where} has {found} classes but num_classes={requested} was requested: "
                    f"set the model's num_classes to {found} or use another dataset")
    return found


def _can_reach(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the URL's host opens within `timeout` seconds."""
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _build_cifar(req: _Request, cls: type, label: str) -> tuple[Dataset, Dataset, int]:
    """CIFAR-10/100 at req.root; download (or extract a present tarball) when allowed."""
    root = req.root or DEFAULT_ROOT
    why = "could not be downloaded (offline?)" if req.download else "download is off"
    missing = _fail(f"{label} not found under {os.path.abspath(root)} and {why}: put "
                    f"{cls.filename} or the extracted {cls.base_folder}/ there, or set data.root")
    try:
        train, val = cls(root, train=True), cls(root, train=False)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        tarball_present = os.path.isfile(os.path.join(root, cls.filename))
        if not (tarball_present or (req.download and _can_reach(cls.url))):
            raise missing from None
        try:  # with the tarball present and intact, torchvision only extracts it
            train, val = cls(root, train=True, download=True), cls(root, train=False)
        except (OSError, RuntimeError, EOFError, tarfile.TarError) as err:
            raise missing from err
    num_classes = _check_num_classes(len(train.classes), req.num_classes, f"{label} at {root}")
    return train, val, num_classes


def _build_image_folder(req: _Request) -> tuple[Dataset, Dataset, int]:
    """ImageFolder layout ROOT/train/CLASS/* and ROOT/val/CLASS/* with the same classes."""
    if req.root is None:
        raise _fail("no dataset root given for an image folder dataset: set data.root to a folder "
                    "with train/ and val/ subfolders")
    _check_dir(req.root, "dataset root")
    train_dir, val_dir = os.path.join(req.root, "train"), os.path.join(req.root, "val")
    train = _open_image_folder(train_dir, req.bad_images)
    val = _open_image_folder(val_dir, req.bad_images)
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))[:5]
        only_val = sorted(set(val.classes) - set(train.classes))[:5]
        raise _fail(f"class folders of {val_dir} differ from {train_dir} (only in train: "
                    f"{only_train}, only in val: {only_val}): use the same class folders in both")
    num_classes = _check_num_classes(len(train.classes), req.num_classes, req.root)
    return train, val, num_classes


def _build_fake(req: _Request) -> tuple[Dataset, Dataset, int]:
    """Synthetic learnable images (FakeImages), num_classes defaulting to 10."""
    num_classes = req.num_classes or 10
    options = dict(num_classes=num_classes, image_size=req.image_size, seed=req.seed)
    train = FakeImages(req.num_train, split=0, **options)
    val = FakeImages(req.num_val, split=1, **options)
    return train, val, num_classes


DIGITS_NUM_TRAIN = 1437  # of 1,797: an 80/20 split, val is always the same 360 images


def _build_digits(req: _Request) -> tuple[Dataset, Dataset, int]:
    """scikit-learn digits at 32x32 RGB; a split fixed by seed 0 whatever req.seed is."""
    images, labels = _digits_images()
    order = np.random.default_rng(0).permutation(len(images))
    train_idx, val_idx = order[:DIGITS_NUM_TRAIN], order[DIGITS_NUM_TRAIN:]
    classes = [str(d) for d in range(10)]
    num_classes = _check_num_classes(10, req.num_classes, "digits")
    train = ArrayImages(images[train_idx], labels[train_idx], classes)
    val = ArrayImages(images[val_idx], labels[val_idx], classes)
    return train, val, num_classes


DATASETS: dict[str, Callable[[_Request], tuple[Dataset, Dataset, int]]] = {
    "cifar10": functools.partial(_build_cifar, cls=torchvision.datasets.CIFAR10, label="CIFAR-10"),
    "cifar100": functools.partial(_build_cifar, cls=torchvision.datasets.CIFAR100, label="CIFAR-100"),
    "imagenet": _build_image_folder,
    "imagefolder": _build_image_folder,
    "fake": _build_fake,
    "digits": _build_digits,
}
IMAGE_FOLDER_DATASETS = ("imagefolder", "imagenet")


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
) -> tuple[SeededDataset, SeededDataset, int]:
    """(train, val, num_classes), both wrapped in SeededDataset with the `augment` recipe.

    Samples are (normalised float32 CHW tensor, int label), or with normalize=False (what the
    trainer uses) (uint8 CHW tensor, int label), to be normalised on the device with
    `normalization(augment)` (engine.prefetch). deferred=True (image folders only) returns
    DeferredDatasets whose decoding and transforms run on the device (DeviceDecoder).
    num_train/num_val only apply to "fake"; for the others a num_classes that differs from
    the data raises UserError. bad_images ("fail"/"skip") only applies to image folders.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    if bad_images not in BAD_IMAGE_POLICIES:
        raise ValueError(f"unknown bad_images {bad_images!r}; valid: {', '.join(BAD_IMAGE_POLICIES)}")
    if deferred and name not in IMAGE_FOLDER_DATASETS:
        raise ValueError(f"device decoding (gpu_decode) only applies to JPEG folders ({', '.join(IMAGE_FOLDER_DATASETS)}), not {name!r}")
    train_tf, val_tf = build_transforms(augment, image_size, normalize=normalize and not deferred)
    request = _Request(root=root, image_size=image_size, num_classes=num_classes,
                       num_train=num_train, num_val=num_val, download=download, seed=seed,
                       bad_images=bad_images)
    train, val, found_classes = DATASETS[name](request)
    wrap = DeferredDataset if deferred else SeededDataset
    return wrap(train, train_tf, seed=seed), wrap(val, val_tf, seed=seed), found_classes


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------

class TrainSampler(Sampler[int]):
    """This rank's share of one permutation per epoch, in whole batches, with no padding.

    The permutation comes from a generator seeded with seed + epoch, identical on all ranks.
    Global batch i is order[i*B*W : (i+1)*B*W] (B = batch_size_per_rank, W = world_size) and
    rank r takes its r-th slice of B, so the global batches do not depend on W. With
    drop_last the incomplete last global batch is dropped on every rank; without it, the
    remainder is split over the ranks when each can get at least one sample (else dropped), so
    all ranks always take the same number of steps.
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
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
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
            raise _fail(f"the training set has {dataset_len} samples, fewer than one global batch "
                        f"of {batch_size_per_rank} x {world_size} ranks: lower the batch size")

    @property
    def _remainder(self) -> int:
        """Samples after the last full global batch that are used (0 if dropped)."""
        rest = self.dataset_len % (self.batch_size * self.world_size)
        return 0 if self.drop_last or rest < self.world_size else rest

    @property
    def num_batches(self) -> int:
        """Batches per epoch on every rank (the last one may be smaller without drop_last)."""
        full = self.dataset_len // (self.batch_size * self.world_size)
        return full + (1 if self._remainder else 0)

    def _rank_remainder_bounds(self) -> tuple[int, int]:
        """[start, end) of this rank's contiguous share of the remainder."""
        base, extra = divmod(self._remainder, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def _rank_len(self) -> int:
        """Samples per epoch of this rank, before skipping start batches."""
        start, end = self._rank_remainder_bounds()
        full = self.dataset_len // (self.batch_size * self.world_size)
        return full * self.batch_size + (end - start)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation (call before each epoch, on every rank)."""
        self.epoch = epoch

    def set_start_batch(self, batch: int) -> None:
        """Make the next __iter__ skip the first `batch` batches of this epoch (mid-epoch resume)."""
        if not 0 <= batch <= self.num_batches:
            raise ValueError(f"start batch must be in [0, {self.num_batches}], got {batch}")
        self.start_batch = batch

    def _order(self) -> torch.Tensor:
        """The epoch's global order of sample indices."""
        if not self.shuffle:
            return torch.arange(self.dataset_len)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.dataset_len, generator=generator)

    def rank_indices(self) -> list[int]:
        """All indices of this rank for the current epoch, ignoring start_batch."""
        order = self._order()
        global_batch = self.batch_size * self.world_size
        full = self.dataset_len // global_batch
        mine = order[: full * global_batch].view(full, self.world_size, self.batch_size)[:, self.rank]
        start, end = self._rank_remainder_bounds()
        tail = order[full * global_batch:][start:end]
        return torch.cat([mine.reshape(-1), tail]).tolist()

    def __iter__(self) -> Iterator[int]:
        # Not a generator function: start_batch must be consumed when the DataLoader asks for
        # the iterator, not at its first next().
        skip = self.start_batch * self.batch_size
        self.start_batch = 0
        return iter(self.rank_indices()[skip:])

    def __len__(self) -> int:
        return max(0, self._rank_len() - self.start_batch * self.batch_size)


class EvalSampler(Sampler[int]):
    """A contiguous shard of range(n) per rank: every index exactly once over all ranks.

    Shard sizes differ by at most one; nothing is padded or repeated, so metrics summed over
    ranks (sum and count, then divide) are exact.
    """

    def __init__(self, dataset_len: int, *, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        base, extra = divmod(dataset_len, world_size)
        self.start = rank * base + min(rank, extra)
        self.end = self.start + base + (1 if rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end))

    def __len__(self) -> int:
        return self.end - self.start


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------

def _seed_worker(worker_id: int) -> None:
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
) -> DataLoader:
    """A DataLoader over this rank's share; batch_size is per process.

    train: TrainSampler (shuffled per epoch, `drop_last` as described there) exposed as
    `loader.sampler`; eval: EvalSampler (no padding, never drops). persistent_workers is
    always False so that `set_epoch(loader, epoch)` reaches the workers' dataset copies.
    """
    sampler: Sampler[int]
    if train:
        sampler = TrainSampler(len(dataset), batch_size_per_rank=batch_size, rank=rank,  # type: ignore[arg-type]
                               world_size=world_size, seed=seed, drop_last=drop_last)
    else:
        sampler = EvalSampler(len(dataset), rank=rank, world_size=world_size)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=False,  # the samplers decide what is dropped
        persistent_workers=False,
        worker_init_fn=_seed_worker if workers > 0 else None,
        generator=torch.Generator().manual_seed(_mix(_EPOCH_TAG, seed, 0)),
        collate_fn=collate_deferred if isinstance(dataset, DeferredDataset) else None,
    )


def set_epoch(loader: Any, epoch: int) -> None:
    """Set the epoch of the loader's sampler, its SeededDataset and its worker-seed generator.

    Call before iterating the loader for that epoch. Loaders with their own `set_epoch`
    (DeviceLoader, engine.prefetch.DevicePrefetcher) are handed the call.
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
        loader.generator.manual_seed(_mix(_EPOCH_TAG, getattr(sampler, "seed", 0), epoch))


# --------------------------------------------------------------------------------------------
# Whole data sets on the device (data.on_device)
# --------------------------------------------------------------------------------------------

DEVICE_DATASETS = ("cifar10", "cifar100", "digits", "fake")
# recipe -> the zero padding of its random crop (followed by a random horizontal flip); None: no augmentation
DEVICE_AUGMENTS: dict[str, int | None] = {"cifar": 4, "none": None}
_DEVICE_AUG_TAG = 5


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

    Stands in for build_loader's DataLoader without worker processes: the same samplers, so the
    same indices per batch and rank, `len`, `sampler.set_start_batch` for mid-epoch resume. Yields
    (uint8 (B, 3, H, W), int64 (B,)) on the device. With `padding` (train), sample i's crop offsets
    and flip in epoch e are drawn for the whole data set from a CPU generator seeded by
    (seed, e), so they depend on (seed, e, i) only: not on the batch, the rank count or where a
    resumed epoch restarts. (They are not the draws of the per-sample pipeline, only the same
    distribution.)
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        sampler: Sampler[int],
        batch_size: int,
        padding: int | None,
        seed: int,
        dataset: Any = None,
    ) -> None:
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
        generator = torch.Generator().manual_seed(_mix(_DEVICE_AUG_TAG, self.seed, self.epoch))
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


def _uint8_images(dataset: SeededDataset, augment: str, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of the wrapped data set as uint8 (N, H, W, 3) (after the recipe's deterministic
    eval ops, i.e. a resize for "none" when the size differs) and the int64 labels."""
    source = dataset.dataset
    if isinstance(source, ArrayImages):  # digits
        images = torch.from_numpy(np.ascontiguousarray(source.images))
        labels = torch.as_tensor(np.asarray(source.labels), dtype=torch.int64)
    elif isinstance(getattr(source, "data", None), np.ndarray) and hasattr(source, "targets"):  # torchvision CIFAR
        images = torch.from_numpy(np.ascontiguousarray(source.data))
        labels = torch.as_tensor(source.targets, dtype=torch.int64)
    elif isinstance(source, FakeImages):
        pairs = [source[i] for i in range(len(source))]
        images = torch.from_numpy(np.stack([np.asarray(image) for image, _ in pairs]))
        labels = torch.tensor([label for _, label in pairs], dtype=torch.int64)
    else:
        raise _fail(f"data.on_device=true holds the whole data set on the device: only for "
                    f"{', '.join(DEVICE_DATASETS)}, not image folders; set data.on_device=false")
    height, width = images.shape[1:3]
    if (height, width) != (image_size, image_size):
        if DEVICE_AUGMENTS[augment] is not None:
            raise _fail(f"data.on_device=true crops at the stored size {height}x{width}, not data.image_size="
                        f"{image_size}: set data.image_size={height} or data.on_device=false")
        _, resize = build_transforms(augment, image_size, normalize=False)
        images = torch.stack([resize(image.permute(2, 0, 1)) for image in images]).permute(0, 2, 3, 1)
    return images.contiguous(), labels


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
) -> DeviceLoader:
    """A DeviceLoader over this rank's share of `dataset` (CIFAR, digits, fake) copied to `device`.

    Samplers as in build_loader; train batches get the random crop + flip of recipe "cifar"
    (padding 4) on the device, eval batches and recipe "none" none. UserError for other
    recipes and for image folders.
    """
    if augment not in DEVICE_AUGMENTS:
        raise _fail(f"data.on_device=true augments like augment={' or '.join(DEVICE_AUGMENTS)} only, "
                    f"not augment={augment}: set data.on_device=false")
    images, labels = _uint8_images(dataset, augment, image_size)
    sampler: Sampler[int]
    if train:
        sampler = TrainSampler(len(images), batch_size_per_rank=batch_size, rank=rank,
                               world_size=world_size, seed=seed, drop_last=drop_last)
    else:
        sampler = EvalSampler(len(images), rank=rank, world_size=world_size)
    return DeviceLoader(images.to(device), labels.to(device), sampler=sampler, batch_size=batch_size,
                        padding=DEVICE_AUGMENTS[augment] if train else None, seed=seed, dataset=dataset)
