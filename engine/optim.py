"""Optimizers, lr scaling by batch size, and the per-update lr schedules. Plain arguments only.

The schedules are pure functions of the number of optimizer updates done (`lr_at(u)` is the lr
of update u, counted from 0), applied after every update with `step_update(num_updates=u)`:

- step: lr x gamma at each milestone epoch `m`, from update `m * steps_per_epoch` on, with or
  without warmup. timm's MultiStepLRScheduler shifts its milestones by the warmup when
  `warmup_prefix=True` (the CIFAR ResNet-110 recipe then drops at epochs 83/124, not 82/123), and
  timm 1.0.31 applies milestone m at update m - 1 (measured: decay_t=[10] gives the lower lr from
  `step_update(num_updates=9)` on); here a warmup only replaces the lr of its first updates and
  never moves a milestone.
- cosine: after the warmup, from the base lr down to `min_lr` over the remaining updates of the
  run (as timm's CosineLRScheduler with `warmup_prefix=True`); every update of the run gets an
  lr above `min_lr`, which it reaches only once the run is over.

Warmup: linear per update from `warmup_lr_init` to the base lr over `round(warmup_epochs *
steps_per_epoch)` updates (timm's formula). Nothing is stored in a checkpoint: the schedule is
rebuilt from the recipe and set with `step_update(num_updates=global_step)` on resume, so a run
extended with more epochs, or resumed with another lr, follows its new recipe (PITFALLS:
a restored scheduler state brings back the old length).
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Optional, Sequence

import torch
from torch import nn

__all__ = ["LRSchedule", "build_optimizer", "build_scheduler", "scaled_lr"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step")


def _param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> Any:
    if not no_decay_norm_bias or not weight_decay:
        return [p for p in model.parameters() if p.requires_grad]
    from timm.optim import param_groups_weight_decay  # 1-D tensors (norm weights, biases) and *.bias

    return [g for g in param_groups_weight_decay(model, weight_decay) if g["params"]]


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    betas: Sequence[float] = (0.9, 0.999),
    no_decay_norm_bias: bool = False,
) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW over the trainable parameters of `model`.

    Weight decay applies to all of them (the paper's setting) unless `no_decay_norm_bias`: then
    norm weights and biases (every 1-D parameter and every `*.bias`) get none, as in timm and
    torchvision's recipes (timm.optim.param_groups_weight_decay).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    if not lr > 0:
        raise ValueError(f"the learning rate must be > 0, got {lr}")
    params = _param_groups(model, float(weight_decay), no_decay_norm_bias)
    fused = _fused(model)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=bool(nesterov), fused=fused)
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=(float(betas[0]), float(betas[1])), weight_decay=weight_decay, fused=fused)


def _fused(model: nn.Module) -> Optional[bool]:
    """torch's fused kernels when every parameter is a float tensor on the CPU or a GPU (SGD's
    update 2.3x faster on CPU, measured for ResNet-18 in benchmarks/README.md); None: torch's default."""
    kinds = {(p.device.type, p.dtype) for p in model.parameters() if p.requires_grad}
    if kinds and all(d in ("cpu", "cuda") and dt in (torch.float32, torch.float16, torch.bfloat16, torch.float64) for d, dt in kinds):
        return True
    return None


def scaled_lr(lr_base: float, lr_base_size: int, global_batch: int, scale: str = "linear") -> float:
    """The lr for `global_batch` images per update, given `lr_base` for `lr_base_size` images.

    linear: lr_base * global_batch / lr_base_size (Goyal et al. 2017); sqrt: lr_base *
    sqrt(global_batch / lr_base_size) (timm's choice for adaptive optimizers). With gradient
    accumulation the global batch is batch_size * accum_steps.
    """
    if not lr_base > 0 or lr_base_size < 1 or global_batch < 1:
        raise ValueError(f"lr scaling needs lr_base > 0 and sizes >= 1, got {lr_base}, {lr_base_size}, {global_batch}")
    ratio = global_batch / lr_base_size
    if scale == "linear":
        return lr_base * ratio
    if scale == "sqrt":
        return lr_base * math.sqrt(ratio)
    raise ValueError(f"unknown lr scaling {scale!r}; valid: linear, sqrt")


class LRSchedule:
    """Sets every param group's lr to `lr_at(num_updates)` scaled to the group's base lr.

    The base lrs are those of the optimizer when the schedule is built (the recipe's), so an
    optimizer state loaded afterwards cannot bring back an older run's lr. `state_dict` is empty
    and `load_state_dict` ignores what it is given (a timm scheduler's state of older checkpoints).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, name: str, total: int, warmup: int, warmup_lr_init: float,
                 milestones: Sequence[int] = (), gamma: float = 0.1, min_lr: float = 0.0) -> None:
        self.optimizer, self.name, self.total, self.warmup = optimizer, name, int(total), int(warmup)
        self.warmup_lr_init, self.milestones, self.gamma, self.min_lr = float(warmup_lr_init), sorted(milestones), float(gamma), float(min_lr)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.step_update(0)

    def lr_at(self, num_updates: int, base_lr: float | None = None) -> float:
        """The lr of update `num_updates` (counted from 0) for a group whose base lr is `base_lr`."""
        base = self.base_lrs[0] if base_lr is None else base_lr
        u = int(num_updates)
        if u < self.warmup:
            return self.warmup_lr_init + (base - self.warmup_lr_init) * u / self.warmup
        if self.name == "step":
            return base * self.gamma ** bisect.bisect_right(self.milestones, u)
        span = max(self.total - self.warmup, 1)
        if u >= self.total:
            return self.min_lr
        return self.min_lr + 0.5 * (base - self.min_lr) * (1 + math.cos(math.pi * (u - self.warmup) / span))

    def step_update(self, num_updates: int, metric: Any = None) -> None:
        """After `num_updates` updates: set the lr of the next one (timm's per-update interface)."""
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(num_updates, base)

    def step(self, epoch: int, metric: Any = None) -> None:
        """Per-epoch stepping is not used: the lr changes per update."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: call `step_update(num_updates=global_step)` after resuming."""


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    steps_per_epoch: int,
    epochs: int,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    min_lr: float = 0.0,
    warmup_epochs: float = 0.0,
    warmup_lr_init: float = 0.0,
) -> LRSchedule:
    """The run's lr schedule, per optimizer update; `steps_per_epoch` counts updates (with
    gradient accumulation: ceil(batches per epoch / accum_steps)), `milestones` are epochs."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(f"steps_per_epoch and epochs must be >= 1, got {steps_per_epoch}, {epochs}")
    warmup = int(round(float(warmup_epochs) * steps_per_epoch))
    return LRSchedule(optimizer, name, total=epochs * steps_per_epoch, warmup=warmup, warmup_lr_init=warmup_lr_init,
                      milestones=[int(m) * steps_per_epoch for m in milestones], gamma=gamma, min_lr=min_lr)
