"""The training and evaluation loops. They return dicts of metrics and never read the config.

Per-step work stays on the device: losses and correct counts accumulate as tensors and are read
(`.item()`, a host sync) only at logging steps and at the end of the epoch; no tensor is made
from a Python number per step or per evaluated batch (on CUDA that is a blocking copy). Counts
are summed over ranks, so metrics are those of the whole (global) batch / dataset.

The trainer's loaders (engine.data.DevicePrefetcher) already yield normalised float32 batches
on the device, channels-last when asked, the next one copied while this step computes; the
`.to(device)` / `.contiguous(channels_last)` below are then no-ops, kept for plain loaders.

Gradient accumulation (`accum_steps=N`): one optimizer update every N batches, each batch's loss
divided by N; under DDP the inner batches run in `no_sync()`, so gradients are all-reduced once
per update. The schedule, `global_step`, the EMA and `should_stop` count updates (a stop happens
only between updates, so a resumed epoch continues at a window boundary). The last window of an
epoch (or of `max_steps`) may be partial, k < N batches: its update uses the mean over those k
batches (gradients x N/k), as timm's train.py does; no batch is carried into the next epoch.

Options of train_one_epoch: after every update the scheduler gets `step_update(num_updates=global_step)`; `global_step`
counts updates (dropped ones too, so the schedule stays where the data are). `skip_nonfinite`:
a window whose loss is not finite on any rank is dropped on every rank (the decision is an
all-reduce MIN, a host sync per batch in this mode only); otherwise a non-finite loss raises
NonFiniteLossError at the next logging step. `clip_grad` clips the gradient norm (`clip_mode=
"norm"`) or each value ("value"), after unscaling under a GradScaler. `on_step(info)` after
every batch (no host sync: step, global_step, images), `on_log(info)` every `log_every`
batches (also loss, lr, images_per_s); images are this rank's count x world size.
`first_batch` only numbers the progress reports (an epoch resumed in its middle).
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from torch import nn

from .distributed import all_reduce_min, all_reduce_sum, world_size

__all__ = ["CLIP_MODES", "NonFiniteLossError", "autocast", "evaluate", "train_one_epoch"]

CLIP_MODES = ("norm", "value")


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


def _batches(loader: Iterable, accum_steps: int, max_steps: Optional[int]) -> Iterator[tuple[Any, bool]]:
    """(batch, last) pairs; `last` marks the epoch's (or `max_steps`') final batch.

    Only accumulation needs to know it in advance (the last window may be partial, and under DDP
    its last batch must all-reduce): one batch is then read ahead.
    """
    it = iter(loader)
    count = 0
    batch = next(it, None)
    while batch is not None:
        count += 1
        if max_steps is not None and count >= max_steps:
            yield batch, True
            return
        upcoming = next(it, None) if accum_steps > 1 else None
        yield batch, accum_steps > 1 and upcoming is None
        batch = upcoming if accum_steps > 1 else next(it, None)


class _Window:
    """One accumulation window: backward of each batch, then one clipped optimizer update."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Optional[torch.amp.GradScaler],
                 accum_steps: int, clip_grad: Optional[float], clip_mode: str) -> None:
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.accum_steps, self.clip_grad, self.clip_mode = accum_steps, clip_grad, clip_mode
        self.batches, self.dropped = 0, False

    def sync_context(self, ends_window: bool) -> contextlib.AbstractContextManager:
        """DDP's `no_sync()` (around forward and backward) on every batch but a window's last."""
        if ends_window or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def backward(self, loss: torch.Tensor, finite: bool) -> None:
        """Accumulate this batch's gradient, unless the window was dropped (a non-finite loss)."""
        if self.batches == 0:
            self.optimizer.zero_grad(set_to_none=True)
        self.batches += 1
        self.dropped = self.dropped or not finite
        if self.dropped:
            return
        if self.accum_steps > 1:
            loss = loss / self.accum_steps
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def update(self) -> bool:
        """End the window: the optimizer step (False: the window was dropped, no step)."""
        batches, dropped = self.batches, self.dropped
        self.batches, self.dropped = 0, False
        if dropped:
            self.optimizer.zero_grad(set_to_none=True)
            return False
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if batches < self.accum_steps:  # a partial last window: the mean over its batches
            for p in params:
                p.grad.mul_(self.accum_steps / batches)
        if self.clip_grad is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            if self.clip_mode == "norm":
                nn.utils.clip_grad_norm_(params, self.clip_grad)
            else:
                nn.utils.clip_grad_value_(params, self.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return True


_NONE_BAD = 2**62


class _Meters:
    """Device sums of the epoch (loss, correct, samples) and the first batch whose loss was not finite."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum, self.correct, self.seen = (torch.zeros((), device=device, dtype=torch.float64) for _ in range(3))
        self.batch = torch.zeros((), device=device, dtype=torch.long)  # counts on the device: no copy per step
        self.first_bad = torch.full((), _NONE_BAD, device=device, dtype=torch.long)
        self.images = 0  # this rank's, on the host (batch shapes are known there)

    def add(self, loss: torch.Tensor, output: torch.Tensor, targets: torch.Tensor, finite: torch.Tensor, track: bool) -> None:
        n = targets.shape[0]
        if track:
            self.first_bad = torch.where((self.first_bad == _NONE_BAD) & ~finite, self.batch, self.first_bad)
        self.batch += 1
        self.loss_sum.add_(loss.detach().double() * n)
        self.correct.add_(_correct(output.detach(), targets, (1,))[0])
        self.seen.add_(n)
        self.images += n

    def raise_if_bad(self, first_step: int, accum_steps: int, optimizer: torch.optim.Optimizer) -> None:
        """Raise on every rank if any rank saw a non-finite loss (one rank alone would leave the others
        waiting in the next collective); called at the same steps on every rank."""
        bad = int(all_reduce_min(self.first_bad.clone()).item())
        if bad != _NONE_BAD:
            raise NonFiniteLossError(first_step + bad // accum_steps, optimizer.param_groups[0]["lr"])


def _check_options(accum_steps: int, clip_grad: Optional[float], clip_mode: str) -> None:
    if int(accum_steps) < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
    if clip_mode not in CLIP_MODES:
        raise ValueError(f"unknown clip_mode {clip_mode!r}; valid: {', '.join(CLIP_MODES)}")
    if clip_grad is not None and not clip_grad > 0:
        raise ValueError(f"clip_grad must be > 0 (or None: off), got {clip_grad}")


class _Forward:
    """One batch: to the device, mixup, forward under autocast, loss, backward into the window."""

    def __init__(self, model: nn.Module, criterion: nn.Module, device: torch.device, amp_dtype: Optional[torch.dtype],
                 channels_last: bool, mixup_fn: Optional[Callable], skip_nonfinite: bool) -> None:
        self.model, self.criterion, self.device, self.amp_dtype = model, criterion, device, amp_dtype
        self.channels_last, self.mixup_fn, self.skip_nonfinite = channels_last, mixup_fn, skip_nonfinite

    def __call__(self, batch: Any, window: "_Window", meters: "_Meters", ends_window: bool) -> torch.Tensor:
        images, targets = _to_device(batch[0], batch[1], self.device, self.channels_last)
        hard_targets = targets
        if self.mixup_fn is not None:
            images, targets = self.mixup_fn(images, targets)
        with window.sync_context(ends_window):
            with autocast(self.device, self.amp_dtype):
                output = self.model(images)
                loss = self.criterion(output, targets)
            finite = torch.isfinite(loss.detach())
            ok = bool(all_reduce_min(finite.float())) if self.skip_nonfinite else True
            window.backward(loss, ok)
        if ok:
            meters.add(loss, output, hard_targets, finite, track=not self.skip_nonfinite)
        return loss


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
    amp_dtype: Optional[torch.dtype] = None, channels_last: bool = False,
    mixup_fn: Optional[Callable] = None,
    ema_update: Optional[Callable[[int], None]] = None,
    log_every: int = 50, on_log: Optional[Callable[[dict], None]] = None,
    skip_nonfinite: bool = False,
    max_steps: Optional[int] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    first_batch: int = 0,
    accum_steps: int = 1, clip_grad: Optional[float] = None, clip_mode: str = "norm",
    on_step: Optional[Callable[[dict], None]] = None,
) -> dict[str, Any]:
    """One pass over `loader` (at most `max_steps` batches), an update every `accum_steps` batches;
    see the module docstring for the options. Returns loss/acc1 (percent) over all ranks' samples,
    images, steps (batches), updates, throughput (images/s over all ranks), the new global_step,
    skipped (dropped updates), and `interrupted` when `should_stop()` ended the epoch early."""
    _check_options(accum_steps, clip_grad, clip_mode)
    model.train()
    meters, window = _Meters(device), _Window(model, optimizer, scaler, int(accum_steps), clip_grad, clip_mode)
    fwd = _Forward(model, criterion, device, amp_dtype, channels_last, mixup_fn, skip_nonfinite)
    world, first_step = world_size(), global_step
    steps = updates = skipped = 0
    interrupted = False
    t0 = time.perf_counter()
    for batch, last in _batches(loader, int(accum_steps), max_steps):
        ends_window = last or window.batches + 1 == accum_steps
        loss = fwd(batch, window, meters, ends_window)
        steps += 1
        if ends_window:
            if window.update():
                updates += 1
                if ema_update is not None:
                    ema_update(global_step)
            else:
                skipped += 1
            global_step += 1
            if scheduler is not None:
                scheduler.step_update(num_updates=global_step)
        info = {"step": first_batch + steps, "global_step": global_step, "images": meters.images * world}
        if on_step is not None:
            on_step(info)
        if log_every > 0 and steps % log_every == 0:
            meters.raise_if_bad(first_step, accum_steps, optimizer)
            if on_log is not None:
                on_log({**info, "loss": loss.item(), "lr": optimizer.param_groups[0]["lr"],
                        "images_per_s": info["images"] / max(time.perf_counter() - t0, 1e-9)})
        if ends_window and should_stop is not None and should_stop():
            interrupted = True
            break
    return _epoch_result(meters, first_step, accum_steps, optimizer, device, t0,
                         steps=steps, updates=updates, global_step=global_step, skipped=skipped, interrupted=interrupted)


def _epoch_result(meters: _Meters, first_step: int, accum_steps: int, optimizer: torch.optim.Optimizer,
                  device: torch.device, t0: float, **counts: Any) -> dict[str, Any]:
    meters.raise_if_bad(first_step, accum_steps, optimizer)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    totals = all_reduce_sum(torch.stack([meters.loss_sum, meters.correct, meters.seen]))
    loss_total, correct_total, seen_total = (float(v) for v in totals.tolist())
    return {
        "loss": loss_total / max(seen_total, 1),
        "acc1": 100.0 * correct_total / max(seen_total, 1),
        "images": int(seen_total),
        "time": elapsed,
        "throughput": seen_total / max(elapsed, 1e-9),
        **counts,
    }


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
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss, top1, top5
    n = 0  # on the host: batch sizes are known there
    for images, targets in loader:
        images, targets = _to_device(images, targets, device, channels_last)
        with autocast(device, amp_dtype):
            output = model(images)
        loss = criterion(output.float(), targets)
        c1, c5 = _correct(output, targets, (1, 5))
        sums += torch.stack([loss.double() * targets.shape[0], c1.double(), c5.double()])
        n += targets.shape[0]
    totals = all_reduce_sum(torch.cat([sums, sums.new_full((1,), float(n))]))
    loss_sum, c1, c5, count = totals.tolist()
    return {"loss": loss_sum / max(count, 1), "acc1": 100.0 * c1 / max(count, 1), "acc5": 100.0 * c5 / max(count, 1),
            "num_samples": int(count)}
