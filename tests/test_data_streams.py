"""The CUDA stream protocol of the prefetcher and the device decoder, checked on the CPU.

A recording stand-in for engine.data.streams.CudaStreams logs every stream call; the decoder's
JPEG decode is wrapped to log where it runs. What must hold (see engine.data.deferred):
the decode runs with the dedicated decode stream current; the side stream waits for the decode
stream before using the images, which are record_stream'ed on the side stream; the main stream
waits for the side stream and the batch is record_stream'ed on the main stream before it is
yielded; the side and decode streams are created once, not per epoch or evaluation.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import data
from engine.data import decode as data_decode


class Stream:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


class RecordingStreams:
    """CudaStreams' five methods, logging (op, args) in order; 'main' is current at first."""

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.created = 0
        self.stack = [Stream("main")]

    def new(self) -> Stream:
        self.created += 1
        stream = Stream(f"s{self.created}")
        self.log.append(("new", stream.name))
        return stream

    def current(self) -> Stream:
        return self.stack[-1]

    @contextmanager
    def use(self, stream: Stream):
        self.stack.append(stream)
        try:
            yield
        finally:
            self.stack.pop()

    def wait(self, waiter: Stream, other: Stream) -> None:
        self.log.append(("wait", waiter.name, other.name))

    def record(self, tensor: torch.Tensor, stream: Stream) -> None:
        self.log.append(("record", tuple(tensor.shape), stream.name))


def jpeg_folder(root: Path, size: int = 20) -> Path:
    for split in ("train", "val"):
        for c in range(2):
            for i in range(2):
                path = root / split / f"c{c}" / f"{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = np.random.default_rng(10 * c + i).integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(path, quality=90)
    return root


@pytest.fixture
def logged_decode(monkeypatch):
    """Wraps decode_jpeg so that each batched decode logs the stream current at the call."""
    holder: dict = {}
    real = data_decode.decode_jpeg

    def decode(encoded, **kwargs):
        if isinstance(encoded, list):
            holder["streams"].log.append(("decode", holder["streams"].current().name, len(encoded)))
        return real(encoded, **kwargs)

    monkeypatch.setattr(data_decode, "decode_jpeg", decode)
    return holder


def test_prefetcher_stream_protocol_and_one_side_stream(logged_decode, tmp_path):
    streams = RecordingStreams()
    logged_decode["streams"] = streams
    train = data.build_datasets("imagefolder", str(jpeg_folder(tmp_path / "jpegs")), augment="imagenet", image_size=16,
                                normalize=False, deferred=True)[0]
    decoder = data.DeviceDecoder(train.transform, "cpu", streams=streams)
    loader = data.build_loader(train, batch_size=2, train=True, workers=0)
    mean, std = data.normalization("imagenet")
    prefetcher = data.DevicePrefetcher(loader, device="cpu", mean=mean, std=std, decode=decoder, streams=streams)
    for epoch in range(2):
        data.set_epoch(prefetcher, epoch)
        batches = []
        for images, targets in prefetcher:
            streams.log.append(("step", len(batches)))
            batches.append((images, targets))
        assert len(batches) == 2 and batches[0][0].shape == (2, 3, 16, 16)
    assert streams.created == 2  # one side stream, one decode stream, for both epochs
    assert streams.log[:2] == [("new", "s1"), ("wait", "s1", "main")]
    first_batch = streams.log[2:streams.log.index(("step", 0))]
    assert first_batch == [
        ("new", "s2"),  # the decode stream, at the first batch
        ("decode", "s2", 2),  # decoded with the decode stream current
        ("wait", "s1", "s2"),  # the side stream waits for the decode
        ("record", (3, 20, 20), "s1"), ("record", (3, 20, 20), "s1"),  # decoded images used on the side stream
        ("wait", "main", "s1"),  # the main stream waits for the staged batch
        ("record", (2, 3, 16, 16), "main"), ("record", (2,), "main"),  # and the batch is used there
        ("wait", "s1", "main"),  # the next batch is staged after the queued step
        ("decode", "s2", 2), ("wait", "s1", "s2"), ("record", (3, 20, 20), "s1"), ("record", (3, 20, 20), "s1"),
    ]
    assert streams.log.count(("step", 0)) == 2 and sum(1 for e in streams.log if e[0] == "decode") == 4


def test_the_decoded_batch_equals_the_one_decoded_without_streams(logged_decode, tmp_path):
    streams = RecordingStreams()
    logged_decode["streams"] = streams
    train = data.build_datasets("imagefolder", str(jpeg_folder(tmp_path / "jpegs")), augment="imagenet", image_size=16,
                                normalize=False, deferred=True)[0]
    batch = data.collate_deferred([train[i] for i in range(4)])[0]
    with_streams = data.DeviceDecoder(train.transform, "cpu", streams=streams)(batch)
    without = data.DeviceDecoder(train.transform, "cpu")(batch)
    assert torch.equal(with_streams, without)


def test_cpu_fallback_images_are_not_recorded(monkeypatch, tmp_path):
    streams = RecordingStreams()

    def reject(encoded, **kwargs):
        raise RuntimeError("the device decoder rejects this batch")

    monkeypatch.setattr(data_decode, "decode_jpeg", reject)
    decoder = data.DeviceDecoder(lambda image: image, "meta", streams=streams)  # images would live on "meta"
    jpeg = (jpeg_folder(tmp_path / "jpegs") / "train" / "c0" / "0.jpg").read_bytes()
    payload = torch.frombuffer(bytearray(jpeg), dtype=torch.uint8)
    out = decoder(([payload], torch.tensor([0])))  # decoded by PIL on the CPU, then moved to the device
    assert out.device.type == "meta" and out.shape == (1, 3, 20, 20)
    assert [e for e in streams.log if e[0] == "record"] == []  # CPU tensors have no stream to record
    assert ("wait", "main", "s1") in streams.log


def test_no_streams_on_the_cpu():
    assert data.DevicePrefetcher([], device="cpu", mean=(0.5,), std=(0.5,)).streams is None
    assert data.DeviceDecoder(lambda x: x, "cpu").streams is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_decode_on_cuda_matches_the_cpu_pipeline_while_the_gpu_is_busy(tmp_path):
    """The nvJPEG race (pytorch/vision PR #9606): decoded images must not be overwritten or read
    from memory that queued kernels still use. Keep the main stream busy between batches (memory
    freed there is what the allocator would hand out) and compare with the CPU pipeline."""
    root = tmp_path / "jpegs"
    for split in ("train", "val"):
        for c in range(2):
            for i in range(24):
                path = root / split / f"c{c}" / f"{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                yy, xx = np.mgrid[0:96, 0:128]
                pixels = np.stack([(xx + 7 * i) % 256, (yy + 11 * c) % 256, (xx + yy) % 256], -1).astype(np.uint8)
                Image.fromarray(pixels).save(path, quality=95)
    kwargs = dict(augment="imagenet", image_size=64, normalize=False)
    deferred = data.build_datasets("imagefolder", str(root), deferred=True, **kwargs)[0]
    plain = data.build_datasets("imagefolder", str(root), **kwargs)[0]
    mean, std = data.normalization("imagenet")
    on_gpu = data.DevicePrefetcher(data.build_loader(deferred, batch_size=8, train=True, workers=0, seed=1), device="cuda",
                                   mean=mean, std=std, decode=data.DeviceDecoder(deferred.transform, "cuda"))
    on_cpu = data.DevicePrefetcher(data.build_loader(plain, batch_size=8, train=True, workers=0, seed=1), device="cpu",
                                   mean=mean, std=std)
    for epoch in range(3):
        data.set_epoch(on_gpu, epoch)
        data.set_epoch(on_cpu, epoch)
        for (x, y), (x_cpu, y_cpu) in zip(on_gpu, on_cpu):
            busy = torch.randn(3072, 3072, device="cuda")
            for _ in range(4):
                busy = busy @ busy / 3072  # queued work whose freed memory the allocator recycles
            del busy
            assert torch.equal(y.cpu(), y_cpu)
            diff = (x.cpu() - x_cpu).abs()
            assert diff.mean() < 0.02 and diff.max() < 0.5, (epoch, float(diff.mean()), float(diff.max()))
    assert on_gpu.streams is not None
