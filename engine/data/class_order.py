"""Which label each class folder gets: sorted folder names, or ImageNet-1k's class indices.

- "sorted": torchvision's ImageFolder rule, label = rank of the folder name in sorted order;
  num_classes = the number of folders. Train and val must hold the same folders.
- "imagenet": label = the class's index among ImageNet-1k's 1000 classes, num_classes = 1000,
  whatever subset of the classes the folders hold. A folder is named by its WordNet id
  (`n01440764`, the usual ImageNet layout; the list is timm's, `timm.data.ImageNetInfo`) or by the
  class index itself (`0` ... `999`, the ImageNet-V2 layout). A 1000-class checkpoint then
  evaluates correctly on the full val set, on a few synset folders, or on ImageNet-V2.
- "auto" (data=imagenet's default): "imagenet" when every folder is named like that and
  num_classes is unset or 1000, else "sorted". A fine-tuning run on a subset of synsets with its
  own head asks for data.num_classes=<number of folders> (or class_order=sorted).
The full ImageNet gets the same labels under all three rules (its sorted synsets are its order).
"""
from __future__ import annotations

import functools
from typing import Sequence

from .errors import DataError

__all__ = ["CLASS_ORDERS", "IMAGENET_NUM_CLASSES", "class_mapping", "imagenet_index", "imagenet_synsets"]

CLASS_ORDERS = ("auto", "imagenet", "sorted")
IMAGENET_NUM_CLASSES = 1000


@functools.lru_cache(maxsize=1)
def imagenet_synsets() -> tuple[str, ...]:
    """ImageNet-1k's WordNet ids in class-index order (timm's copy of the standard list)."""
    from timm.data import ImageNetInfo  # local: timm is slow to import

    synsets = tuple(ImageNetInfo().label_names())
    if len(synsets) != IMAGENET_NUM_CLASSES:
        raise RuntimeError(f"timm's ImageNet-1k class list has {len(synsets)} entries, expected 1000")
    return synsets


@functools.lru_cache(maxsize=1)
def _synset_index() -> dict[str, int]:
    return {name: i for i, name in enumerate(imagenet_synsets())}


def imagenet_index(folder: str) -> int | None:
    """ImageNet-1k class index of a folder named by WordNet id or by index (ImageNet-V2), else None."""
    if folder.isdigit() and folder == str(int(folder)) and int(folder) < IMAGENET_NUM_CLASSES:
        return int(folder)
    return _synset_index().get(folder)


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _imagenet_mapping(classes: Sequence[str], num_classes: int | None, where: str) -> dict[str, int]:
    unknown = [name for name in classes if imagenet_index(name) is None]
    if unknown:
        raise DataError(f"class folder(s) {_listed(unknown)} under {where} are not ImageNet-1k classes (WordNet ids "
                        "such as n01440764, or 0-999): rename them, or label folders by sorted name (class_order=sorted)")
    if num_classes is not None and num_classes != IMAGENET_NUM_CLASSES:
        raise DataError(f"ImageNet class order labels {where} among 1000 classes but num_classes={num_classes} was "
                        "requested: set num_classes=1000, or label the folders by sorted name (class_order=sorted)")
    return {name: imagenet_index(name) for name in classes}  # type: ignore[misc]


def class_mapping(
    train_classes: Sequence[str],
    val_classes: Sequence[str],
    *,
    order: str,
    num_classes: int | None,
    where: str,
) -> tuple[dict[str, int], int]:
    """(class folder name -> label, number of classes) for the train and val folders of `where`.

    DataError when the folders do not fit `order` or `num_classes`; ValueError for an unknown order.
    """
    if order not in CLASS_ORDERS:
        raise ValueError(f"unknown class_order {order!r}; valid: {', '.join(CLASS_ORDERS)}")
    names = sorted(set(train_classes) | set(val_classes))
    if order == "auto":
        fits = num_classes in (None, IMAGENET_NUM_CLASSES) and all(imagenet_index(n) is not None for n in names)
        order = "imagenet" if fits else "sorted"
    if order == "imagenet":
        return _imagenet_mapping(names, num_classes, where), IMAGENET_NUM_CLASSES
    if sorted(train_classes) != sorted(val_classes):
        only_train = sorted(set(train_classes) - set(val_classes))[:5]
        only_val = sorted(set(val_classes) - set(train_classes))[:5]
        raise DataError(f"class folders of {where}/val differ from {where}/train (only in train: {only_train}, only "
                        f"in val: {only_val}): use the same class folders in both")
    if num_classes is not None and num_classes != len(names):
        raise DataError(f"{where} has {len(names)} classes but num_classes={num_classes} was requested: "
                        f"set the model's num_classes to {len(names)} or use another dataset")
    return {name: i for i, name in enumerate(names)}, len(names)
