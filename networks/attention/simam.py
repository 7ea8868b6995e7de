"""SimAM: A Simple, Parameter-Free Attention Module for Convolutional Neural Networks.

Lingxiao Yang, Ru-Yuan Zhang, Lida Li, Xiaohua Xie. ICML 2021.
https://proceedings.mlr.press/v139/yang21o.html

Every neuron is weighted by the inverse of its minimal energy:

    y = x * sigmoid((x - mu)^2 / (4 * (var + lambda)) + 0.5),   var = sum((x - mu)^2) / (H*W - 1)

with mu and var taken per sample and channel over the spatial positions. Differences to the
original code: the statistics are computed in float32 whatever the input dtype (fp16/bf16
autocast), and a 1x1 feature map (H*W - 1 = 0, NaN in the original) uses n = 1, which gives the
finite weight sigmoid(0.5) everywhere.

The module runs a fused, memory-saving implementation by default (`simam_fused.py`: an autograd
Function that saves only its input and two per-channel statistics, compiled with torch.compile
on CPU/CUDA); `impl="reference"` (or SIMAM_IMPL=reference in the environment) runs the plain
formula below, which exporters (ONNX, torch.export) always get.
"""
from __future__ import annotations

import torch
from torch import nn

from .simam_fused import IMPLS, check_impl, resolve_impl, simam_compiled, simam_function, simam_native_kernel

__all__ = ["IMPLS", "SimAM", "simam", "simam_reference"]


def simam_reference(x: torch.Tensor, e_lambda: float = 1e-4) -> torch.Tensor:
    """The formula of the paper, evaluated in float32 (float64 stays float64)."""
    xf = x if x.dtype == torch.float64 else x.float()
    n = max(x.shape[2] * x.shape[3] - 1, 1)
    d = (xf - xf.mean(dim=(2, 3), keepdim=True)).pow(2)
    v = d.sum(dim=(2, 3), keepdim=True) / n
    e_inv = d / (4 * (v + e_lambda)) + 0.5
    return (xf * torch.sigmoid(e_inv)).to(x.dtype)


_IMPL_FNS = {"reference": simam_reference, "function": simam_function, "compiled": simam_compiled,
             "native": simam_native_kernel}


def simam(x: torch.Tensor, e_lambda: float = 1e-4, impl: str = "auto") -> torch.Tensor:
    """SimAM of a (B, C, H, W) tensor with implementation `impl` (see `simam_fused.resolve_impl`)."""
    return _IMPL_FNS[resolve_impl(impl, x)](x, e_lambda)


class SimAM(nn.Module):
    """Parameter-free attention; `channels` is accepted (and ignored) so every module shares one signature.

    `impl`: "auto" (fused where available), "reference", "function", "compiled" or "native"; the
    environment variable SIMAM_IMPL overrides it for every module (debugging).
    """

    def __init__(self, channels: int | None = None, e_lambda: float = 1e-4, impl: str = "auto") -> None:
        super().__init__()
        self.channels = channels
        self.e_lambda = float(e_lambda)
        self.impl = check_impl(impl, "SimAM(impl=...)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return simam(x, self.e_lambda, self.impl)

    def extra_repr(self) -> str:
        return f"e_lambda={self.e_lambda:g}" + ("" if self.impl == "auto" else f", impl={self.impl}")
