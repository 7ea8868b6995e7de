"""The epoch loop on the objects engine.build made: train, validate, select best, save; evaluate a
checkpoint; write weights. It never reads the config.

    fit(run, logger, stop) -> summary dict      (SystemExit(EXIT_PREEMPTED) after a stop signal)
    evaluate_checkpoint(run, logger) -> result  (eval.json + one line of evals.jsonl)
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import networks

from .build import Run
from .checkpoint import make_checkpoint, save_epoch_files
from .distributed import barrier
from .errors import UserError
from .files import append_line, json_line, write_json
from .logger import RunLogger
from .loops import NonFiniteLossError, evaluate, train_one_epoch
from .signals import EXIT_PREEMPTED, StopFlag
from .status import write_status

__all__ = ["evaluate_checkpoint", "fit", "write_weights"]


def _checkpoint(run: Run, batch: int = 0) -> dict:
    """The checkpoint of the current state (every rank joins: each rank's RNG state is gathered)."""
    from .checkpoint import capture_rng

    rngs = _gather(capture_rng())
    run.state.batch = batch
    return make_checkpoint(model=run.model, optimizer=run.optimizer, scheduler=run.scheduler, scaler=run.scaler, ema=run.ema,
                           state=run.state, config=run.config, rng_ranks=rngs)


def _gather(obj: Any) -> list:
    """[obj of rank 0, obj of rank 1, ...] (every rank calls it)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _train_epoch(run: Run, epoch: int, batch0: int, logger: RunLogger, stop: StopFlag) -> dict:
    o = run.opts
    run.train_loader.set_epoch(epoch)
    run.train_loader.sampler.set_start_batch(batch0)
    logger.start_epoch(epoch, o.epochs, run.steps_per_epoch, first=batch0,
                       run_steps_left=(o.epochs - epoch) * run.steps_per_epoch - batch0)
    ema = run.ema
    try:
        return train_one_epoch(
            run.train_model, run.train_loader, run.optimizer, run.criterion, device=run.info.device, scheduler=run.scheduler,
            global_step=run.state.step, scaler=run.scaler, amp_dtype=o.amp_dtype, channels_last=o.channels_last,
            mixup_fn=run.mixup_fn, ema_update=(lambda step: ema.update(run.model, step=step)) if ema else None,
            log_every=o.log_every, on_log=logger.step, skip_nonfinite=o.skip_nonfinite,
            max_steps=(run.steps_per_epoch - batch0) if o.max_steps_per_epoch else None, should_stop=stop, first_batch=batch0,
            **_loop_extras(run, logger),
        )
    except NonFiniteLossError as e:
        hint = f"last good checkpoint: {run.paths.last}" if run.paths.last.exists() else "no checkpoint yet"
        raise UserError(f"{e}; lower optim.lr or use trainer.skip_nonfinite=true; {hint}") from None
    finally:
        logger.end_epoch()


def _loop_extras(run: Run, logger: RunLogger) -> dict:
    """Keywords of the newer loop options, passed only when used (plain loops stay plain)."""
    o, extra = run.opts, {}
    if o.accum_steps > 1:
        extra["accum_steps"] = o.accum_steps
    if o.clip_grad is not None:
        extra.update(clip_grad=float(o.clip_grad), clip_mode=o.clip_mode)
    extra["on_step"] = logger.advance
    return extra


def _validate(run: Run, epoch: int, stats: dict, t0: float) -> dict:
    o, device = run.opts, run.info.device
    model = run.train_model if not run.info.distributed else run.model
    val = evaluate(model, run.val_loader, run.criterion_eval, device=device, amp_dtype=o.amp_dtype, channels_last=o.channels_last)
    record = {
        "epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"], "train_loss": stats["loss"], "train_acc1": stats["acc1"],
        "val_loss": val["loss"], "val_acc1": val["acc1"], "val_acc5": val["acc5"], "throughput": stats["throughput"],
        "epoch_time": time.perf_counter() - t0, "num_val": val["num_samples"],
    }
    if run.ema is not None:
        ema = evaluate(run.ema.module, run.val_loader, run.criterion_eval, device=device, amp_dtype=o.amp_dtype, channels_last=o.channels_last)
        record.update(ema_val_acc1=ema["acc1"], ema_val_acc5=ema["acc5"], ema_val_loss=ema["loss"])
    return record


def _update_best(run: Run, record: dict) -> bool:
    """best.pth follows val_acc1, or the EMA's with ema.select_best."""
    key = "ema_val_acc1" if run.opts.select_best_ema and "ema_val_acc1" in record else "val_acc1"
    st = run.state
    st.best_metric = key
    improved = record[key] > st.best_acc1
    if improved:
        st.best_acc1, st.best_epoch = record[key], record["epoch"]
    record["best_acc1"], record["best_metric"] = st.best_acc1, key
    return improved


def _preempted(run: Run, epoch: int, batch: int, logger: RunLogger, stop: StopFlag) -> None:
    ckpt = _checkpoint(run, batch)
    if run.info.is_main:
        save_epoch_files(run.paths, ckpt, improved=False, keep_last=0)
        write_status(run.paths.status, "preempted", epoch=epoch, exit_code=EXIT_PREEMPTED)
    barrier()
    logger.info(f"signal {stop.signum or 'on another rank'}: saved {run.paths.last} at epoch {epoch} batch {batch}; "
                f"exiting with code {EXIT_PREEMPTED}")
    logger.close()
    stop.restore()
    stop.forward()  # under submitit: requeue this job (its handler exits the process)
    raise SystemExit(EXIT_PREEMPTED)


def fit(run: Run, logger: RunLogger, stop: StopFlag) -> dict:
    """Train from run.state to opts.epochs; returns the summary."""
    o, st = run.opts, run.state
    start_epoch, start_batch = st.epoch, st.batch
    for epoch in range(start_epoch, o.epochs):
        batch0 = start_batch if epoch == start_epoch else 0
        t0 = time.perf_counter()
        stats = _train_epoch(run, epoch, batch0, logger, stop)
        st.step = stats["global_step"]
        _epoch_notes(run, stats, logger)
        if stats["interrupted"]:
            _preempted(run, epoch, batch0 + stats["steps"], logger, stop)
        record = _validate(run, epoch, stats, t0)
        improved = _update_best(run, record)
        st.epoch, st.metrics = epoch + 1, record
        logger.epoch(record)
        ckpt = _checkpoint(run)
        if run.info.is_main:
            save_epoch_files(run.paths, ckpt, improved=improved, keep_last=o.keep_last)
            write_status(run.paths.status, "running", epoch=epoch + 1)
        barrier()
        if o.stop_after_epochs and epoch + 1 - start_epoch >= int(o.stop_after_epochs) and epoch + 1 < o.epochs:
            logger.info(f"trainer.stop_after_epochs={o.stop_after_epochs}: stopping after epoch {epoch + 1}; "
                        f"resume with resume={run.paths.last}")
            break
    return {"best_acc1": st.best_acc1, "best_epoch": st.best_epoch, "best_metric": st.best_metric,
            "epoch": st.epoch, "epochs": o.epochs, "final": st.metrics, "run_dir": str(run.paths.root)}


def _epoch_notes(run: Run, stats: dict, logger: RunLogger) -> None:
    bad = getattr(getattr(run.train_loader, "dataset", None), "num_skipped", 0)
    if bad:
        logger.info(f"skipped {bad} unreadable training images so far (data.bad_images=skip)")
    if stats.get("skipped"):
        logger.info(f"skipped {stats['skipped']} steps with a non-finite loss")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def evaluate_checkpoint(run: Run, logger: RunLogger) -> dict:
    """Evaluate the loaded checkpoint; rank 0 writes eval.json and appends a line to evals.jsonl."""
    o = run.opts
    t0 = time.perf_counter()
    result = evaluate(run.model, run.val_loader, run.criterion_eval, device=run.info.device, amp_dtype=o.amp_dtype,
                      channels_last=o.channels_last)
    ckpt, path = run.checkpoint, Path(run.plan.checkpoint)
    out = {**result, "checkpoint": str(path.resolve()), "sha256": _sha256(path),
           "epoch": int(ckpt["epoch"]) if isinstance(ckpt, dict) and isinstance(ckpt.get("epoch"), (int, float)) else None,
           "weights": "ema" if o.evaluate_ema else "model", "time": round(time.perf_counter() - t0, 3),
           "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if run.info.is_main:
        write_json(run.paths.eval_json, out)
        append_line(run.paths.evals, json_line(out))
        logger.info(f"eval {path}: acc1 {result['acc1']:.3f} acc5 {result['acc5']:.3f} loss {result['loss']:.4f} "
                    f"on {result['num_samples']} images ({out['weights']} weights)")
    return out


def write_weights(run: Run, path: str, logger: RunLogger, backbone_only: bool = False) -> None:
    """save_weights / export_backbone: the model's weights in opts.weights_format (rank 0)."""
    if not run.info.is_main:
        return
    try:
        networks.save_weights(run.model, path, format=run.opts.weights_format, backbone_only=backbone_only)
    except (ValueError, OSError, RuntimeError) as e:
        raise UserError(f"cannot write weights to {path}: {str(e).splitlines()[0]}") from None
    logger.info(f"wrote {'backbone ' if backbone_only else ''}weights ({run.opts.weights_format} layout) to {path}")

