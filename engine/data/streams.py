"""The few CUDA stream operations the device decoder and the prefetcher use, behind one object.

`CudaStreams` calls torch.cuda; tests pass a stand-in with the same five methods that records
the order of the calls, which is how the stream protocol is tested without a GPU.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch

__all__ = ["CudaStreams"]


class CudaStreams:
    """torch.cuda's streams of one device."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)

    def new(self) -> Any:
        """A new stream on the device."""
        return torch.cuda.Stream(device=self.device)

    def current(self) -> Any:
        """The stream work is queued on now."""
        return torch.cuda.current_stream(self.device)

    def use(self, stream: Any) -> AbstractContextManager:
        """Context in which `stream` is the current stream."""
        return torch.cuda.stream(stream)

    def wait(self, waiter: Any, other: Any) -> None:
        """Work queued on `waiter` from now on starts after the work queued so far on `other`."""
        waiter.wait_stream(other)

    def record(self, tensor: torch.Tensor, stream: Any) -> None:
        """Tell the caching allocator that `tensor` is used on `stream` (its memory is not reused
        before that stream's queued work is done)."""
        tensor.record_stream(stream)
