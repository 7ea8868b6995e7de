"""The training and evaluation loops. They return dicts of metrics and never read the config.

Per-step work stays on the device: losses and correct counts accumulate as tensors and are read
(`.item()`, a host sync) only at logging steps and at the end of the epoch. Counts are summed
over ranks, so metrics are those of the whole (global) batch / dataset.

The runner's loaders (engine.prefetch.DevicePrefetcher) already yield normalised float32 batches
on the device, channels-last when asked, the next one copied while this step computes; the
`.to(device)` / `.contiguous(channels_last)` below are then no-ops, kept for plain loaders.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from .distributed import all_reduce_sum

__all__ = ["NonFiniteLossError", "autocast", "evaluate", "train_one_epoch"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int, lr: float) -> None:
        super().__init__(f"non-finite loss at step {step} (lr {lr:.6g})")
        self.step, self.lr = step, lr


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    """torch.autocast for `amp_dtype`, or a no-op."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _to_device(images: torch.Tensor, targets: torch.Tensor, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=True)


def _correct(output: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> list[torch.Tensor]:
    """Number of samples whose target is among the top-k predictions, for each k (device tensors)."""
    maxk = min(max(ks), output.shape[1])
    pred = output.topk(maxk, dim=1).indices
    hit = pred.eq(target[:, None])
    return [hit[:, : min(k, maxk)].any(dim=1).sum() for k in ks]


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    *,
    device: torch.device,
    scheduler: Any = None,
    global_step: int = 0,
    scaler: Optional[torch.amp.GradScaler] = None,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    mixup_fn: Optional[Callable] = None,
    ema_update: Optional[Callable[[int], None]] = None,
    log_every: int = 50,
    on_log: Optional[Callable[[dict], None]] = None,
    skip_nonfinite: bool = False,
    max_steps: Optional[int] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    first_batch: int = 0,
) -> dict[str, Any]:
    """One pass over `loader`; the scheduler is stepped after every update (`step_update`).

    `first_batch` only numbers the progress reports (an epoch resumed in its middle).
    Returns loss/acc1 (percent) averaged over all ranks' samples, images, steps, throughput
    (training images/s over all ranks), the new global_step, skipped steps, and `interrupted`
    when `should_stop()` ended the epoch early (after completing a step).
    """
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.float64)
    seen = torch.zeros((), device=device, dtype=torch.float64)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    skipped, steps, interrupted = 0, 0, False
    t0 = time.perf_counter()
    for images, targets in loader:
        images, targets = _to_device(images, targets, device, channels_last)
        hard_targets = targets
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        with autocast(device, amp_dtype):
            output = model(images)
            loss = criterion(output, targets)
        finite = torch.isfinite(loss.detach())
        if skip_nonfinite and not bool(finite):  # a host sync per step, only in this mode
            optimizer.zero_grad(set_to_none=True)
            skipped += 1
        else:
            first_bad = torch.where((first_bad < 0) & ~finite, torch.as_tensor(global_step, device=device), first_bad)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if ema_update is not None:
                ema_update(global_step)
        global_step += 1
        steps += 1
        if scheduler is not None:
            scheduler.step_update(num_updates=global_step)
        n = hard_targets.shape[0]
        loss_sum += loss.detach().double() * n
        correct += _correct(output.detach(), hard_targets, (1,))[0]
        seen += n
        at_log = log_every > 0 and steps % log_every == 0
        if at_log or (max_steps is not None and steps >= max_steps):
            _raise_if_bad(first_bad, optimizer)
        if at_log and on_log is not None:
            elapsed = time.perf_counter() - t0
            on_log({
                "step": first_batch + steps, "global_step": global_step, "loss": loss.item(),
                "lr": optimizer.param_groups[0]["lr"], "images_per_s": seen.item() / max(elapsed, 1e-9),
            })
        if max_steps is not None and steps >= max_steps:
            break
        if should_stop is not None and should_stop():
            interrupted = True
            break
    _raise_if_bad(first_bad, optimizer)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    totals = all_reduce_sum(torch.stack([loss_sum, correct, seen]))
    loss_total, correct_total, seen_total = (float(v) for v in totals.tolist())
    return {
        "loss": loss_total / max(seen_total, 1),
        "acc1": 100.0 * correct_total / max(seen_total, 1),
        "images": int(seen_total),
        "steps": steps,
        "time": elapsed,
        "throughput": seen_total / max(elapsed, 1e-9),
        "global_step": global_step,
        "skipped": skipped,
        "interrupted": interrupted,
    }


def _raise_if_bad(first_bad: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    step = int(first_bad.item())
    if step >= 0:
        raise NonFiniteLossError(step, optimizer.param_groups[0]["lr"])


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    criterion: nn.Module,
    *,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Loss, top-1 and top-5 accuracy (percent) over every sample of every rank's shard, once each."""
    model.eval()
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top1, top5, n
    for images, targets in loader:
        images, targets = _to_device(images, targets, device, channels_last)
        with autocast(device, amp_dtype):
            output = model(images)
        loss = criterion(output.float(), targets)
        c1, c5 = _correct(output, targets, (1, 5))
        n = targets.shape[0]
        sums += torch.stack([loss.double() * n, c1.double(), c5.double(), torch.as_tensor(n, device=device, dtype=torch.float64)])
    loss_sum, c1, c5, n = all_reduce_sum(sums).tolist()
    return {"loss": loss_sum / max(n, 1), "acc1": 100.0 * c1 / max(n, 1), "acc5": 100.0 * c5 / max(n, 1), "num_samples": int(n)}
