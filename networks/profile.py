"""Parameter and multiply-accumulate (MAC) counts, measured with thop on a copy of the model.

thop counts convolutions, linear layers, BN and pooling modules, but a module without a rule
counts zero: SimAM, and the functional pooling, gating multiplications and softmax inside the
other attention modules (thop #213/#128). The SimAM paper's FLOPs are such counts (SimAM-ResNet
= ResNet). Here each attention module also gets a rule that counts its own elementwise work, one
operation per element and step (e.g. SimAM: 8 per element: mean, subtract, square, sum, divide,
add, sigmoid, multiply). Those are added on top of thop's count through forward hooks; `profile_model` reports both
parts, `count_params_flops` returns the total. SimAM runs its eager kernels while profiling
(`simam_fused.eager_kernels`): nothing is compiled for the one forward pass.
"""
from __future__ import annotations

import copy
import warnings
from typing import Callable, Sequence

import torch
from torch import nn

from .attention import CBAM, ECA, SRM, GCBlock, SimAM, SqueezeExcite, simam_fused
from .attention.cbam import ChannelGate, SpatialGate

__all__ = ["ATTENTION_OP_RULES", "count_params_flops", "profile_model"]


def _simam(m: nn.Module, y: torch.Tensor) -> int:
    return 8 * y.numel()


def _se(m: nn.Module, y: torch.Tensor) -> int:  # sigmoid on B*C, gate multiply
    return y.numel() + y.shape[0] * y.shape[1]


def _channel_gate(m: nn.Module, y: torch.Tensor) -> int:  # two pools, sum + sigmoid, multiply
    return 3 * y.numel() + 2 * y.shape[0] * y.shape[1]


def _spatial_gate(m: nn.Module, y: torch.Tensor) -> int:  # max + mean over C, sigmoid, multiply
    return 3 * y.numel() + y.shape[0] * y.shape[2] * y.shape[3]


def _eca(m: nn.Module, y: torch.Tensor) -> int:  # pool, sigmoid, multiply (the conv1d is thop's)
    return 2 * y.numel() + y.shape[0] * y.shape[1]


def _srm(m: nn.Module, y: torch.Tensor) -> int:  # mean, variance (2), multiply; cfc + sigmoid on B*C
    return 4 * y.numel() + 4 * y.shape[0] * y.shape[1]


def _gc(m: nn.Module, y: torch.Tensor) -> int:  # softmax (3/pos), context matmul (C*HW), add
    b, c, h, w = y.shape
    return b * (3 * h * w + c * h * w) + y.numel()


# elementwise work that thop does not see, added on top of thop's count (thop's rules still
# count the convs, linears and BN inside the modules)
ATTENTION_OP_RULES: dict[type, Callable[[nn.Module, torch.Tensor], int]] = {
    SimAM: _simam,
    SqueezeExcite: _se,
    ChannelGate: _channel_gate,
    SpatialGate: _spatial_gate,
    ECA: _eca,
    SRM: _srm,
    GCBlock: _gc,
}
_ = CBAM  # CBAM = ChannelGate + SpatialGate


def _thop(model: nn.Module, input_size: Sequence[int]) -> tuple[int, int, int]:
    """(thop MACs, attention MACs, params) from one forward pass of a deep copy."""
    import thop

    model = copy.deepcopy(model).eval()  # thop leaves total_ops/total_params buffers behind
    p = next(model.parameters(), None)
    x = torch.randn(*input_size, device=p.device if p is not None else "cpu")
    extra = [0]
    handles = [
        m.register_forward_hook(lambda mod, inp, out, rule=rule: extra.__setitem__(0, extra[0] + rule(mod, out)))
        for m in model.modules()
        for cls, rule in ATTENTION_OP_RULES.items()
        if type(m) is cls
    ]
    # eager SimAM kernels: one forward pass never repays compiling a kernel (seconds at an ImageNet
    # size on rank 0 while the other ranks wait), and a failing compiler must not mark compiling
    # unavailable for the training that follows
    with warnings.catch_warnings(), torch.no_grad(), simam_fused.eager_kernels():
        warnings.simplefilter("ignore")
        macs, _ = thop.profile(model, inputs=(x,), verbose=False)
    for h in handles:
        h.remove()
    params = sum(q.numel() for q in model.parameters())
    return int(round(float(macs))), int(extra[0]), params


def profile_model(model: nn.Module, input_size: Sequence[int]) -> dict[str, int]:
    """`params`, `macs` (thop + attention rules), `macs_thop` (thop's rules, as published), `macs_attention`."""
    macs_thop, extra, params = _thop(model, input_size)
    return {"params": params, "macs": macs_thop + extra, "macs_thop": macs_thop, "macs_attention": extra}


def count_params_flops(model: nn.Module, input_size: Sequence[int]) -> tuple[int, int]:
    """(parameters, MACs) of `model` for one input of `input_size`, e.g. (1, 3, 224, 224).

    Measured on a deep copy (the model is left untouched); MACs include the attention modules'
    own elementwise work (see the module docstring), which plain thop counts as zero.
    """
    info = profile_model(model, input_size)
    return info["params"], info["macs"]
