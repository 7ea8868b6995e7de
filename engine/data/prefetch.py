"""Moves uint8 batches to the device and normalises them there, overlapping the copy with compute.

The loaders of engine.data carry uint8 images (a quarter of float32's bytes through worker queues,
pinned memory and PCIe); `DevicePrefetcher` wraps such a loader and yields what the loops expect,
(float32 normalised images, int64 targets) on the device, channels-last when asked. On CUDA the
next batch's copy, decoding (data.gpu_decode) and normalisation run on a side stream, created once
for the prefetcher's life, while the current step computes (timm's PrefetchLoader does the same);
elsewhere it is a plain pass-through that normalises. The normalisation is the arithmetic of
v2.ToDtype(scale=True) + v2.Normalize, so batches equal those of the per-sample float pipeline (bit
for bit on the CPU).

The wrapper keeps the loader interface the runner uses (`len`, `sampler`, `dataset`, and
`engine.data.set_epoch`), so `train_one_epoch` and `evaluate` take it unchanged.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import torch

from .loader import set_epoch
from .streams import CudaStreams

__all__ = ["DevicePrefetcher", "normalize"]


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (images / 255 - mean) / std, channels-last if asked.

    The same operations in the same order as v2.ToDtype(float32, scale=True) + v2.Normalize;
    mean and std are float32 tensors of shape (1, C, 1, 1) on the images' device.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype} (build the datasets with normalize=False)")
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return images.to(dtype=torch.float32, memory_format=layout).mul_(1.0 / 255).sub_(mean).div_(std)


class DevicePrefetcher:
    """Wraps a loader of (uint8 images, targets): yields (normalised float32 images, targets) on `device`.

    decode: turns the loader's image part into a uint8 batch on the device first (DeviceDecoder
    of data.gpu_decode). On CUDA the batch after the one being trained on is already staged on the
    side stream; `streams` replaces torch.cuda's streams (tests; see engine.data.streams).
    """

    def __init__(
        self,
        loader: Iterable,
        *,
        device: torch.device | str,
        mean: Sequence[float],
        std: Sequence[float],
        channels_last: bool = False,
        decode: Optional[Callable[[Any], torch.Tensor]] = None,
        streams: Optional[Any] = None,
    ) -> None:
        self.loader = loader
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.channels_last = channels_last
        self.decode = decode
        self.streams = streams if streams is not None else (CudaStreams(self.device) if self.device.type == "cuda" else None)
        self._side: Any = None  # the side stream, created at the first iteration and kept

    # the loader interface the runner uses
    @property
    def sampler(self) -> Any:
        return self.loader.sampler  # type: ignore[attr-defined]

    @property
    def dataset(self) -> Any:
        return self.loader.dataset  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """engine.data.set_epoch on the wrapped loader."""
        set_epoch(self.loader, epoch)

    def _stage(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = batch
        if self.decode is not None:
            images = self.decode(images)
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        return normalize(images, self.mean, self.std, self.channels_last), targets

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Not a generator function: iter(self.loader) (which consumes the sampler's start batch)
        # happens when the caller asks for the iterator, as with a DataLoader.
        if self.streams is None:
            return map(self._stage, iter(self.loader))
        if self._side is None:
            self._side = self.streams.new()
        with self.streams.use(self._side):  # a DeviceLoader's per-epoch tensors belong to the side stream
            batches = iter(self.loader)
        return self._overlapped(batches, self._side)

    def _overlapped(self, batches: Iterator, side: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        streams = self.streams
        main = streams.current()
        staged: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        while True:
            # The side stream first waits for the work already queued on the main stream (a
            # DeviceLoader's data live there); the copy then overlaps the step queued next.
            streams.wait(side, main)
            with streams.use(side):
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                upcoming = self._stage(batch)
            if staged is not None:
                yield staged
            streams.wait(main, side)
            for tensor in upcoming:  # allocated on the side stream, used on the main one
                streams.record(tensor, main)
            staged = upcoming
        if staged is not None:
            yield staged
