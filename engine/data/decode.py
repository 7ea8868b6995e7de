"""Image files -> RGB uint8 tensors (3, H, W), on the CPU.

3-component JPEGs go through torchvision.io.decode_jpeg (libjpeg-turbo straight into a tensor,
about 1.3x faster than PIL + conversion); anything else (PNG, TIFF, grayscale or CMYK JPEG, a JPEG
decode_jpeg rejects) through PIL, which also gives a corrupt file's error. Images of more than 8
bits are scaled to 8 bits, not clipped: 16-bit integer images (PNG/TIFF mode I;16) by 255/65535,
float images (TIFF mode F) with values in [0, 1] by 255; a float image outside [0, 1] or a 32-bit
integer TIFF has no known range and is refused (ValueError, which the image folder reports naming
the file). `load_encoded` serves data.gpu_decode: the bytes of a JPEG the device decoder can take,
else the image decoded here.
"""
from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.io import ImageReadMode
from torchvision.transforms import v2

__all__ = ["DECODE_ERRORS", "decode_bytes", "decode_jpeg", "jpeg_frame", "load_encoded", "load_rgb", "pil_to_rgb"]

# What a corrupt or unsupported file raises (the image folder's bad_images policy handles these).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
DEVICE_JPEG_FRAMES = (0xC0, 0xC1, 0xC2)  # baseline, extended, progressive Huffman: what nvJPEG takes
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def decode_jpeg(data: Any, *, mode: ImageReadMode = ImageReadMode.UNCHANGED, device: Any = "cpu") -> Any:
    """torchvision.io.decode_jpeg (one tensor or a list) without its deprecation warning.

    torchvision 0.29 deprecates its decoders in favour of TorchCodec; the function is unchanged.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torchvision.io.decode_jpeg(data, mode=mode, device=device)


def _grey_to_rgb(grey: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) -> uint8 (3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(grey)).unsqueeze(0).repeat(3, 1, 1)


def _wide_to_rgb(pil: Image.Image) -> torch.Tensor:
    """A single-channel image of more than 8 bits, scaled to 8 bits (ValueError if its range is unknown)."""
    values = np.asarray(pil)
    sixteen_bit = pil.mode in SIXTEEN_BIT_MODES or (pil.mode == "I" and pil.format == "PNG")  # old Pillow: PNG 16-bit is "I"
    if sixteen_bit:
        scaled = (values.astype(np.int64) * 255 + 32767) // 65535  # round(v * 255 / 65535)
        return _grey_to_rgb(np.clip(scaled, 0, 255).astype(np.uint8))
    if pil.mode == "F":
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (np.isfinite(values).all() and 0.0 <= low and high <= 1.0):
            raise ValueError(f"float image with values in [{low:g}, {high:g}], not [0, 1]: convert it to an 8-bit image")
        return _grey_to_rgb(np.floor(values.astype(np.float64) * 255 + 0.5).astype(np.uint8))
    raise ValueError(f"{pil.mode} image of unknown range (32-bit integers): convert it to an 8-bit image")


def pil_to_rgb(pil: Image.Image) -> torch.Tensor:
    """A PIL image -> RGB uint8 (3, H, W); images of more than 8 bits are scaled, not clipped."""
    if pil.mode in SIXTEEN_BIT_MODES or pil.mode in ("I", "F"):
        return _wide_to_rgb(pil)
    return v2.functional.pil_to_tensor(pil.convert("RGB"))


def decode_bytes(encoded: bytes) -> torch.Tensor:
    """An image file's bytes -> RGB uint8 tensor (3, H, W); raises one of DECODE_ERRORS if it is
    corrupt or of a pixel format without a known range."""
    if encoded.startswith(JPEG_MAGIC):
        try:
            image = decode_jpeg(torch.frombuffer(bytearray(encoded), dtype=torch.uint8))
        except RuntimeError:  # truncated, corrupt or exotic: PIL decides
            image = None
        if image is not None and image.shape[0] == 3:
            return image
    with Image.open(io.BytesIO(encoded)) as pil:
        return pil_to_rgb(pil)


def load_rgb(path: str) -> torch.Tensor:
    """Decode an image file fully into an RGB uint8 tensor (3, H, W) (raises on corrupt files)."""
    with open(path, "rb") as f:
        return decode_bytes(f.read())


def jpeg_frame(encoded: bytes) -> tuple[int, int, int]:
    """(SOF marker, bits per sample, components) of a JPEG's frame header; zeros if not found."""
    i = 2
    while i + 9 < len(encoded) and encoded[i] == 0xFF:
        marker = encoded[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn, not DHT/JPG/DAC
            return marker, encoded[i + 4], encoded[i + 9]
        if marker == 0xDA:  # scan data before a frame header
            break
        i += 2 + int.from_bytes(encoded[i + 2:i + 4], "big")
    return 0, 0, 0


def load_encoded(path: str) -> torch.Tensor:
    """The file's bytes (1-D uint8) if a device decoder can take them, else the CPU-decoded image."""
    with open(path, "rb") as f:
        encoded = f.read()
    marker, bits, components = jpeg_frame(encoded) if encoded.startswith(JPEG_MAGIC) else (0, 0, 0)
    if marker in DEVICE_JPEG_FRAMES and bits == 8 and components == 3 and encoded.rstrip(b"\0").endswith(JPEG_END):
        return torch.frombuffer(bytearray(encoded), dtype=torch.uint8)
    return decode_bytes(encoded)  # also what raises for a truncated or unreadable file
