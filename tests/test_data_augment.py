"""timm-style recipe options: auto-augment strings, random erasing, eval crop_pct and interpolation.

Each option must keep the seeded pipeline exact: sample (seed, epoch, index) gets the same pixels
in every build, process and worker count, and the uint8 path normalised on the device equals the
per-sample float path.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from engine import data

AUTO_AUGMENTS = ["rand-m9-mstd0.5-inc1", "rand-m7-n3-mstd0.5", "augmix-m5-w4-d2", "original", "originalr", "v0", "v0r",
                 "3a", "original-mstd0.5", "autoaug", "trivialaugment"]


def fake(augment: str = "imagenet", image_size: int = 32, normalize: bool = False, **kwargs):
    return data.build_datasets("fake", None, augment=augment, image_size=image_size, num_train=16, num_val=8,
                               normalize=normalize, **kwargs)


def epoch_batches(loader, epoch: int) -> list[torch.Tensor]:
    data.set_epoch(loader, epoch)
    return [x.clone() for x, _ in loader]


@pytest.mark.parametrize("policy", AUTO_AUGMENTS)
def test_each_auto_augment_string_builds_and_is_a_function_of_seed_epoch_index(policy):
    train, _, _ = fake(auto_augment=policy)
    plain, _, _ = fake()
    first = [train[i][0] for i in range(8)]
    assert all(x.dtype == torch.uint8 and x.shape == (3, 32, 32) for x in first)
    again, _, _ = fake(auto_augment=policy)  # a new build, as in another process or a resumed run
    assert all(torch.equal(again[i][0], first[i]) for i in range(8))
    assert any(not torch.equal(first[i], plain[i][0]) for i in range(8))  # the policy changed something
    train.set_epoch(1)
    assert any(not torch.equal(train[i][0], first[i]) for i in range(8))  # another epoch, other draws


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "augmix-m5-w4-d2", "trivialaugment"])
def test_auto_augment_batches_do_not_depend_on_the_workers(policy):
    train, _, _ = fake(auto_augment=policy)
    loaders = [data.build_loader(train, batch_size=4, train=True, workers=w, seed=3) for w in (0, 2)]
    for epoch in (0, 1):
        a, b = (epoch_batches(loader, epoch) for loader in loaders)
        assert len(a) == len(b) == 4 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_auto_augment_leaves_every_global_rng_alone():
    train, _, _ = fake(auto_augment="augmix-m5-w4-d2")  # draws from numpy's global RNG
    np.random.seed(5)
    expected = np.random.rand(3)
    np.random.seed(5)
    train[0], train[1]
    assert np.array_equal(np.random.rand(3), expected)


def test_unknown_auto_augment_lists_the_forms():
    for bad in ("randaugment", "rand-x9", "original-q3"):
        with pytest.raises(ValueError, match="trivialaugment") as excinfo:
            fake(auto_augment=bad)
        assert repr(bad) in str(excinfo.value)


@pytest.mark.parametrize("options", [dict(auto_augment="rand-m9-mstd0.5-inc1"), dict(reprob=0.5),
                                     dict(auto_augment="trivialaugment", reprob=1.0)])
def test_uint8_path_normalised_on_device_equals_float_path(options):
    u_train, _, _ = fake(**options)
    f_train, _, _ = fake(normalize=True, **options)
    mean, std = data.normalization("imagenet")
    prefetcher = data.DevicePrefetcher(data.build_loader(u_train, batch_size=8, train=True, workers=0, seed=1),
                                       device="cpu", mean=mean, std=std)
    expected = epoch_batches(data.build_loader(f_train, batch_size=8, train=True, workers=0, seed=1), 2)
    got = epoch_batches(prefetcher, 2)
    assert all(torch.allclose(x, y, rtol=0, atol=1e-6) for x, y in zip(got, expected))


# --------------------------------------------------------------------------------------------
# Random erasing
# --------------------------------------------------------------------------------------------

def test_random_erasing_replaces_one_rectangle_with_normalised_noise():
    erased, _, _ = fake(augment="cifar", reprob=1.0)
    plain, _, _ = fake(augment="cifar")
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in data.normalization("cifar"))
    changed_fraction, noise = [], []
    for i in range(16):
        a, b = erased[i][0], plain[i][0]
        diff = (a != b).any(0)
        rows, cols = diff.nonzero(as_tuple=True)
        assert diff.any()
        box = diff[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.float().mean() > 0.9  # one rectangle (a few noise pixels may equal the image)
        changed_fraction.append(float(box.numel()) / diff.numel())
        z = (a.float() / 255 - mean) / std
        noise.append(z[:, rows.min():rows.max() + 1, cols.min():cols.max() + 1].flatten())
    assert 0.02 <= min(changed_fraction) and max(changed_fraction) <= 0.34
    z = torch.cat(noise)
    assert abs(float(z.mean())) < 0.15 and 0.8 < float(z.std()) < 1.1  # timm's N(0, 1) in normalised space


def test_random_erasing_probability_and_training_only():
    erased, val, _ = fake(augment="cifar", reprob=0.5)
    plain, plain_val, _ = fake(augment="cifar")
    hits = sum(not torch.equal(erased[i][0], plain[i][0]) for i in range(16))
    assert 3 <= hits <= 13
    assert all(torch.equal(val[i][0], plain_val[i][0]) for i in range(8))
    with pytest.raises(ValueError, match="reprob"):
        fake(reprob=1.5)


# --------------------------------------------------------------------------------------------
# Evaluation resize: crop_pct and interpolation
# --------------------------------------------------------------------------------------------

def photo(width: int = 300, height: int = 200) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([(xx * 255 // width), (yy * 255 // height), ((xx + yy) % 256)], -1).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("crop_pct, resize", [(None, 256), (0.875, 256), (0.95, 235), (1.0, 224)])
def test_crop_pct_sets_the_resize_before_the_centre_crop(crop_pct, resize):
    _, val_tf = data.build_transforms("imagenet", 224, normalize=False, crop_pct=crop_pct)
    image = v2.functional.pil_to_tensor(photo())
    expected = v2.functional.center_crop(v2.functional.resize(image, resize, antialias=True), [224, 224])
    assert torch.equal(val_tf(photo()), expected)


@pytest.mark.parametrize("interpolation", ["bicubic", "nearest"])
def test_interpolation_applies_to_the_evaluation_resize_only(interpolation):
    train_tf, val_tf = data.build_transforms("imagenet", 64, normalize=False, interpolation=interpolation)
    _, bilinear = data.build_transforms("imagenet", 64, normalize=False)
    image = v2.functional.pil_to_tensor(photo())
    mode = data.INTERPOLATIONS[interpolation]
    expected = v2.functional.center_crop(v2.functional.resize(image, 73, interpolation=mode, antialias=True), [64, 64])
    assert torch.equal(val_tf(photo()), expected) and not torch.equal(bilinear(photo()), expected)
    bilinear_train, _ = data.build_transforms("imagenet", 64, normalize=False)
    assert torch.equal(data.seeded_call(train_tf, photo(), 7), data.seeded_call(bilinear_train, photo(), 7))


def test_bad_eval_options_are_value_errors():
    with pytest.raises(ValueError, match="bilinear, bicubic, nearest"):
        fake(interpolation="lanczos")
    with pytest.raises(ValueError, match="crop_pct applies to augment=imagenet"):
        fake(augment="cifar", crop_pct=0.9)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        fake(crop_pct=1.5)


def test_the_recipe_is_recorded_and_the_device_loader_refuses_what_it_cannot_do():
    train, val, _ = fake(augment="cifar", reprob=0.25, auto_augment="trivialaugment")
    assert train.recipe == data.Recipe(augment="cifar", image_size=32, auto_augment="trivialaugment", reprob=0.25)
    with pytest.raises(data.DataError, match="auto_augment=trivialaugment, data.reprob=0.25"):
        data.build_device_loader(train, device="cpu", augment="cifar", image_size=32, batch_size=4, train=True)
    data.build_device_loader(val, device="cpu", augment="cifar", image_size=32, batch_size=4, train=False)  # eval: fine
    plain, _, _ = fake(augment="cifar")
    with pytest.raises(data.DataError, match="repeated_aug=3"):
        data.build_device_loader(plain, device="cpu", augment="cifar", image_size=32, batch_size=4, train=True, repeated_aug=3)
