"""data.gpu_decode: loader workers only read JPEG files; the training process decodes them on the GPU
(nvJPEG, batched) and applies each sample's seeded transform there.

The stream protocol (why: torchvision's nvJPEG decode allocates its outputs on the current stream
but decodes on a private stream that does not wait for it, so memory freed by kernels still queued
could be handed to the decoder: pytorch/vision PR #9606, torchcodec #1634):
1. decode with a dedicated decode stream current (created once), so the outputs' memory comes
   from that stream's pool, which nothing else uses;
2. the caller's stream (the prefetcher's side stream) waits for the decode stream;
3. every output is `record_stream`ed on the caller's stream, so the allocator does not hand its
   memory out again before the caller's work on it is done;
4. then the seeded transforms run on the caller's stream.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torchvision.io import ImageReadMode

from . import decode
from .errors import DataError
from .seeding import SeededDataset, sample_seed, seeded_call
from .streams import CudaStreams

__all__ = ["DeferredDataset", "DeviceDecoder", "collate_deferred"]

Transform = Callable[[Any], Any]


class DeferredDataset(SeededDataset):
    """A SeededDataset of an image folder whose JPEGs are decoded and transformed later, on the
    device, by `DeviceDecoder`.

    __getitem__ returns ((payload, seed), label): payload is the file's bytes (a 1-D uint8 tensor)
    when it is an 8-bit 3-component JPEG that ends properly, else the image decoded here on the
    CPU (uint8 CHW, where the bad_images policy applies as usual); seed is the sample's
    `sample_seed`. Batch them with `collate_deferred`.
    """

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, int], int]:  # type: ignore[override]
        payload, label = self.dataset.load_encoded(index % len(self))  # type: ignore[attr-defined]
        return (payload, sample_seed(self.seed, self.epoch, index)), label


def collate_deferred(batch: list[tuple[tuple[torch.Tensor, int], int]]) -> tuple[tuple[list[torch.Tensor], torch.Tensor], torch.Tensor]:
    """DeferredDataset samples -> ((payloads, int64 seeds), int64 labels)."""
    payloads = [payload for (payload, _), _ in batch]
    seeds = torch.tensor([seed for (_, seed), _ in batch], dtype=torch.int64)
    return (payloads, seeds), torch.tensor([label for _, label in batch], dtype=torch.int64)


class DeviceDecoder:
    """Decodes a `collate_deferred` batch on `device` and applies each sample's transform there with
    the sample's seed: the augmentation parameters SeededDataset would draw, so the batch is the
    per-sample pipeline's up to decoder rounding.

    On CUDA the decode follows the stream protocol of this module; `streams` replaces torch.cuda's
    (tests). A batch the device decoder rejects is decoded again on the CPU (PIL fallback
    included); a file that fails there too raises DataError.
    """

    def __init__(self, transform: Transform, device: torch.device | str, *, streams: Optional[Any] = None) -> None:
        self.transform = transform
        self.device = torch.device(device)
        self.streams = streams if streams is not None else (CudaStreams(self.device) if self.device.type == "cuda" else None)
        self._stream: Any = None  # the decode stream, created at the first batch

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
        if self.streams is None:
            return self._decode_on_current(encoded)
        if self._stream is None:
            self._stream = self.streams.new()
        caller = self.streams.current()
        with self.streams.use(self._stream):
            images = self._decode_on_current(encoded)
        self.streams.wait(caller, self._stream)
        for image in images:
            if image.device.type == self.device.type:  # not the CPU fallback's images
                self.streams.record(image, caller)
        return images

    def _decode_on_current(self, encoded: list[torch.Tensor]) -> list[torch.Tensor]:
        try:
            return decode.decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            pass
        try:
            return [decode.decode_bytes(bytes(e.cpu().numpy())) for e in encoded]
        except decode.DECODE_ERRORS as err:
            raise DataError(f"cannot decode an image of this batch ({type(err).__name__}: {err}): set "
                            "data.gpu_decode=false to have the file named (or skipped with data.bad_images=skip)") from err
