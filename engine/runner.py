"""The processes of a run, and the moment a run is committed to its directory.

    run(cfg) -> plan the start (engine.contract: refusals write nothing)
             -> trainer.devices processes (or the torchrun ones) -> execute(plain) in each
    execute  -> build (engine.build) -> evaluate | write weights | commit, then fit (engine.fit)

Nothing is written into the run directory before the data sets, the model and the checkpoint
have been built and loaded: then rank 0 removes stale temp files, writes .hydra/config.yaml and
overrides.yaml, opens <job>.log (with the lines logged so far), trims metrics.jsonl to the
checkpoint's epoch and marks status.json "running". A failure after that is recorded there.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from .build import Run, build_run, check_batch_split
from .contract import StartPlan, plan_start, read_meta
from .errors import EXIT_USER_ERROR, UserError
from .files import remove_stale_temps, write_json, write_text
from .logger import LOG, RunLogger, get_logger, setup_logging
from .signals import EXIT_PREEMPTED, StopFlag
from .status import write_status

__all__ = ["EXIT_PREEMPTED", "execute", "run"]


def _plan(plain: dict) -> StartPlan:
    trust = bool(plain.get("trust_checkpoint"))
    return plan_start(plain, Path(plain["run_dir"]), lambda p: read_meta(p, trust=trust))


def run(cfg: DictConfig, job: str = "main", overrides: Optional[list] = None) -> dict:
    """Start `trainer.devices` processes on this node (unless torchrun already did) and run."""
    plain: dict = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]  # resolved once: ranks share run_dir
    plan = _plan(plain)
    if plan.finished:
        return _already_finished(plain, plan)
    devices = int(plain["trainer"]["devices"])
    if "WORLD_SIZE" in os.environ or devices <= 1:
        return execute(plain, job, overrides or [], plan)
    return _spawn(plain, devices, job, overrides or [], plan)


def _already_finished(plain: dict, plan: StartPlan) -> dict:
    epochs = plain["trainer"]["epochs"]
    get_logger().info(f"{plan.checkpoint} finished all {epochs} epochs: nothing to train (extend it with trainer.epochs=N "
                      f"larger than {epochs}, or evaluate it with evaluate=true)")
    summary = Path(plain["run_dir"]) / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else {}


def _spawn(plain: dict, devices: int, job: str, overrides: list, plan: StartPlan) -> dict:
    import torch

    from .distributed import SpawnError, spawn

    if plain["trainer"]["accelerator"] != "cpu" and torch.cuda.is_available() and devices > torch.cuda.device_count():
        raise UserError(f"trainer.devices={devices} but this machine has {torch.cuda.device_count()} GPUs")
    check_batch_split(plain["data"], devices)  # here too: one message, not one per process
    try:
        spawn(execute, devices, args=(plain, job, overrides, plan))
    except SpawnError as e:
        _spawn_failed(e, plain)
    summary = Path(plain["run_dir"]) / "summary.json"
    return json.loads(summary.read_text()) if summary.exists() else {}


def _spawn_failed(e: Any, plain: dict) -> None:
    """One line for a failed `trainer.devices` run; the same exit codes as one process."""
    last = Path(plain["run_dir"]) / "checkpoints" / "last.pth"
    if e.exit_code == EXIT_USER_ERROR and str(e):
        print(f"error: {e}", file=sys.stderr, flush=True)
    elif e.exit_code not in (EXIT_USER_ERROR, EXIT_PREEMPTED):
        hint = f"resume with resume={last}" if last.exists() else "no checkpoint was written yet"
        print(f"error: {e}; {hint}", file=sys.stderr, flush=True)
        if e.detail and Path(plain["run_dir"]).is_dir():
            get_logger().debug(e.detail)
    if e.signum is not None:  # under submitit: its SIGUSR2 handler requeues the job (and exits)
        handler = signal.getsignal(e.signum)
        if callable(handler) and handler is not signal.default_int_handler:
            handler(e.signum, None)
    raise SystemExit(e.exit_code) from None


class _Pending(logging.Handler):
    """Holds the log records of a run until it is committed to its directory."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def execute(plain: dict, job: str = "main", overrides: Optional[list] = None, plan: Optional[StartPlan] = None) -> dict:
    """One rank of the run: train, evaluate or write weights (`plan`: run()'s decision, else made here)."""
    from .distributed import cleanup, init_distributed

    t = plain["trainer"]
    info = init_distributed(t["accelerator"], t.get("dist_backend", "auto"), float(t["dist_timeout"]))
    setup_logging(None, enabled=info.is_main)
    pending = _Pending()
    LOG.addHandler(pending)
    try:
        return _execute(plain, info, job, overrides or [], pending, plan or _plan(plain))
    finally:
        LOG.removeHandler(pending)
        cleanup()


def _execute(plain: dict, info: Any, job: str, overrides: list, pending: _Pending, plan: StartPlan) -> dict:
    from .fit import evaluate_checkpoint, write_weights

    run = build_run(plain, info, plan)
    for note in run.notes:
        get_logger().info(note)
    if run.plan.kind == "evaluate":
        logger = RunLogger(None, enabled=info.is_main, progress="none")
        return evaluate_checkpoint(run, logger)
    if run.plan.kind == "weights":  # the original --save_weights: load, write, exit without training
        write_weights(run, run.opts.save_weights, RunLogger(None, enabled=False))
        return {"save_weights": run.opts.save_weights}
    if info.is_main:
        _commit(run, job, overrides, pending)
    LOG.removeHandler(pending)
    return _train(run, job)


def _commit(run: Run, job: str, overrides: list, pending: _Pending) -> None:
    """Rank 0 takes the run directory: only now does anything get written there."""
    from omegaconf import OmegaConf

    paths = run.paths
    paths.root.mkdir(parents=True, exist_ok=True)
    for folder in (paths.root, paths.checkpoints, paths.root / ".hydra"):
        remove_stale_temps(folder)
    write_text(paths.config_snapshot, OmegaConf.to_yaml(OmegaConf.create(run.config)))
    write_text(paths.overrides_snapshot, OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    setup_logging(paths.log(job), enabled=True)
    for handler in [h for h in LOG.handlers if isinstance(h, logging.FileHandler)]:
        for record in pending.records:
            handler.handle(record)
    _trim_metrics(paths.metrics, run.state.epoch)
    write_status(paths.status, "running", epoch=run.state.epoch)


def _trim_metrics(path: Path, epoch: int) -> None:
    """metrics.jsonl continues from the checkpoint's epoch: lines of later epochs (written before a
    kill, after the checkpoint) are dropped, so no epoch appears twice."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            if int(json.loads(line).get("epoch", 0)) > epoch:
                continue
        except (ValueError, AttributeError, TypeError):
            pass
        kept.append(line)
    write_text(path, "".join(l + "\n" for l in kept))


def _train(run: Run, job: str) -> dict:
    from .fit import fit, write_weights

    o, paths = run.opts, run.paths
    resume_at = (run.state.epoch, run.state.step) if run.plan.kind == "resume" else None
    logger = RunLogger(paths.root, enabled=run.info.is_main, progress=o.progress, progress_every_s=o.progress_every_s,
                       resume_at=resume_at)
    stop = StopFlag(run.info, every=o.log_every)
    stop.install()
    try:
        summary = fit(run, logger, stop)
        if o.export_backbone:
            write_weights(run, o.export_backbone, logger, backbone_only=True)
    except SystemExit as e:
        if e.code != EXIT_PREEMPTED:
            _record_failure(run, f"exit {e.code}", e.code)
        raise
    except UserError as e:
        _record_failure(run, str(e), EXIT_USER_ERROR)
        raise
    except BaseException as e:
        _record_failure(run, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", 1)
        raise
    finally:
        stop.restore()
    if run.info.is_main:
        write_json(paths.summary, summary)
        done = summary["epoch"] >= o.epochs
        write_status(paths.status, "done" if done else "preempted", epoch=summary["epoch"], exit_code=0)
        logger.info(f"{'done' if done else 'stopped'}: best {summary['best_metric']} {summary['best_acc1']:.2f} "
                    f"at epoch {summary['best_epoch']}; run dir {paths.root}")
    logger.close()
    return summary


def _record_failure(run: Run, message: str, code: Any) -> None:
    """status.json "failed" and the one-line error in the run's log file (rank 0)."""
    if not run.info.is_main:
        return
    for handler in [h for h in LOG.handlers if isinstance(h, logging.FileHandler)]:
        handler.handle(LOG.makeRecord(LOG.name, logging.ERROR, __file__, 0, f"error: {message}", None, None))
    try:
        write_status(run.paths.status, "failed", epoch=run.state.epoch, error=message, exit_code=code if isinstance(code, int) else 1)
    except UserError:
        pass
