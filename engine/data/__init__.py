"""Datasets, transforms, samplers and loaders, with augmentation that is exact on resume.

Plain typed arguments only (no Hydra config in here). One job per module:

- `transforms`: the augmentation recipes (data.augment) and their normalisation, with
  `auto_augment` (timm's policy strings) and `random_erasing` (data.reprob) for training and
  crop_pct / interpolation for evaluation.
- `seeding`: `SeededDataset`, whose random transform of sample `index` in epoch `epoch` is a pure
  function of (seed, epoch, index): the data do not depend on the workers or on a resume.
- `decode`: image files to RGB uint8 tensors (decode_jpeg for JPEGs, PIL else; 16-bit and float
  images scaled to 8 bits or refused naming the file).
- `image_folder`: ImageFolder layout, each real directory read once, bad images failed or skipped;
  `class_order`: labels by sorted folder name or by ImageNet-1k class index.
- `datasets`: the data sets by name and `build_datasets` -> (train, val, num_classes).
- `samplers`: `TrainSampler` (no padding, mid-epoch resume), `RepeatAugSampler`, `EvalSampler`
  (every index once over all ranks).
- `loader`: `build_loader`, `set_epoch`, `default_workers`.
- `device_loader`: data.on_device, CIFAR-sized data held and augmented on the device.
- `deferred`: data.gpu_decode, JPEGs decoded on the device (`DeviceDecoder`) on its own stream.
- `prefetch`: `DevicePrefetcher`, uint8 batches to the device, normalised there, overlapped.

User mistakes (missing files, empty class folders, unreadable images) raise `DataError`, an
`engine.errors.UserError` with a one-line message naming the path; programming mistakes and
unknown names or options raise `ValueError` listing the valid ones.
"""
from __future__ import annotations

from .auto_augment import AUTO_AUGMENT_FORMS, build_auto_augment
from .class_order import CLASS_ORDERS, IMAGENET_NUM_CLASSES, class_mapping, imagenet_index, imagenet_synsets
from .datasets import (DATASETS, DEFAULT_ROOT, DIGITS_NUM_TRAIN, IMAGE_FOLDER_DATASETS, ArrayImages, FakeImages, Recipe,
                       build_datasets, can_reach)
from .decode import decode_bytes, jpeg_frame, load_encoded, load_rgb, pil_to_rgb
from .deferred import DeferredDataset, DeviceDecoder, collate_deferred
from .device_loader import DEVICE_AUGMENTS, DEVICE_DATASETS, DeviceLoader, build_device_loader, crop_flip
from .errors import DataError
from .image_folder import BAD_IMAGE_POLICIES, CheckedImageFolder
from .loader import available_cpus, build_loader, default_workers, set_epoch, train_sampler
from .prefetch import DevicePrefetcher, normalize
from .random_erasing import RandomErasing
from .samplers import EvalSampler, RepeatAugSampler, TrainSampler
from .seeding import SeededDataset, sample_seed, seeded_call
from .streams import CudaStreams
from .transforms import (AUGMENTS, CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, NORMALIZATION,
                         build_transforms, normalization)

__all__ = [
    "AUGMENTS", "AUTO_AUGMENT_FORMS", "BAD_IMAGE_POLICIES", "CIFAR_MEAN", "CIFAR_STD", "CLASS_ORDERS", "DATASETS",
    "DEFAULT_ROOT", "DEVICE_AUGMENTS", "DEVICE_DATASETS", "DIGITS_NUM_TRAIN", "IMAGENET_MEAN", "IMAGENET_NUM_CLASSES",
    "IMAGENET_STD", "IMAGE_FOLDER_DATASETS", "INTERPOLATIONS", "NORMALIZATION",
    "ArrayImages", "CheckedImageFolder", "CudaStreams", "DataError", "DeferredDataset", "DeviceDecoder", "DeviceLoader",
    "DevicePrefetcher", "EvalSampler", "FakeImages", "RandomErasing", "Recipe", "RepeatAugSampler", "SeededDataset",
    "TrainSampler",
    "available_cpus", "build_auto_augment", "build_datasets", "build_device_loader", "build_loader", "build_transforms",
    "can_reach", "class_mapping", "collate_deferred", "crop_flip", "decode_bytes", "default_workers", "imagenet_index",
    "imagenet_synsets", "jpeg_frame", "load_encoded", "load_rgb", "normalization", "normalize", "pil_to_rgb",
    "sample_seed", "seeded_call", "set_epoch", "train_sampler",
]
