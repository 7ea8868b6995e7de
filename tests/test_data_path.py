"""Tests of the data path: uint8 loaders, normalisation on the device (engine/data/prefetch.py), JPEG
decoding with decode_jpeg, CIFAR-sized data held on the device, device-side JPEG decoding."""
from __future__ import annotations

import io
import multiprocessing
import pickle
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from helpers.cli import FAKE, check_ok, metrics, model_state, run_cli
from engine import data
from engine.errors import UserError
from engine.data import DevicePrefetcher, normalize

CPU = torch.device("cpu")


def prefetch(loader, augment: str, channels_last: bool = False, **kwargs) -> DevicePrefetcher:
    mean, std = data.normalization(augment)
    return DevicePrefetcher(loader, device=CPU, mean=mean, std=std, channels_last=channels_last, **kwargs)


def batches(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data.set_epoch(loader, epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def assert_same_batches(a: list, b: list, atol: float = 0.0) -> None:
    assert len(a) == len(b) > 0
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.shape == xb.shape and xa.dtype == xb.dtype
        torch.testing.assert_close(xa, xb, rtol=0, atol=atol)
        assert torch.equal(ya, yb)


def smooth_image(width: int, height: int, seed: int) -> np.ndarray:
    """A photo-like uint8 RGB image: smooth colour gradients plus mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(3)], -1)
    return np.clip(128 + 90 * base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def jpeg_folder(root: Path, per_class: int = 3, size: tuple[int, int] = (64, 48)) -> Path:
    """root/{train,val}/c{0,1}/*.jpg of photo-like JPEGs."""
    for split in ("train", "val"):
        for c in range(2):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(smooth_image(*size, seed=10 * c + i)).save(folder / f"{i}.jpg", quality=90)
    return root


@pytest.fixture
def tiny_cifar(tmp_path, monkeypatch) -> Path:
    """A CIFAR-10 of 5x8 training and 8 test images in torchvision's pickle layout."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 8).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    return tmp_path


# --------------------------------------------------------------------------------------------
# uint8 loaders + normalisation on the device == the float pipeline
# --------------------------------------------------------------------------------------------

def _float_and_uint8(name: str, root, augment: str, image_size: int, **kwargs):
    build = dict(augment=augment, image_size=image_size, download=False, **kwargs)
    return (data.build_datasets(name, root, normalize=True, **build)[:2],
            data.build_datasets(name, root, normalize=False, **build)[:2])


@pytest.mark.parametrize("source", ["fake", "cifar10"])
def test_uint8_cifar_batches_normalised_on_device_equal_float_pipeline(source, tiny_cifar):
    root = str(tiny_cifar) if source == "cifar10" else None
    (f_train, f_val), (u_train, u_val) = _float_and_uint8(source, root, "cifar", 32, num_train=40, num_val=8)
    for f_set, u_set, train in ((f_train, u_train, True), (f_val, u_val, False)):
        f_loader = data.build_loader(f_set, batch_size=8, train=train, workers=0, seed=3)
        u_loader = data.build_loader(u_set, batch_size=8, train=train, workers=0, seed=3)
        raw = batches(u_loader, 1)
        assert raw[0][0].dtype == torch.uint8 and raw[0][0].shape == (8, 3, 32, 32)
        assert raw[0][1].dtype == torch.int64
        assert_same_batches(batches(prefetch(u_loader, "cifar"), 1), batches(f_loader, 1), atol=1e-6)


def test_uint8_imagefolder_batches_normalised_on_device_equal_float_pipeline(tmp_path):
    root = str(jpeg_folder(tmp_path / "jpegs"))
    (f_train, f_val), (u_train, u_val) = _float_and_uint8("imagefolder", root, "imagenet", 40)
    for f_set, u_set, train in ((f_train, u_train, True), (f_val, u_val, False)):
        f_loader = data.build_loader(f_set, batch_size=3, train=train, workers=0, seed=1)
        u_loader = prefetch(data.build_loader(u_set, batch_size=3, train=train, workers=0, seed=1), "imagenet")
        assert_same_batches(batches(u_loader, 2), batches(f_loader, 2), atol=1e-6)


def test_channels_last_batches_have_the_same_values(tmp_path):
    u_train = data.build_datasets("fake", None, augment="cifar", image_size=32, num_train=16, normalize=False)[0]
    loader = data.build_loader(u_train, batch_size=8, train=True, workers=0)
    plain, cl = batches(prefetch(loader, "cifar"), 0), batches(prefetch(loader, "cifar", channels_last=True), 0)
    for (x, _), (y, _) in zip(plain, cl):
        assert y.is_contiguous(memory_format=torch.channels_last) and x.is_contiguous()
        assert torch.equal(x, y)


# --------------------------------------------------------------------------------------------
# The prefetcher
# --------------------------------------------------------------------------------------------

class ListLoader:
    """A minimal loader: a list of batches with the attributes the runner reads."""

    def __init__(self, items):
        self.items, self.sampler, self.dataset, self.epochs = items, "the sampler", "the dataset", []

    def __iter__(self):
        return iter(self.items)

    def __len__(self):
        return len(self.items)

    def set_epoch(self, epoch):
        self.epochs.append(epoch)


def test_prefetcher_yields_exactly_the_loaders_batches():
    rng = torch.Generator().manual_seed(0)
    items = [(torch.randint(0, 256, (n, 3, 5, 4), dtype=torch.uint8, generator=rng), torch.arange(n)) for n in (4, 4, 3)]
    loader = ListLoader(items)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    wrapped = DevicePrefetcher(loader, device=CPU, mean=mean, std=std)
    out = list(wrapped)
    assert len(out) == len(wrapped) == 3
    for (x, y), (images, targets) in zip(out, items):
        expected = TF.normalize(TF.to_dtype(images, torch.float32, scale=True), list(mean), list(std))
        assert torch.equal(x, expected) and torch.equal(y, targets)
    assert wrapped.sampler == "the sampler" and wrapped.dataset == "the dataset"
    data.set_epoch(wrapped, 4)
    assert loader.epochs == [4]


def test_normalize_refuses_float_images():
    with pytest.raises(TypeError, match="uint8"):
        normalize(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_prefetcher_matches_cpu():
    u_train = data.build_datasets("fake", None, augment="cifar", image_size=32, num_train=64, normalize=False)[0]
    loader = data.build_loader(u_train, batch_size=16, train=True, workers=0, pin_memory=True)
    mean, std = data.normalization("cifar")
    cuda = DevicePrefetcher(loader, device="cuda", mean=mean, std=std, channels_last=True)
    on_gpu = [(x.cpu(), y.cpu()) for x, y in cuda]
    assert_same_batches(on_gpu, batches(prefetch(loader, "cifar"), 0), atol=1e-6)
    device_loader = data.build_device_loader(u_train, device="cuda", augment="cifar", image_size=32, batch_size=16, train=True)
    cpu_loader = data.build_device_loader(u_train, device=CPU, augment="cifar", image_size=32, batch_size=16, train=True)
    assert_same_batches([(x.cpu(), y.cpu()) for x, y in DevicePrefetcher(device_loader, device="cuda", mean=mean, std=std)],
                        list(prefetch(cpu_loader, "cifar")), atol=1e-6)


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------

def test_decode_jpeg_and_pil_give_nearly_the_same_pixels(tmp_path, monkeypatch):
    path = tmp_path / "photo.jpg"
    Image.fromarray(smooth_image(500, 375, seed=1)).save(path, quality=90)
    pil = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    monkeypatch.setattr(Image, "open", None)  # the JPEG must not need PIL
    ours = data.load_rgb(str(path))
    assert ours.shape == pil.shape == (3, 375, 500) and ours.dtype == torch.uint8
    diff = (ours.int() - pil.int()).abs()
    assert diff.max() <= 4 and diff.float().mean() <= 0.5  # decoders may differ by a few levels


@pytest.mark.parametrize("kind", ["grayscale", "cmyk", "png"])
def test_other_images_are_decoded_by_pil(tmp_path, monkeypatch, kind):
    pixels = smooth_image(40, 30, seed=2)
    image = {"grayscale": Image.fromarray(pixels[..., 0]), "cmyk": Image.fromarray(pixels).convert("CMYK"),
             "png": Image.fromarray(pixels)}[kind]
    path = tmp_path / ("x.png" if kind == "png" else "x.jpg")
    image.save(path)
    expected = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    decoded = data.load_rgb(str(path))
    assert opened, "PIL was not used"
    assert decoded.shape == (3, 30, 40) and torch.equal(decoded, expected)
    payload = data.load_encoded(str(path))  # data.gpu_decode: the device only gets 3-component JPEGs
    assert payload.dim() == 3 and torch.equal(payload, expected)


def test_jpeg_frame_header():
    pixels = smooth_image(40, 30, seed=3)
    for image, progressive, expected in ((Image.fromarray(pixels), False, (0xC0, 8, 3)),
                                         (Image.fromarray(pixels), True, (0xC2, 8, 3)),
                                         (Image.fromarray(pixels[..., 0]), False, (0xC0, 8, 1))):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", progressive=progressive)
        assert data.jpeg_frame(buffer.getvalue()) == expected
    assert data.jpeg_frame(b"\xff\xd8\xff" + b"garbage") == (0, 0, 0)


def test_truncated_jpeg_follows_the_bad_images_policy_on_both_paths(tmp_path):
    root = jpeg_folder(tmp_path / "jpegs")
    bad = root / "train" / "c1" / "0.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    for deferred in (False, True):
        train = data.build_datasets("imagefolder", str(root), augment="imagenet", image_size=32, normalize=False,
                                    deferred=deferred)[0]
        with pytest.raises(UserError, match="0.jpg"):
            train[3]
        skipping = data.build_datasets("imagefolder", str(root), augment="imagenet", image_size=32, normalize=False,
                                       deferred=deferred, bad_images="skip")[0]
        with pytest.warns(UserWarning, match="skipping unreadable image"):
            _, label = skipping[3]
        assert label == 1 and skipping.num_skipped == 1


# --------------------------------------------------------------------------------------------
# Loader workers and stop signals
# --------------------------------------------------------------------------------------------

def _wait_ignoring_stop_signals(ready) -> None:
    __import__("engine.signals").signals.ignore_stop_signals_in_worker()
    ready.set()
    time.sleep(60)


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="sigwaitinfo is Linux-only")
def test_worker_ignores_sigterm_from_others_but_not_from_its_parent():
    """SLURM's job-wide SIGTERM/SIGUSR2 must not kill a loader worker, the trainer's SIGTERM must
    (multiprocessing's exit handler terminates, then joins, leftover workers: it would hang)."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    worker = ctx.Process(target=_wait_ignoring_stop_signals, args=(ready,), daemon=True)
    worker.start()
    assert ready.wait(30)
    for sig in ("TERM", "USR1", "USR2"):  # sent by another process, as slurmstepd does
        subprocess.run(["kill", f"-{sig}", str(worker.pid)], check=True)
    time.sleep(0.5)
    assert worker.is_alive()
    worker.terminate()  # SIGTERM from the parent
    worker.join(10)
    assert worker.exitcode == -signal.SIGTERM


# --------------------------------------------------------------------------------------------
# Device decoding (data.gpu_decode), exercised on the CPU
# --------------------------------------------------------------------------------------------

def test_deferred_decoding_equals_the_per_sample_pipeline(tmp_path):
    root = jpeg_folder(tmp_path / "jpegs")
    Image.fromarray(smooth_image(64, 48, seed=7)[..., 0]).save(root / "train" / "c0" / "9.jpg")  # grayscale: CPU-decoded
    Image.fromarray(smooth_image(64, 48, seed=8)).save(root / "train" / "c1" / "9.png")
    kwargs = dict(augment="imagenet", image_size=32, normalize=False)
    plain = data.build_datasets("imagefolder", str(root), **kwargs)[0]
    deferred = data.build_datasets("imagefolder", str(root), deferred=True, **kwargs)[0]
    assert isinstance(deferred, data.DeferredDataset)
    (payload, seed), label = deferred[0]
    assert payload.dim() == 1 and label == 0 and seed == data.sample_seed(0, 0, 0)
    loader = data.build_loader(deferred, batch_size=3, train=True, workers=0, seed=4)
    on_device = prefetch(loader, "imagenet", decode=data.DeviceDecoder(deferred.transform, CPU))
    expected = prefetch(data.build_loader(plain, batch_size=3, train=True, workers=0, seed=4), "imagenet")
    assert_same_batches(batches(on_device, 1), batches(expected, 1))


# --------------------------------------------------------------------------------------------
# CIFAR-sized data on the device (data.on_device)
# --------------------------------------------------------------------------------------------

def device_loader(train_set, **kwargs):
    options = dict(device=CPU, augment="cifar", image_size=32, batch_size=8, train=True, seed=5)
    return data.build_device_loader(train_set, **{**options, **kwargs})


@pytest.fixture(scope="module")
def fake_uint8():
    return data.build_datasets("fake", None, augment="cifar", image_size=32, num_train=40, num_val=12, normalize=False)[:2]


def test_crop_flip_is_random_crop_with_padding_then_flip():
    images = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    shifts = torch.tensor([[0, 0], [8, 8], [3, 5], [8, 0], [4, 4], [1, 7]])
    flips = torch.tensor([False, True, True, False, True, False])
    out = data.crop_flip(images, shifts, flips, padding=4)
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.uint8
    for i in range(6):
        chw = TF.pad(images[i].permute(2, 0, 1), [4])
        expected = TF.crop(chw, int(shifts[i, 0]), int(shifts[i, 1]), 32, 32)
        if flips[i]:
            expected = TF.horizontal_flip(expected)
        assert torch.equal(out[i], expected), i


def test_device_loader_is_deterministic_per_seed_and_epoch(fake_uint8):
    train, _ = fake_uint8
    a, b = device_loader(train), device_loader(train)
    first = batches(a, 0)
    assert len(first) == len(a) == 5 and first[0][0].dtype == torch.uint8 and first[0][0].shape == (8, 3, 32, 32)
    assert_same_batches(first, batches(b, 0))
    assert_same_batches(first, batches(a, 0))  # again, after another epoch was not started
    second = batches(a, 1)
    assert not torch.equal(first[0][1], second[0][1])  # another order
    # the same sample gets another crop/flip in another epoch
    x0, x1 = torch.cat([x for x, _ in first]), torch.cat([x for x, _ in second])
    data.set_epoch(a, 0)
    order0 = a.sampler.rank_indices()
    data.set_epoch(a, 1)
    order1 = a.sampler.rank_indices()
    differ = sum(not torch.equal(x0[order0.index(i)], x1[order1.index(i)]) for i in range(40))
    assert differ >= 30
    assert not torch.equal(batches(device_loader(train, seed=6), 0)[0][0], first[0][0])


def test_device_loader_mid_epoch_resume_gives_the_remaining_batches(fake_uint8):
    train, _ = fake_uint8
    full = batches(device_loader(train), 3)
    resumed = device_loader(train)
    data.set_epoch(resumed, 3)
    resumed.sampler.set_start_batch(2)
    assert len(resumed) == 3
    assert_same_batches(list(resumed), full[2:])
    assert len(resumed) == 5


def test_device_loader_augmentation_does_not_depend_on_the_rank_count(fake_uint8):
    train, _ = fake_uint8
    single = batches(device_loader(train, batch_size=8), 2)
    ranks = [batches(device_loader(train, batch_size=4, rank=r, world_size=2), 2) for r in range(2)]
    for step, (x, y) in enumerate(single):
        parts = [ranks[r][step] for r in range(2)]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)


def test_device_loader_without_augmentation_equals_the_per_sample_pipeline(fake_uint8, tiny_cifar):
    _, val = fake_uint8
    evals = device_loader(val, train=False, batch_size=5)
    assert_same_batches(batches(evals, 0), batches(data.build_loader(val, batch_size=5, train=False, workers=0), 0))
    for name, root in (("fake", None), ("cifar10", str(tiny_cifar))):
        train = data.build_datasets(name, root, augment="none", image_size=32, num_train=24, normalize=False, download=False)[0]
        expected = batches(data.build_loader(train, batch_size=8, train=True, workers=0, seed=5), 1)
        assert_same_batches(batches(device_loader(train, augment="none"), 1), expected)
    labels = [y for r in range(3) for _, ys in device_loader(val, train=False, rank=r, world_size=3, batch_size=2) for y in ys.tolist()]
    assert sorted(labels) == sorted(i % 10 for i in range(12))  # every sample once over the ranks


def test_device_loader_refuses_what_it_cannot_hold_or_augment(tmp_path, fake_uint8):
    train, _ = fake_uint8
    with pytest.raises(UserError, match="on_device"):
        device_loader(train, augment="imagenet")
    folder = data.build_datasets("imagefolder", str(jpeg_folder(tmp_path / "jpegs")), augment="cifar", image_size=32,
                                 normalize=False)[0]
    with pytest.raises(UserError, match="on_device=false"):
        device_loader(folder)


@pytest.mark.slow
def test_cli_trains_with_the_data_on_the_device_and_resumes_exactly(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    common = FAKE + ["data.on_device=true", "data.augment=cifar", "data.num_train=64", "data.num_val=20", "trainer.epochs=2"]
    one_thread = {"OMP_NUM_THREADS": "1"}
    check_ok(run_cli(common + [f"hydra.run.dir={full}"], env=one_thread))
    rows = metrics(full)
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["num_val"] == 20 and np.isfinite(r["train_loss"]) for r in rows)
    check_ok(run_cli(common + ["trainer.stop_after_epochs=1", f"hydra.run.dir={part}"], env=one_thread))
    check_ok(run_cli(common + [f"resume={part / 'checkpoints' / 'last.pth'}"], env=one_thread))
    a, b = model_state(full / "checkpoints" / "last.pth"), model_state(part / "checkpoints" / "last.pth")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["val_acc1"] for r in metrics(part)] == [r["val_acc1"] for r in rows]
