"""data.reprob: random erasing (Zhong et al., "Random Erasing Data Augmentation", arXiv:1708.04896)
as timm's RandomErasing does it by default (mode "pixel", one rectangle, area 2%-1/3 of the image,
aspect ratio 0.3-3.3, 10 tries), but applied to the uint8 image before normalisation.

Why before: our batches travel as uint8 (workers -> pinned memory -> device) and are normalised on
the device, so a sample cannot be erased after normalisation on a worker; erasing the uint8 image
keeps the per-sample seeding (the rectangle is a function of (seed, epoch, index)) and gives the
same batches whether the pipeline normalises per sample or on the device. timm erases the
normalised image with N(0, 1) noise per pixel; here that noise is drawn in the same normalised
space and mapped back to pixel values ((z * std + mean) * 255), so after normalisation the erased
pixels are timm's noise up to 8-bit rounding and clipping to [0, 255] (|z| beyond about 2 sigma).
All draws come from torch's CPU generator, so images on the GPU (data.gpu_decode) erase alike.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

__all__ = ["RandomErasing"]


class RandomErasing:
    """With probability `probability`, replace one random rectangle of a uint8 CHW image by noise."""

    def __init__(self, probability: float, mean: Sequence[float], std: Sequence[float], *,
                 area: tuple[float, float] = (0.02, 1 / 3), aspect: tuple[float, float] = (0.3, 1 / 0.3),
                 tries: int = 10) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"random erasing probability must be in [0, 1], got {probability}")
        self.probability = probability
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.area = area
        self.log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
        self.tries = tries

    def _box(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """(top, left, h, w) of the rectangle, or None if no try fits."""
        for _ in range(self.tries):
            target = float(torch.empty(1).uniform_(*self.area)) * height * width
            aspect = math.exp(float(torch.empty(1).uniform_(*self.log_aspect)))
            h, w = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < h < height and 0 < w < width:
                top = int(torch.randint(0, height - h + 1, (1,)))
                left = int(torch.randint(0, width - w + 1, (1,)))
                return top, left, h, w
        return None

    def __call__(self, image: Any) -> Any:
        if image.dtype != torch.uint8:
            raise TypeError(f"random erasing works on uint8 images, got {image.dtype}")
        if float(torch.rand(1)) >= self.probability:
            return image
        channels, height, width = image.shape[-3:]
        box = self._box(height, width)
        if box is None:
            return image
        top, left, h, w = box
        noise = torch.randn(channels, h, w) * self.std[:channels] + self.mean[:channels]
        pixels = (noise * 255).round_().clamp_(0, 255).to(torch.uint8)
        image = image.clone()
        image[..., top:top + h, left:left + w] = pixels.to(image.device)
        return image

    def __repr__(self) -> str:
        return f"RandomErasing(probability={self.probability})"
