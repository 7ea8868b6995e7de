"""Image folders: symbolic links read once, images of more than 8 bits, ImageNet class order."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import data
from engine.errors import UserError


def write_jpeg(path: Path, seed: int, size: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def make_folder(root: Path, classes=("cat", "dog"), per_class: int = 3, splits=("train", "val")) -> Path:
    for split in splits:
        for c, name in enumerate(classes):
            for i in range(per_class):
                write_jpeg(root / split / name / f"{i}.jpg", seed=100 * c + i)
    return root


def build(root: Path, name: str = "imagefolder", **kwargs):
    return data.build_datasets(name, str(root), augment="none", image_size=16, normalize=False, **kwargs)


def labels_by_file(dataset) -> dict[str, int]:
    return {os.path.relpath(path, dataset.dataset.root): label for path, label in dataset.dataset.samples}


# --------------------------------------------------------------------------------------------
# Symbolic links
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["..", ".", "../.."])
def test_a_symlink_loop_is_read_once_with_a_warning_naming_the_link(tmp_path, target):
    root = make_folder(tmp_path / "ds")
    link = root / "train" / "cat" / "loop"
    link.symlink_to(target, target_is_directory=True)
    with pytest.warns(UserWarning, match=f"skipped the link {link}"):
        train, val, num_classes = build(root)
    assert (len(train), len(val), num_classes) == (6, 6, 2)
    assert labels_by_file(train) == {f"{c}/{i}.jpg": label for label, c in enumerate(("cat", "dog")) for i in range(3)}
    assert [label for _, label in (train[i] for i in range(6))] == [0, 0, 0, 1, 1, 1]


def test_a_link_into_another_class_is_skipped_not_relabelled(tmp_path):
    root = make_folder(tmp_path / "ds")
    (root / "train" / "cat" / "more").symlink_to(root / "train" / "dog", target_is_directory=True)
    with pytest.warns(UserWarning, match="class folder"):
        train, _, _ = build(root)
    assert sorted(labels_by_file(train).items()) == sorted(
        {f"{c}/{i}.jpg": label for label, c in enumerate(("cat", "dog")) for i in range(3)}.items())


def test_links_to_folders_outside_are_followed_once(tmp_path):
    root = make_folder(tmp_path / "ds")
    outside = tmp_path / "extra_cats"
    for i in range(2):
        write_jpeg(outside / f"x{i}.jpg", seed=50 + i)
    (root / "train" / "cat" / "extra").symlink_to(outside, target_is_directory=True)
    (root / "train" / "cat" / "extra_again").symlink_to(outside, target_is_directory=True)  # a second link: once
    with pytest.warns(UserWarning, match="extra_again"):
        train, _, _ = build(root)
    assert len(train) == 8
    assert labels_by_file(train)["cat/extra/x1.jpg"] == 0


def test_class_folders_that_are_the_same_folder_are_refused(tmp_path):
    root = make_folder(tmp_path / "ds")
    (root / "train" / "puppy").symlink_to(root / "train" / "dog", target_is_directory=True)
    (root / "val" / "puppy").symlink_to(root / "val" / "dog", target_is_directory=True)
    with pytest.raises(UserError, match="dog, puppy .* same folder"):
        build(root)


def test_a_plain_folder_gives_no_warning(tmp_path):
    root = make_folder(tmp_path / "ds")
    (root / "train" / "cat" / "nested").mkdir()
    write_jpeg(root / "train" / "cat" / "nested" / "n.jpg", seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, _, _ = build(root)
    assert len(train) == 7 and labels_by_file(train)["cat/nested/n.jpg"] == 0


# --------------------------------------------------------------------------------------------
# Images of more than 8 bits
# --------------------------------------------------------------------------------------------

def test_16_bit_png_is_scaled_to_8_bits(tmp_path):
    values = np.linspace(0, 65535, 20 * 30).reshape(20, 30).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image = data.load_rgb(str(path))
    assert image.shape == (3, 20, 30) and image.dtype == torch.uint8
    expected = torch.from_numpy(np.round(values / 257.0).astype(np.uint8))
    for channel in image:
        assert torch.equal(channel, expected)
    assert image.float().mean() == pytest.approx(127.5, abs=0.6)  # not 99.7% white


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16_bit_tiff_is_scaled_to_8_bits(tmp_path, mode):
    values = np.array([[0, 257, 32896], [65535, 1000, 128]], dtype=np.uint16)
    path = tmp_path / "deep.tif"
    Image.frombytes(mode, (3, 2), values.astype(">u2" if mode == "I;16B" else "<u2").tobytes()).save(path)
    assert Image.open(path).mode == mode
    image = data.load_rgb(str(path))
    assert image[0].tolist() == [[0, 1, 128], [255, 4, 0]]


def test_float_tiff_in_0_1_is_scaled_to_8_bits(tmp_path):
    values = np.array([[0.0, 0.5, 1.0], [0.25, 0.75, 0.002]], dtype=np.float32)
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "F"
    image = data.load_rgb(str(path))
    assert image[1].tolist() == [[0, 128, 255], [64, 191, 1]]  # not all zeros


@pytest.mark.parametrize("kind", ["float_outside", "int32"])
def test_images_without_a_known_range_are_refused_naming_the_file(tmp_path, kind):
    root = make_folder(tmp_path / "ds")
    bad = root / "train" / "dog" / "weird.tif"
    pixels = (np.array([[0.0, 3.5], [-1.0, 2.0]], dtype=np.float32) if kind == "float_outside"
              else np.array([[0, 70000], [5, 1 << 30]], dtype=np.int32))
    Image.fromarray(pixels).save(bad)
    train, _, _ = build(root)
    index = [os.path.basename(p) for p, _ in train.dataset.samples].index("weird.tif")
    with pytest.raises(UserError) as excinfo:
        train[index]
    message = str(excinfo.value)
    assert str(bad) in message and "8-bit" in message and "\n" not in message
    skipping, _, _ = build(root, bad_images="skip")
    with pytest.warns(UserWarning, match="weird.tif"):
        skipping[index]
    assert skipping.num_skipped == 1


# --------------------------------------------------------------------------------------------
# ImageNet class order
# --------------------------------------------------------------------------------------------

def test_imagenet_synsets_come_from_timm_in_imagenet_order():
    synsets = data.imagenet_synsets()
    assert len(synsets) == 1000 and len(set(synsets)) == 1000
    assert synsets[0] == "n01440764" and synsets[-1] == "n15075141"  # tench ... toilet tissue
    assert list(synsets) == sorted(synsets)  # the standard index is the sorted WordNet ids
    assert data.imagenet_index("n01443537") == 1 and data.imagenet_index("17") == 17
    assert data.imagenet_index("1000") is None and data.imagenet_index("017") is None and data.imagenet_index("cat") is None


SUBSET = ("n01440764", "n01530575", "n02085620", "n15075141")  # indices 0, 10, 151, 999


def test_a_synset_subset_keeps_imagenet_labels_and_1000_classes(tmp_path):
    root = make_folder(tmp_path / "ds", classes=SUBSET, per_class=2)
    train, val, num_classes = build(root, "imagenet")
    assert num_classes == 1000
    assert sorted(set(labels_by_file(val).values())) == [0, 10, 151, 999]
    assert labels_by_file(val)["n02085620/1.jpg"] == 151 and val[7][1] == 999
    assert build(root, "imagenet", num_classes=1000)[2] == 1000  # the original evaluation command's count


def test_imagenet_v2_folders_named_by_index(tmp_path):
    root = make_folder(tmp_path / "ds", classes=("0", "10", "2", "999"), per_class=1)
    _, val, num_classes = build(root, "imagenet")
    assert num_classes == 1000
    assert labels_by_file(val) == {"0/0.jpg": 0, "10/0.jpg": 10, "2/0.jpg": 2, "999/0.jpg": 999}  # not sorted-name ranks


def test_a_synset_subset_can_be_fine_tuned_with_its_own_head(tmp_path):
    root = make_folder(tmp_path / "ds", classes=SUBSET, per_class=1)
    for kwargs in (dict(num_classes=4), dict(class_order="sorted")):
        _, val, num_classes = build(root, "imagenet", **kwargs)
        assert num_classes == 4 and [label for _, label in val.dataset.samples] == [0, 1, 2, 3]


def test_imagenet_order_with_a_subset_of_classes_in_val(tmp_path):
    root = make_folder(tmp_path / "ds", classes=SUBSET, per_class=1)
    (root / "val" / SUBSET[1] / "0.jpg").unlink()
    (root / "val" / SUBSET[1]).rmdir()
    _, val, _ = build(root, "imagenet")  # labels are absolute: fewer val classes cannot shift them
    assert [label for _, label in val.dataset.samples] == [0, 151, 999]
    with pytest.raises(UserError, match="differ"):
        build(root, "imagenet", class_order="sorted")


def test_folders_without_synset_names(tmp_path):
    root = make_folder(tmp_path / "ds", classes=("cat", "dog", "eel"), per_class=1)
    _, _, num_classes = build(root, "imagenet")  # auto: sorted names
    assert num_classes == 3
    with pytest.raises(UserError, match="num_classes=1000") as excinfo:
        build(root, "imagenet", num_classes=1000)
    assert str(root) in str(excinfo.value)
    with pytest.raises(UserError, match="cat, dog, eel .*not ImageNet-1k classes"):
        build(root, "imagenet", class_order="imagenet")
    with pytest.raises(ValueError, match="auto, imagenet, sorted"):
        build(root, "imagenet", class_order="wordnet")


def test_imagefolder_keeps_sorted_names_for_synset_folders(tmp_path):
    root = make_folder(tmp_path / "ds", classes=SUBSET, per_class=1)
    assert build(root, "imagefolder")[2] == 4
    assert build(root, "imagefolder", class_order="imagenet")[2] == 1000
