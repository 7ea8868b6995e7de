"""The runner: the only code that reads the whole config. It turns it into plain arguments for
`networks`, `engine.data` and `engine.loops`, and owns the DDP steps in plain view.

    run(cfg) -> trainer.devices processes (or the torchrun ones) -> train_or_evaluate(cfg)
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import networks
from networks.weights import WeightsError

from . import data as data_lib
from .checkpoint import capture_rng, load_checkpoint, prune_checkpoints, restore_rng, save_atomic
from .signals import EXIT_PREEMPTED, StopFlag
from .distributed import DistInfo, barrier, cleanup, convert_sync_batchnorm, init_distributed, spawn
from .errors import EXIT_USER_ERROR, UserError
from .logger import RunLogger, get_logger
from .loops import NonFiniteLossError, evaluate, train_one_epoch

__all__ = ["EXIT_PREEMPTED", "run", "train_or_evaluate"]

_AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_OPTIMIZERS = {
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=bool(c.nesterov)),
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay),
}


def _choice(table: dict, key: str, what: str) -> Any:
    if key not in table:
        raise UserError(f"unknown {what} {key!r}; valid: {', '.join(sorted(table))}")
    return table[key]


def run(cfg: DictConfig) -> dict:
    """Start `trainer.devices` processes on this node (unless torchrun already did) and run."""
    plain = OmegaConf.to_container(cfg, resolve=True)  # resolved once: ranks share run_dir
    if not plain.get("evaluate") and int(os.environ.get("RANK", "0")) == 0:  # stopgap: the run contract writes this
        snap = Path(plain["run_dir"]) / ".hydra"
        snap.mkdir(parents=True, exist_ok=True)
        (snap / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    devices = int(cfg.trainer.devices)
    if "WORLD_SIZE" in os.environ or devices <= 1:
        return train_or_evaluate(plain)
    if cfg.trainer.accelerator != "cpu" and torch.cuda.is_available() and devices > torch.cuda.device_count():
        raise UserError(f"trainer.devices={devices} but this machine has {torch.cuda.device_count()} GPUs")
    _check_batch_split(cfg.data, devices)  # here too: one message, not one per process
    import torch.multiprocessing as mp

    try:
        spawn(_worker, devices, args=(plain,))
    except mp.ProcessExitedException as e:
        if e.exit_code in (EXIT_USER_ERROR, EXIT_PREEMPTED):  # the worker has said why
            raise SystemExit(e.exit_code) from None
        how = f"signal {e.signal_name}" if getattr(e, "signal_name", None) else f"exit code {e.exit_code}"
        last = Path(plain["run_dir"]) / "checkpoints" / "last.pth"
        print(f"error: training process {e.error_index} died ({how}); the others were stopped; "
              f"{'resume with resume=' + str(last) if last.exists() else 'no checkpoint was written yet'}", file=sys.stderr)
        raise SystemExit(1) from None
    summary = Path(plain["run_dir"]) / "summary.json"
    return json.loads(summary.read_text()) if summary.exists() else {}


def _worker(plain: dict) -> None:
    """A process started by `trainer.devices=N`: user errors become one line (rank 0) and exit code 2."""
    try:
        train_or_evaluate(plain)
    except UserError as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None


# ---------------------------------------------------------------------------------------- builders
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _attention_kwargs(att: DictConfig) -> dict:
    return {k: v for k, v in att.items() if k != "name"}


def build_model(cfg: DictConfig, num_classes: int) -> nn.Module:
    """The network of `model.arch` with `attention`, as plain arguments to `networks.create_model`."""
    kwargs = dict(cfg.model.get("kwargs") or {})
    if cfg.model.get("block"):
        kwargs["block"] = cfg.model.block
    try:
        return networks.create_model(
            cfg.model.arch, num_classes=num_classes, attention=cfg.attention.name,
            attention_kwargs=_attention_kwargs(cfg.attention), **kwargs,
        )
    except ValueError as e:
        raise UserError(str(e).splitlines()[0]) from None


def _check_model_names(cfg: DictConfig) -> None:
    try:
        networks.model_info(cfg.model.arch)
        networks.attention.get_attn_layer(cfg.attention.name, **_attention_kwargs(cfg.attention))
    except ValueError as e:
        raise UserError(str(e).splitlines()[0]) from None


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW with weight decay on all parameters (the paper's setting)."""
    return _choice(_OPTIMIZERS, cfg.optim.name, "optimizer (optim=)")(model.parameters(), cfg.optim)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    """timm scheduler stepped after every update (`step_update`), warmup linear per iteration."""
    from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler

    s = cfg.sched
    total = int(cfg.trainer.epochs) * steps_per_epoch
    warmup = int(round(float(s.get("warmup_epochs", 0)) * steps_per_epoch))
    common = dict(warmup_t=warmup, warmup_lr_init=float(s.get("warmup_lr_init", 0.0)), warmup_prefix=True, t_in_epochs=False)
    if s.name == "cosine":
        return CosineLRScheduler(optimizer, t_initial=max(total - warmup, 1), lr_min=float(s.min_lr), **common)
    if s.name == "step":
        return MultiStepLRScheduler(optimizer, decay_t=[int(m) * steps_per_epoch for m in s.milestones], decay_rate=float(s.gamma), **common)
    raise UserError(f"unknown schedule {s.name!r}; valid: cosine, step")


def _check_batch_split(d: DictConfig, world_size: int) -> None:
    """The global batch sizes must split evenly over the processes."""
    for key in ("batch_size", "eval_batch_size"):
        if int(d[key]) % world_size:
            raise UserError(f"data.{key}={d[key]} is not divisible by the {world_size} processes: use a multiple of {world_size}")


def _build_data(cfg: DictConfig, info: DistInfo) -> tuple[Any, Any, int, int]:
    """(train loader or None, val loader, num_classes, training set size). The loaders carry uint8 images and
    yield them normalised on info.device (float32, channels-last with trainer.channels_last): engine.prefetch."""
    from .prefetch import DevicePrefetcher

    d = cfg.data
    _check_batch_split(d, info.world_size)
    gpu_decode, on_device = bool(d.get("gpu_decode", False)), bool(d.get("on_device", False))
    if gpu_decode and info.device.type != "cuda":
        if info.is_main:
            get_logger().warning(f"data.gpu_decode=true needs a CUDA device but this run is on {info.device.type}: decoding JPEGs on the CPU instead")
        gpu_decode = False
    try:
        train_set, val_set, num_classes = data_lib.build_datasets(
            d.name, d.get("root"), augment=d.augment, image_size=int(d.image_size), num_classes=d.get("num_classes"),
            num_train=int(d.get("num_train", 512)), num_val=int(d.get("num_val", 128)), download=bool(d.get("download", False)),
            seed=int(cfg.seed), bad_images=d.get("bad_images", "fail"), normalize=False, deferred=gpu_decode,
        )
        mean, std = data_lib.normalization(d.augment)
    except ValueError as e:
        raise UserError(str(e).splitlines()[0]) from None
    common = dict(rank=info.rank, world_size=info.world_size, seed=int(cfg.seed))

    def loader(dataset: Any, global_batch: int, train: bool) -> DevicePrefetcher:
        batch_size = global_batch // info.world_size
        if on_device:  # CIFAR-sized data held on the device, augmented per batch there: no workers
            inner = data_lib.build_device_loader(dataset, device=info.device, augment=d.augment, image_size=int(d.image_size),
                                                 batch_size=batch_size, train=train, **common)
        else:
            inner = data_lib.build_loader(dataset, batch_size=batch_size, train=train, workers=int(d.workers),
                                          pin_memory=info.device.type == "cuda", **common)
        decode = data_lib.DeviceDecoder(dataset.transform, info.device) if gpu_decode else None
        return DevicePrefetcher(inner, device=info.device, mean=mean, std=std, channels_last=bool(cfg.trainer.channels_last), decode=decode)

    val_loader = loader(val_set, int(d.eval_batch_size), train=False)
    if cfg.evaluate:  # no training loader: its batch size need not fit the training set
        return None, val_loader, num_classes, len(train_set)
    return loader(train_set, int(d.batch_size), train=True), val_loader, num_classes, len(train_set)


# ---------------------------------------------------------------------------------------- the run
def _resolve_resume(cfg: DictConfig, run_dir: Path) -> Optional[Path]:
    if cfg.get("resume"):
        path = Path(str(cfg.resume)).expanduser()
        if not path.is_file():
            raise UserError(f"resume checkpoint not found: {path} (check resume=/--resume)")
        return path
    last = run_dir / "checkpoints" / "last.pth"
    if cfg.trainer.get("auto_resume") and last.is_file():
        return last
    return None


def train_or_evaluate(plain: dict) -> dict:
    """Train (or evaluate, with `evaluate=true`) in this process: one rank of the run."""
    cfg = OmegaConf.create(plain)
    t = cfg.trainer
    info = init_distributed(t.accelerator, t.get("dist_backend", "auto"), float(t.dist_timeout))
    try:
        return _train_or_evaluate(cfg, info)
    finally:
        cleanup()


def _train_or_evaluate(cfg: DictConfig, info: DistInfo) -> dict:
    t = cfg.trainer
    run_dir = Path(cfg.run_dir)
    from .logger import setup_logging

    setup_logging(run_dir / f"{os.environ.get('SIMAM_JOB', 'main')}.log", enabled=info.is_main)
    logger = RunLogger(run_dir, enabled=info.is_main, progress=t.progress)
    _seed_everything(int(cfg.seed))
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(t.cudnn_benchmark) and not cfg.evaluate
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = _choice(_AMP, str(t.amp), "trainer.amp")
    channels_last = bool(t.channels_last)

    _check_model_names(cfg)  # before the (possibly slow) data set is opened
    train_loader, val_loader, num_classes, num_train = _build_data(cfg, info)
    model = build_model(cfg, num_classes)
    if info.is_main:
        size = int(cfg.data.image_size)
        params, macs = networks.count_params_flops(model, (1, 3, size, size))
        logger.info(f"{cfg.model.arch} + {cfg.attention.name}: {params / 1e6:.4f} M params, {macs / 1e9:.3f} G MACs at {size}x{size} "
                    "(thop, plus the attention modules' elementwise work)")
    model.to(info.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    criterion_eval = nn.CrossEntropyLoss()
    resume_path = _resolve_resume(cfg, run_dir)

    if cfg.evaluate:
        return _evaluate_only(cfg, info, model, val_loader, criterion_eval, resume_path, amp_dtype, channels_last, logger)

    model_without_ddp = model
    if t.sync_bn:  # also with one process: the same BN arithmetic as N processes
        model = convert_sync_batchnorm(model, info.device)
        model_without_ddp = model
    train_model: nn.Module = model
    if t.compile:
        train_model = torch.compile(train_model)
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(train_model, device_ids=[info.device.index] if info.device.type == "cuda" else None)

    optimizer = build_optimizer(cfg, model_without_ddp)
    steps_per_epoch = len(train_loader)
    if t.get("max_steps_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, int(t.max_steps_per_epoch))
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(info.device.type) if amp_dtype == torch.float16 else None
    ema = None
    if cfg.ema.enabled:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model_without_ddp, decay=float(cfg.ema.decay))
    mixup_fn, criterion = _mixup_and_loss(cfg, num_classes)

    start_epoch, start_batch, global_step, best_acc1, best_epoch = 0, 0, 0, -math.inf, -1
    if resume_path is not None:
        state = load_checkpoint(resume_path, trust=bool(cfg.trust_checkpoint))
        if "optimizer" in state and "epoch" in state and "model" in state and "model_spec" in state:
            _load_model(model_without_ddp, state)
            optimizer.load_state_dict(state["optimizer"])
            if state.get("scheduler"):
                scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            if ema is not None and state.get("ema"):
                ema.module.load_state_dict(state["ema"])
            start_epoch, start_batch = int(state["epoch"]), int(state.get("batch", 0))
            global_step = int(state["step"])
            best_acc1, best_epoch = float(state.get("best_acc1", -math.inf)), int(state.get("best_epoch", -1))
            restore_rng(state.get("rng", {}))
            scheduler.step_update(num_updates=global_step)
            logger.info(f"resumed from {resume_path}: epoch {start_epoch}, batch {start_batch}, step {global_step}, best acc1 {best_acc1:.2f}")
        else:  # the SimAM code's or a bare state dict: weights only
            _load_model(model_without_ddp, state)
            logger.info(f"initialised from {resume_path} (weights only: not a checkpoint of this project)")

    stop = StopFlag(info, every=int(t.log_every))
    stop.install()
    epochs = int(t.epochs)
    record: dict[str, Any] = {}
    try:
        for epoch in range(start_epoch, epochs):
            data_lib.set_epoch(train_loader, epoch)
            train_loader.sampler.set_start_batch(start_batch if epoch == start_epoch else 0)
            batch0 = start_batch if epoch == start_epoch else 0
            logger.start_epoch(epoch, epochs, steps_per_epoch, first=batch0)
            t0 = time.perf_counter()
            try:
                stats = train_one_epoch(
                    train_model, train_loader, optimizer, criterion, device=info.device, scheduler=scheduler,
                    global_step=global_step, scaler=scaler, amp_dtype=amp_dtype, channels_last=channels_last,
                    mixup_fn=mixup_fn, ema_update=(lambda step: ema.update(model_without_ddp, step=step)) if ema else None,
                    log_every=int(t.log_every), on_log=logger.step, skip_nonfinite=bool(t.skip_nonfinite),
                    max_steps=(steps_per_epoch - batch0) if t.get("max_steps_per_epoch") else None, should_stop=stop, first_batch=batch0,
                )
            except NonFiniteLossError as e:
                last = run_dir / "checkpoints" / "last.pth"
                hint = f"last good checkpoint: {last}" if last.exists() else "no checkpoint yet"
                raise UserError(f"{e}; lower optim.lr or use trainer.skip_nonfinite=true; {hint}") from None
            logger.end_epoch()
            global_step = stats["global_step"]
            bad = getattr(train_loader.dataset, "num_skipped", 0)
            if bad:
                logger.info(f"skipped {bad} unreadable training images so far (data.bad_images=skip)")
            if stats["skipped"]:
                logger.info(f"skipped {stats['skipped']} steps with a non-finite loss")
            if stats["interrupted"]:
                batch = batch0 + stats["steps"]
                if info.is_main:
                    _save(run_dir, "last.pth", _state(cfg, model_without_ddp, optimizer, scheduler, scaler, ema, epoch, batch, global_step, best_acc1, best_epoch, record))
                barrier()
                logger.info(f"signal {stop.signum or 'on another rank'}: saved {run_dir / 'checkpoints' / 'last.pth'} at epoch {epoch} batch {batch}; exiting with code {EXIT_PREEMPTED}")
                logger.close()
                stop.restore()
                stop.forward()  # under submitit: requeue this job (its handler exits the process)
                raise SystemExit(EXIT_PREEMPTED)
            val = evaluate(train_model if not info.distributed else model_without_ddp, val_loader, criterion_eval,
                           device=info.device, amp_dtype=amp_dtype, channels_last=channels_last)
            record = {
                "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": stats["loss"], "train_acc1": stats["acc1"],
                "val_loss": val["loss"], "val_acc1": val["acc1"], "val_acc5": val["acc5"], "throughput": stats["throughput"],
                "epoch_time": time.perf_counter() - t0, "num_val": val["num_samples"],
            }
            if ema is not None:
                ema_val = evaluate(ema.module, val_loader, criterion_eval, device=info.device, amp_dtype=amp_dtype, channels_last=channels_last)
                record["ema_val_acc1"] = ema_val["acc1"]
            improved = val["acc1"] > best_acc1
            if improved:
                best_acc1, best_epoch = val["acc1"], epoch + 1
            record["best_acc1"] = best_acc1
            logger.epoch(record)
            if info.is_main:
                state = _state(cfg, model_without_ddp, optimizer, scheduler, scaler, ema, epoch + 1, 0, global_step, best_acc1, best_epoch, record)
                _save(run_dir, "last.pth", state)
                if improved:
                    shutil.copyfile(run_dir / "checkpoints" / "last.pth", run_dir / "checkpoints" / ".best.tmp")
                    os.replace(run_dir / "checkpoints" / ".best.tmp", run_dir / "checkpoints" / "best.pth")
                if int(t.keep_last) > 0:
                    shutil.copyfile(run_dir / "checkpoints" / "last.pth", run_dir / "checkpoints" / f"epoch_{epoch + 1:04d}.pth")
                    prune_checkpoints(run_dir / "checkpoints", int(t.keep_last))
            barrier()
            if t.get("stop_after_epochs") and epoch + 1 - start_epoch >= int(t.stop_after_epochs) and epoch + 1 < epochs:
                logger.info(f"trainer.stop_after_epochs={t.stop_after_epochs}: stopping after epoch {epoch + 1}; resume with resume={run_dir / 'checkpoints' / 'last.pth'}")
                break
    finally:
        stop.restore()
    summary = {"best_acc1": best_acc1, "best_epoch": best_epoch, "final": record, "run_dir": str(run_dir)}
    if info.is_main:
        if cfg.get("save_weights"):
            _save_backbone(model_without_ddp, Path(str(cfg.save_weights)))
            logger.info(f"wrote backbone weights to {cfg.save_weights}")
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        logger.info(f"done: best val acc1 {best_acc1:.2f} at epoch {best_epoch}; run dir {run_dir}")
    logger.close()
    return summary


def _mixup_and_loss(cfg: DictConfig, num_classes: int) -> tuple[Any, nn.Module]:
    """timm Mixup/CutMix with soft-target loss when enabled, else cross-entropy with label smoothing."""
    m = cfg.mixup
    smoothing = float(cfg.loss.label_smoothing)
    if float(m.mixup_alpha) > 0 or float(m.cutmix_alpha) > 0:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mix = Mixup(mixup_alpha=float(m.mixup_alpha), cutmix_alpha=float(m.cutmix_alpha), prob=float(m.prob),
                    label_smoothing=smoothing, num_classes=num_classes)
        return mix, SoftTargetCrossEntropy()
    return None, nn.CrossEntropyLoss(label_smoothing=smoothing)


def _load_model(model: nn.Module, state: Any, strict: bool = True) -> Any:
    try:
        return networks.load_weights(model, state, strict=strict)
    except WeightsError as e:
        raise UserError(str(e)) from None


def _state(cfg: DictConfig, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any, ema: Any, epoch: int, batch: int,
           step: int, best_acc1: float, best_epoch: int, record: dict) -> dict:
    """Everything needed to continue exactly: `epoch` epochs and `batch` batches of the next are done."""
    return {
        "model": model.state_dict(),
        "model_spec": getattr(model, "model_spec", {}),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.module.state_dict() if ema is not None else None,
        "epoch": epoch,
        "batch": batch,
        "step": step,
        "best_acc1": float(best_acc1),
        "best_epoch": int(best_epoch),
        "metrics": {k: float(v) for k, v in record.items() if isinstance(v, (int, float))},
        "rng": capture_rng(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "torch_version": str(torch.__version__),
    }


def _save(run_dir: Path, name: str, state: dict) -> None:
    save_atomic(state, run_dir / "checkpoints" / name)


def _save_backbone(model: nn.Module, path: Path) -> None:
    """A plain state dict without the classifier, for detection frameworks."""
    head = {"fc", "linear", "classifier"}
    sd = {k: v for k, v in model.state_dict().items() if k.split(".")[0] not in head}
    save_atomic(sd, path)


def _evaluate_only(cfg: DictConfig, info: DistInfo, model: nn.Module, val_loader: Any, criterion: nn.Module,
                   resume_path: Optional[Path], amp_dtype: Any, channels_last: bool, logger: RunLogger) -> dict:
    """`evaluate=true`: load `resume` (ours, the SimAM code's, a state dict) and write eval.json."""
    if resume_path is None:
        raise UserError("evaluate=true (-e) needs a checkpoint: add resume=PATH (--resume PATH)")
    state = load_checkpoint(resume_path, trust=bool(cfg.trust_checkpoint))
    report = _load_model(model, state)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    result = evaluate(model, val_loader, criterion, device=info.device, amp_dtype=amp_dtype, channels_last=channels_last)
    out = {**result, "checkpoint": str(resume_path), "format": report.format}
    if isinstance(state, dict) and "epoch" in state:
        out["checkpoint_epoch"] = int(state["epoch"])
    if info.is_main:
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.run_dir) / "eval.json").write_text(json.dumps(out, indent=2))
        logger.info(f"eval {resume_path}: acc1 {result['acc1']:.3f} acc5 {result['acc5']:.3f} loss {result['loss']:.4f} "
                    f"on {result['num_samples']} images")
    logger.close()
    return out
