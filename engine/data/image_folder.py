"""Image folders (ROOT/CLASS/**/image): each real folder read once, unreadable images failed or skipped.

Like torchvision's ImageFolder (same sample order: classes by name, then sorted paths), except:
- Symbolic links are followed, but each real directory is read once. A link that leads back to
  a folder already read (`train/cat/loop -> ..`, `-> .`), to a folder that holds class folders,
  or into another class's folder is skipped with a warning naming the link: following it would
  only repeat images or give another class's images this class's label. Skipping rather than
  failing is deliberate: the run then sees exactly the images of the folder without the link.
  Two class folders that are the same real folder are an error (their images would get two labels).
- Labels come from a class->label mapping (engine.data.class_order), not necessarily sorted names.
- An unreadable image raises DataError naming the file ("fail") or is replaced by the next
  readable sample and counted over all DataLoader workers ("skip").
"""
from __future__ import annotations

import multiprocessing
import os
import warnings
from typing import Any, Callable

import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from .decode import DECODE_ERRORS, load_encoded, load_rgb
from .errors import DataError

__all__ = ["BAD_IMAGE_POLICIES", "CheckedImageFolder", "SharedCounter", "class_folders"]

BAD_IMAGE_POLICIES = ("fail", "skip")

# A SemLock made in a "fork" context cannot be sent to spawn/forkserver workers, while one made
# in a "spawn" context works with workers of every start method.
_SHARED_CONTEXT = multiprocessing.get_context("spawn")


class SharedCounter:
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


def check_dir(path: str, what: str) -> None:
    """DataError naming `path` unless it is a directory."""
    if not os.path.isdir(path):
        raise DataError(f"{what} {path} does not exist or is not a folder: "
                        "expected ROOT/train/CLASS/*.jpg and ROOT/val/CLASS/*.jpg (set data.root)")


def class_folders(split_dir: str) -> list[str]:
    """Sorted names of the class folders of `split_dir` (DataError if it is missing or has none)."""
    check_dir(split_dir, "image folder")
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not classes:
        raise DataError(f"{split_dir} has no class folders: put images in {split_dir}/CLASS_NAME/*.jpg")
    return classes


def _contains(outer: str, inner: str) -> bool:
    """Whether real path `inner` is `outer` or lies below it."""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


class _Walk:
    """Walks the class folders of one split, reading each real directory once."""

    def __init__(self, split_dir: str, classes: list[str]) -> None:
        self.split_real = os.path.realpath(split_dir)
        self.roots = {name: os.path.realpath(os.path.join(split_dir, name)) for name in classes}
        self.visited = set(self.roots.values())
        if len(self.visited) < len(self.roots):
            same = sorted(name for name in classes if list(self.roots.values()).count(self.roots[name]) > 1)
            raise DataError(f"class folders {', '.join(same)} under {split_dir} are the same folder (links): "
                            "their images would get two labels; remove the link(s)")

    def _why_skip(self, real: str, current_class: str) -> str | None:
        other = [name for name, root in self.roots.items() if name != current_class and _contains(root, real)]
        if other:
            return f"inside class folder {other[0]}"
        if _contains(real, self.split_real) or any(_contains(real, root) for root in self.roots.values()):
            return "a folder that holds class folders"
        return "a folder already read (a link loop or a second link)" if real in self.visited else None

    def images(self, name: str, split_dir: str) -> list[str]:
        """Sorted image paths under class folder `name`, links followed once."""
        found: list[tuple[str, list[str]]] = []
        for current, dirs, files in os.walk(os.path.join(split_dir, name), followlinks=True):
            keep = []
            for sub in sorted(dirs):
                path = os.path.join(current, sub)
                real = os.path.realpath(path)
                why = self._why_skip(real, name)
                if why is not None:
                    warnings.warn(f"image folder: skipped the link {path} -> {real}, {why}; each folder is read "
                                  "once (remove the link to silence this)", stacklevel=2)
                    continue
                self.visited.add(real)
                keep.append(sub)
            dirs[:] = keep
            found.append((current, [f for f in files if has_file_allowed_extension(f, IMG_EXTENSIONS)]))
        return [os.path.join(current, f) for current, files in sorted(found) for f in sorted(files)]


def _samples(split_dir: str, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) of every image, classes in name order; DataError naming empty class folders."""
    classes = class_folders(split_dir)
    walk = _Walk(split_dir, classes)
    per_class = {name: walk.images(name, split_dir) for name in classes}
    empty = [name for name in classes if not per_class[name]]
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise DataError(f"class folder(s) {shown} under {split_dir} contain no images "
                        f"({' '.join(IMG_EXTENSIONS)}): add images or delete the folder(s)")
    return [(path, class_to_idx[name]) for name in classes for path in per_class[name]]


class CheckedImageFolder(Dataset):
    """(uint8 CHW tensor, label) for every image under root/CLASS/ (decode_jpeg for JPEGs, PIL for the rest).

    class_to_idx: label of each class folder (default: sorted names, as torchvision). With
    bad_images="skip" an unreadable sample is replaced by the next readable one (index + 1,
    wrapping) and `num_skipped` counts the replacements over all workers (a file read in two
    epochs counts twice).
    """

    def __init__(self, root: str, *, class_to_idx: dict[str, int] | None = None, bad_images: str = "fail") -> None:
        if bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(f"unknown bad_images {bad_images!r}; valid: {', '.join(BAD_IMAGE_POLICIES)}")
        self.root = root
        self.classes = class_folders(root)
        self.class_to_idx = class_to_idx or {name: i for i, name in enumerate(self.classes)}
        self.samples = _samples(root, self.class_to_idx)
        self.targets = [label for _, label in self.samples]
        self.loader: Callable[[str], torch.Tensor] = load_rgb
        self.bad_images = bad_images
        self._skipped = SharedCounter()

    @property
    def num_skipped(self) -> int:
        """Number of unreadable images replaced so far (over all workers)."""
        return self._skipped.value

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._read(index, self.loader)

    def load_encoded(self, index: int) -> tuple[torch.Tensor, int]:
        """(payload, label) for DeferredDataset: the encoded JPEG, or the image decoded on the CPU."""
        return self._read(index, load_encoded)

    def _read(self, index: int, load: Callable[[str], torch.Tensor]) -> tuple[torch.Tensor, int]:
        for attempt in range(len(self.samples)):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                return load(path), label
            except DECODE_ERRORS as err:
                if self.bad_images == "fail":
                    raise DataError(f"cannot read image {path} ({type(err).__name__}: {err}): "
                                    "delete or replace the file, or set data.bad_images=skip") from err
                self._skipped.add()
                warnings.warn(f"skipping unreadable image {path}: {err}", stacklevel=3)
        raise DataError(f"no readable image under {self.root}: check the files")


def open_image_folders(root: str | None, *, class_order: str, num_classes: int | None,
                       bad_images: str, eval_only: bool = False) -> tuple[CheckedImageFolder | None, CheckedImageFolder, int]:
    """(train, val, num_classes) of the layout ROOT/train/CLASS/* and ROOT/val/CLASS/*, labelled
    by `class_order` (engine.data.class_order). eval_only: train/ is not needed (None)."""
    from .class_order import class_mapping

    if root is None:
        raise DataError("no dataset root given for an image folder dataset: set data.root to a folder "
                        "with train/ and val/ subfolders")
    check_dir(root, "dataset root")
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    train_classes = None if eval_only else class_folders(train_dir)  # train/ first: its errors come first
    val_classes = class_folders(val_dir)
    train_classes = val_classes if train_classes is None else train_classes
    class_to_idx, found = class_mapping(train_classes, val_classes, order=class_order, num_classes=num_classes, where=root)
    train = None if eval_only else CheckedImageFolder(train_dir, class_to_idx=class_to_idx, bad_images=bad_images)
    val = CheckedImageFolder(val_dir, class_to_idx=class_to_idx, bad_images=bad_images)
    return train, val, found
