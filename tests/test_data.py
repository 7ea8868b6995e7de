"""Tests of engine.data: builders, transforms, seeded augmentation, samplers and loaders."""
from __future__ import annotations

import copy
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from engine import data
from engine.data import datasets as data_sets
from engine.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def assert_user_error(excinfo: pytest.ExceptionInfo, path: object) -> str:
    """The UserError message is one line and names `path`; returns the message."""
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(path) in message, message
    return message


def raw(dataset: data.SeededDataset, index: int) -> np.ndarray:
    """The untransformed image of a wrapped dataset as a uint8 array."""
    return np.asarray(dataset.dataset[index][0])


# --------------------------------------------------------------------------------------------
# Registries
# --------------------------------------------------------------------------------------------

def test_registries_hold_the_required_names():
    assert set(data.DATASETS) == {"cifar10", "cifar100", "imagenet", "imagefolder", "fake", "digits"}
    assert set(data.AUGMENTS) == {"cifar", "imagenet", "alexnet", "none"}


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError) as excinfo:
        data.build_datasets("mnist", None, augment="cifar", image_size=32)
    for name in data.DATASETS:
        assert name in str(excinfo.value)


def test_unknown_augment_lists_valid_names():
    with pytest.raises(ValueError) as excinfo:
        data.build_datasets("fake", None, augment="autoaugment", image_size=32)
    for name in data.AUGMENTS:
        assert name in str(excinfo.value)


def test_unknown_bad_images_policy_is_value_error():
    with pytest.raises(ValueError, match="fail, skip"):
        data.build_datasets("fake", None, augment="none", image_size=32, bad_images="ignore")


def test_constants():
    assert data.CIFAR_MEAN == (0.4914, 0.4822, 0.4465)
    assert data.CIFAR_STD == (0.2023, 0.1994, 0.2010)
    assert data.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert data.IMAGENET_STD == (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "augment, image_size, source_size, expected",
    [
        ("cifar", 32, 32, (3, 32, 32)),
        ("imagenet", 64, 80, (3, 64, 64)),
        ("alexnet", 128, 32, (3, 128, 128)),
        ("none", 48, 32, (3, 48, 48)),
    ],
)
def test_augment_output_shapes(augment, image_size, source_size, expected):
    train_tf, val_tf = data.build_transforms(augment, image_size)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (source_size, source_size, 3),
                                                              dtype=np.uint8))
    for transform in (train_tf, val_tf):
        out = transform(image)
        assert type(out) is torch.Tensor  # a plain tensor, not a tv_tensors.Image
        assert out.dtype == torch.float32
        assert tuple(out.shape) == expected


def test_cifar_val_transform_is_exact_normalisation():
    _, val_tf = data.build_transforms("cifar", 32)
    pixels = np.full((32, 32, 3), 255, dtype=np.uint8)
    out = val_tf(Image.fromarray(pixels))
    expected = (1.0 - torch.tensor(data.CIFAR_MEAN)) / torch.tensor(data.CIFAR_STD)
    torch.testing.assert_close(out[:, 5, 7], expected)


def test_imagenet_val_resizes_then_centre_crops():
    _, val_tf = data.build_transforms("imagenet", 224)
    # a 512x256 image: shorter side -> 256, then a 224 centre crop of the middle
    left = np.zeros((256, 256, 3), dtype=np.uint8)
    right = np.full((256, 256, 3), 255, dtype=np.uint8)
    out = val_tf(Image.fromarray(np.concatenate([left, right], axis=1)))
    assert tuple(out.shape) == (3, 224, 224)
    # the crop is centred on the boundary between the black and the white half
    assert out[:, :, :100].mean() < 0 < out[:, :, 124:].mean()


# --------------------------------------------------------------------------------------------
# fake
# --------------------------------------------------------------------------------------------

def test_fake_shapes_and_sizes():
    train, val, num_classes = data.build_datasets("fake", None, augment="imagenet", image_size=64,
                                                  num_classes=7, num_train=30, num_val=9)
    assert (len(train), len(val), num_classes) == (30, 9, 7)
    image, label = train[8]
    assert tuple(image.shape) == (3, 64, 64) and label == 8 % 7
    assert raw(train, 0).shape == (64, 64, 3)
    assert raw(train, 0).dtype == np.uint8
    assert data.build_datasets("fake", None, augment="cifar", image_size=32)[2] == 10


def test_fake_is_deterministic_and_seed_dependent():
    kwargs = dict(augment="cifar", image_size=32, num_train=20, num_val=5)
    a, a_val, _ = data.build_datasets("fake", None, seed=3, **kwargs)
    b, b_val, _ = data.build_datasets("fake", None, seed=3, **kwargs)
    c, _, _ = data.build_datasets("fake", None, seed=4, **kwargs)
    for i in (0, 7, 19):
        np.testing.assert_array_equal(raw(a, i), raw(b, i))
        torch.testing.assert_close(a[i][0], b[i][0], rtol=0, atol=0)
        assert not np.array_equal(raw(a, i), raw(c, i))
    np.testing.assert_array_equal(raw(a_val, 4), raw(b_val, 4))
    assert not np.array_equal(raw(a, 0), raw(a_val, 0))  # same class, different noise


def test_fake_is_the_same_in_another_process():
    train, _, _ = data.build_datasets("fake", None, augment="cifar", image_size=32, seed=11)
    code = ("from engine import data; import numpy as np; "
            "t = data.build_datasets('fake', None, augment='cifar', image_size=32, seed=11)[0]; "
            "print(int(np.asarray(t.dataset[5][0], dtype=np.int64).sum()), float(t[5][0].sum()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
    assert int(out[0]) == int(raw(train, 5).astype(np.int64).sum())
    assert float(out[1]) == pytest.approx(float(train[5][0].sum()), rel=0, abs=1e-3)


def test_fake_classes_differ_and_are_separable():
    train, val, _ = data.build_datasets("fake", None, augment="none", image_size=32,
                                        num_train=200, num_val=100, num_classes=10)
    x = np.stack([raw(train, i) for i in range(len(train))]).reshape(len(train), -1).astype(float)
    y = np.array([train.dataset[i][1] for i in range(len(train))])
    means = np.stack([x[y == c].mean(0) for c in range(10)])
    between = np.abs(means[0] - means[1]).mean()
    within = np.abs(x[y == 0] - means[0]).mean()
    assert between > 20  # the class patterns differ by tens of grey levels
    assert within < 30
    xv = np.stack([raw(val, i) for i in range(len(val))]).reshape(len(val), -1).astype(float)
    yv = np.array([val.dataset[i][1] for i in range(len(val))])
    predicted = ((xv[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == yv).mean() > 0.95  # nearest class mean already learns it


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------

def test_digits_split_and_shapes():
    train, val, num_classes = data.build_datasets("digits", None, augment="cifar", image_size=32)
    assert (len(train), len(val), num_classes) == (1437, 360, 10)
    image, label = val[0]
    assert tuple(image.shape) == (3, 32, 32) and 0 <= label < 10
    pixels = raw(train, 0)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    assert pixels.max() > 200 and pixels.min() == 0  # scaled to 0..255
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])  # grey as RGB
    assert set(val.dataset.labels.tolist()) == set(range(10))


def test_digits_read_from_scikit_learns_file_without_importing_it():
    """The same arrays as sklearn's load_digits, read in a process that never imports sklearn."""
    from sklearn.datasets import load_digits

    images, labels = data_sets.digits_arrays()
    reference = load_digits()
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(labels, reference.target)
    code = ("import sys; from engine.data.datasets import digits_arrays; x, y = digits_arrays(); "
            "assert x.shape == (1797, 8, 8) and 'sklearn' not in sys.modules, sorted(m for m in sys.modules if 'sklearn' in m)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-800:]


def test_digits_val_does_not_depend_on_seed_and_is_disjoint_from_train():
    _, val_a, _ = data.build_datasets("digits", None, augment="none", image_size=32, seed=0)
    train_b, val_b, _ = data.build_datasets("digits", None, augment="none", image_size=32, seed=9)
    np.testing.assert_array_equal(val_a.dataset.images, val_b.dataset.images)
    np.testing.assert_array_equal(val_a.dataset.labels, val_b.dataset.labels)
    train_keys = {img.tobytes() for img in train_b.dataset.images}
    shared = sum(img.tobytes() in train_keys for img in val_b.dataset.images)
    assert shared <= 5  # only a few identical-looking digits, not the same samples


def test_digits_upscaling_keeps_them_recognisable():
    train, val, _ = data.build_datasets("digits", None, augment="none", image_size=32)
    x = torch.from_numpy(train.dataset.images).float().flatten(1)
    xv = torch.from_numpy(val.dataset.images).float().flatten(1)
    nearest = torch.cdist(xv, x).argmin(1).numpy()
    accuracy = (train.dataset.labels[nearest] == val.dataset.labels).mean()
    assert accuracy >= 0.95


# --------------------------------------------------------------------------------------------
# Seeded augmentation
# --------------------------------------------------------------------------------------------

def test_seeded_transform_is_a_function_of_seed_epoch_index():
    train, _, _ = data.build_datasets("fake", None, augment="alexnet", image_size=128, num_train=8)
    first = train[3][0]
    torch.rand(5)  # global RNG activity must not matter
    random.random()
    torch.testing.assert_close(train[3][0], first, rtol=0, atol=0)
    assert not torch.equal(train[4][0], first)
    train.set_epoch(1)
    assert not torch.equal(train[3][0], first)
    train.set_epoch(0)
    torch.testing.assert_close(train[3][0], first, rtol=0, atol=0)
    other_seed, _, _ = data.build_datasets("fake", None, augment="alexnet", image_size=128,
                                           num_train=8, seed=1)
    other_seed.dataset = train.dataset  # same pixels, different augmentation seed
    assert not torch.equal(other_seed[3][0], first)


def test_seeded_transform_leaves_global_rng_alone():
    train, _, _ = data.build_datasets("fake", None, augment="cifar", image_size=32, num_train=4)
    torch.manual_seed(123)
    random.seed(123)
    expected_torch, expected_py = torch.rand(3), random.random()
    torch.manual_seed(123)
    random.seed(123)
    train[0], train[1]
    torch.testing.assert_close(torch.rand(3), expected_torch)
    assert random.random() == expected_py


def test_sample_seed_is_pure_and_distinct():
    assert data.sample_seed(0, 1, 2) == data.sample_seed(0, 1, 2)
    seeds = {data.sample_seed(s, e, i) for s in range(2) for e in range(3) for i in range(50)}
    assert len(seeds) == 300
    assert all(0 <= s < 2**63 for s in seeds)


def _all_batches(loader: torch.utils.data.DataLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data.set_epoch(loader, epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_batches_are_identical_for_any_worker_count():
    train, _, _ = data.build_datasets("fake", None, augment="cifar", image_size=32, num_train=48)
    loaders = [data.build_loader(train, batch_size=8, train=True, workers=w, seed=5) for w in (0, 2)]
    epoch0 = [_all_batches(loader, 0) for loader in loaders]
    epoch1 = [_all_batches(loader, 1) for loader in loaders]
    for a, b in (epoch0, epoch1):
        assert len(a) == len(b) == 6
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(epoch0[0][0][0], epoch1[0][0][0])  # epochs differ
    # the same sample in two epochs gets two different augmentations
    x0 = torch.cat([x for x, _ in epoch0[0]])
    data.set_epoch(loaders[0], 0)
    order0 = loaders[0].sampler.rank_indices()
    data.set_epoch(loaders[0], 1)
    order1 = loaders[0].sampler.rank_indices()
    x1 = torch.cat([x for x, _ in epoch1[0]])
    shared = sorted(set(order0) & set(order1))[:4]
    for index in shared:
        assert not torch.equal(x0[order0.index(index)], x1[order1.index(index)])


def test_mid_epoch_resume_continues_with_the_same_batches():
    train, _, _ = data.build_datasets("fake", None, augment="cifar", image_size=32, num_train=40)
    loader = data.build_loader(train, batch_size=8, train=True, workers=0, seed=2)
    full = _all_batches(loader, 3)
    resumed_train, _, _ = data.build_datasets("fake", None, augment="cifar", image_size=32,
                                              num_train=40)
    resumed = data.build_loader(resumed_train, batch_size=8, train=True, workers=0, seed=2)
    data.set_epoch(resumed, 3)
    resumed.sampler.set_start_batch(2)
    assert len(resumed) == 3
    rest = [(x, y) for x, y in resumed]
    assert len(rest) == 3
    for (xa, ya), (xb, yb) in zip(full[2:], rest):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert len(resumed) == 5  # start batch is consumed by one iteration


def test_set_epoch_reaches_sampler_and_dataset():
    train, val, _ = data.build_datasets("fake", None, augment="cifar", image_size=32, num_train=16)
    loader = data.build_loader(train, batch_size=4, train=True, workers=0)
    data.set_epoch(loader, 7)
    assert loader.sampler.epoch == 7 and train.epoch == 7
    val_loader = data.build_loader(val, batch_size=10, train=False, workers=0)
    data.set_epoch(val_loader, 7)  # no error on the eval sampler
    assert val.epoch == 7
    assert loader.persistent_workers is False


def test_eval_loader_covers_every_sample_once_across_ranks():
    _, val, _ = data.build_datasets("fake", None, augment="none", image_size=8, num_val=11)
    labels = []
    for rank in range(3):
        loader = data.build_loader(val, batch_size=2, train=False, workers=0, rank=rank, world_size=3)
        labels += [y for _, ys in loader for y in ys.tolist()]
    assert sorted(labels) == sorted(i % 10 for i in range(11))


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------

def test_train_sampler_ranks_are_disjoint_and_equal_length():
    n, batch, world = 103, 4, 3
    samplers = [data.TrainSampler(n, batch_size_per_rank=batch, rank=r, world_size=world, seed=1)
                for r in range(world)]
    shards = [list(s) for s in samplers]
    assert [len(s) for s in shards] == [8 * batch] * world  # 103 // 12 = 8 full global batches
    assert all(len(s) == 8 * batch for s in samplers)
    union = [i for shard in shards for i in shard]
    assert len(set(union)) == len(union) == 96
    # global batch k holds the same samples as batch k of a single process with batch 12
    single = list(data.TrainSampler(n, batch_size_per_rank=batch * world, seed=1))
    for k in range(8):
        step = set().union(*(shard[k * batch:(k + 1) * batch] for shard in shards))
        assert step == set(single[k * 12:(k + 1) * 12])


def test_train_sampler_epochs_and_seeds_change_the_order():
    sampler = data.TrainSampler(50, batch_size_per_rank=5, seed=0)
    epoch0 = list(sampler)
    assert list(sampler) == epoch0
    sampler.set_epoch(1)
    assert list(sampler) != epoch0 and sorted(list(sampler)) == list(range(50))
    assert list(data.TrainSampler(50, batch_size_per_rank=5, seed=1)) != epoch0
    assert list(data.TrainSampler(50, batch_size_per_rank=5, shuffle=False)) == list(range(50))


def test_train_sampler_start_batch_skips_exactly_k_batches_once():
    sampler = data.TrainSampler(64, batch_size_per_rank=4, rank=1, world_size=2, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    assert len(full) == 32
    sampler.set_start_batch(5)
    assert len(sampler) == 32 - 20
    assert list(sampler) == full[20:]
    assert len(sampler) == 32 and list(sampler) == full  # reset after one iteration
    sampler.set_start_batch(8)
    assert list(sampler) == []
    with pytest.raises(ValueError):
        sampler.set_start_batch(9)


def test_train_sampler_without_drop_last_splits_the_remainder():
    world = 3
    samplers = [data.TrainSampler(29, batch_size_per_rank=4, rank=r, world_size=world,
                                  drop_last=False) for r in range(world)]
    shards = [list(s) for s in samplers]
    assert sorted(i for s in shards for i in s) == list(range(29))
    assert [len(s) for s in shards] == [10, 10, 9]  # 24 + remainder 5 split 2/2/1
    assert all(s.num_batches == 3 for s in samplers)  # same number of steps everywhere
    # a remainder smaller than the world size is dropped so that no rank has an empty step
    tiny = [data.TrainSampler(26, batch_size_per_rank=4, rank=r, world_size=world,
                              drop_last=False) for r in range(world)]
    assert [len(s) for s in tiny] == [8, 8, 8] and all(s.num_batches == 2 for s in tiny)


def test_train_sampler_smaller_than_one_batch_is_user_error():
    with pytest.raises(UserError, match="lower the batch size"):
        data.TrainSampler(10, batch_size_per_rank=8, world_size=2)
    with pytest.raises(ValueError):
        data.TrainSampler(10, batch_size_per_rank=2, rank=2, world_size=2)


@pytest.mark.parametrize("n", [1, 2, 10, 11, 13])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_sampler_covers_every_index_once(n, world):
    shards = [list(data.EvalSampler(n, rank=r, world_size=world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    lengths = [len(data.EvalSampler(n, rank=r, world_size=world)) for r in range(world)]
    assert lengths == [len(s) for s in shards]
    assert max(lengths) - min(lengths) <= 1


# --------------------------------------------------------------------------------------------
# ImageFolder / ImageNet
# --------------------------------------------------------------------------------------------

def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 36)) -> None:
    """A small random JPEG at path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def make_image_folder(root: Path, classes=("cat", "dog", "eel"), per_class: int = 3) -> Path:
    """root/{train,val}/CLASS/*.jpg with `per_class` images per class and split."""
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            for i in range(per_class):
                write_jpeg(root / split / name / f"{i}.jpg", seed=100 * c + i)
    return root


@pytest.mark.parametrize("name", ["imagefolder", "imagenet"])
def test_image_folder_builds(tmp_path, name):
    root = make_image_folder(tmp_path / "ds")
    train, val, num_classes = data.build_datasets(name, str(root), augment="imagenet", image_size=32)
    assert (len(train), len(val), num_classes) == (9, 9, 3)
    image, label = train[4]
    assert tuple(image.shape) == (3, 32, 32) and label == 1
    assert train.dataset.classes == ["cat", "dog", "eel"]
    assert train.num_skipped == 0


def test_image_folder_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as excinfo:
        data.build_datasets("imagefolder", str(missing), augment="imagenet", image_size=32)
    assert_user_error(excinfo, missing)
    with pytest.raises(UserError, match="data.root"):
        data.build_datasets("imagenet", None, augment="imagenet", image_size=32)


def test_image_folder_missing_val(tmp_path):
    root = make_image_folder(tmp_path / "ds")
    for f in (root / "val").rglob("*.jpg"):
        f.unlink()
    for d in sorted((root / "val").iterdir()):
        d.rmdir()
    (root / "val").rmdir()
    with pytest.raises(UserError) as excinfo:
        data.build_datasets("imagefolder", str(root), augment="imagenet", image_size=32)
    assert_user_error(excinfo, root / "val")


def test_image_folder_without_class_folders(tmp_path):
    root = make_image_folder(tmp_path / "ds")
    write_jpeg(root / "flat" / "train" / "a.jpg", 0)
    (root / "flat" / "val").mkdir()
    with pytest.raises(UserError) as excinfo:
        data.build_datasets("imagefolder", str(root / "flat"), augment="imagenet", image_size=32)
    assert_user_error(excinfo, root / "flat" / "train")


def test_image_folder_empty_class_folder(tmp_path):
    root = make_image_folder(tmp_path / "ds")
    (root / "train" / "fox").mkdir()
    (root / "train" / "fox" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError) as excinfo:
        data.build_datasets("imagefolder", str(root), augment="imagenet", image_size=32)
    message = assert_user_error(excinfo, root / "train")
    assert "fox" in message and "cat" not in message


def test_image_folder_val_classes_must_match_train(tmp_path):
    root = make_image_folder(tmp_path / "ds")
    write_jpeg(root / "val" / "fox" / "0.jpg", 7)
    with pytest.raises(UserError) as excinfo:
        data.build_datasets("imagefolder", str(root), augment="imagenet", image_size=32)
    message = assert_user_error(excinfo, root / "val")
    assert "fox" in message


def test_image_folder_num_classes_mismatch(tmp_path):
    root = make_image_folder(tmp_path / "ds")
    with pytest.raises(UserError) as excinfo:
        data.build_datasets("imagenet", str(root), augment="imagenet", image_size=32,
                            num_classes=1000)
    assert_user_error(excinfo, root)


def _corrupt(root: Path) -> tuple[Path, Path]:
    """Make train/dog/1.jpg garbage and train/eel/0.jpg truncated; return both paths."""
    garbage = root / "train" / "dog" / "1.jpg"
    garbage.write_bytes(b"this is not a jpeg at all" * 10)
    truncated = root / "train" / "eel" / "0.jpg"
    content = truncated.read_bytes()
    truncated.write_bytes(content[: len(content) // 2])
    return garbage, truncated


def test_corrupt_image_fails_with_its_path(tmp_path):
    root = make_image_folder(tmp_path / "ds")
    garbage, truncated = _corrupt(root)
    train, _, _ = data.build_datasets("imagefolder", str(root), augment="imagenet", image_size=32)
    train[0]  # readable files are fine; the error comes when the bad file is read
    for index, path in ((4, garbage), (6, truncated)):
        with pytest.raises(UserError) as excinfo:
            train[index]
        message = assert_user_error(excinfo, path)
        assert "bad_images=skip" in message
    # raised in a DataLoader worker, the error is still a one-line UserError naming the file
    loader = data.build_loader(train, batch_size=3, train=False, workers=2)
    with pytest.raises(UserError) as excinfo:
        list(loader)
    assert_user_error(excinfo, garbage)
    assert str(excinfo.value).startswith("cannot read image")


def test_corrupt_image_skip_replaces_and_counts(tmp_path):
    root = make_image_folder(tmp_path / "ds")
    _corrupt(root)
    train, val, _ = data.build_datasets("imagefolder", str(root), augment="imagenet",
                                        image_size=32, bad_images="skip")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        image, label = train[4]
    assert label == 1  # replaced by the next sample, train/dog/2.jpg
    expected = train.dataset[5][0]
    with pytest.warns(UserWarning, match="dog"):
        replaced = train.dataset[4][0]
    np.testing.assert_array_equal(np.asarray(replaced), np.asarray(expected))
    assert train.num_skipped == 2 and train.dataset.num_skipped == 2
    assert val.num_skipped == 0


def test_skip_count_is_summed_over_workers(tmp_path):
    root = make_image_folder(tmp_path / "ds")
    _corrupt(root)
    train, _, _ = data.build_datasets("imagefolder", str(root), augment="imagenet",
                                      image_size=32, bad_images="skip")
    loader = data.build_loader(train, batch_size=2, train=False, workers=2)
    labels = [y for _, ys in loader for y in ys.tolist()]
    assert len(labels) == 9
    assert train.num_skipped == 2  # one per bad file, counted in the workers
    assert copy.deepcopy(train.dataset).num_skipped == 2  # copies are snapshots, not errors
    assert pickle.loads(pickle.dumps(train.dataset)).num_skipped == 2


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, tarball", [("cifar10", "cifar-10-python.tar.gz"),
                                           ("cifar100", "cifar-100-python.tar.gz")])
def test_cifar_missing_without_download(tmp_path, name, tarball):
    with pytest.raises(UserError) as excinfo:
        data.build_datasets(name, str(tmp_path), augment="cifar", image_size=32, download=False)
    message = assert_user_error(excinfo, tmp_path)
    assert tarball in message and "data.root" in message


def test_cifar_offline_download_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(data_sets, "can_reach", lambda url, timeout=3.0: False)
    with pytest.raises(UserError) as excinfo:
        data.build_datasets("cifar10", str(tmp_path), augment="cifar", image_size=32, download=True)
    message = assert_user_error(excinfo, tmp_path)
    assert "offline" in message
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_cifar_default_root_is_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as excinfo:
        data.build_datasets("cifar10", None, augment="cifar", image_size=32, download=False)
    assert_user_error(excinfo, tmp_path / "data")


def test_cifar_from_local_batches(tmp_path, monkeypatch):
    """A tiny CIFAR-10 in torchvision's pickle layout (md5 checks disabled)."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, 4).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    train, val, num_classes = data.build_datasets("cifar10", str(tmp_path), augment="cifar",
                                                  image_size=32, download=False)
    assert (len(train), len(val), num_classes) == (20, 4, 10)
    image, label = train[0]
    assert tuple(image.shape) == (3, 32, 32) and 0 <= label < 10
    with pytest.raises(UserError) as excinfo:
        data.build_datasets("cifar10", str(tmp_path), augment="cifar", image_size=32,
                            num_classes=100, download=False)
    assert_user_error(excinfo, tmp_path)
