"""The only reader of the config: the resolved config (a plain dict) becomes plain objects.

    build_run(cfg, info, plan) -> Run   model, loaders, optimizer, schedule, AMP, EMA, options, start state

Everything below this module (engine.fit, engine.loops, engine.data, networks) takes plain
arguments and never sees the config.
"""
from __future__ import annotations

import copy
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

import networks
from networks.weights import WeightsError

from . import data as data_lib
from .checkpoint import RunPaths, TrainState, is_run_checkpoint, load_checkpoint, restore_rng
from .contract import StartPlan
from .distributed import DistInfo, convert_sync_batchnorm
from .errors import UserError
from .logger import get_logger
from .optim import build_optimizer, build_scheduler, scaled_lr

__all__ = ["Options", "Run", "build_data", "check_batch_split", "build_model", "build_run", "load_into", "seed_process"]

_AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Options:
    """Plain settings of the epoch loop (engine.fit)."""

    epochs: int
    log_every: int = 50
    skip_nonfinite: bool = False
    keep_last: int = 0
    stop_after_epochs: Optional[int] = None
    max_steps_per_epoch: Optional[int] = None
    accum_steps: int = 1
    clip_grad: Optional[float] = None
    clip_mode: str = "norm"
    amp_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    select_best_ema: bool = False
    evaluate_ema: bool = False
    save_weights: Optional[str] = None
    export_backbone: Optional[str] = None
    weights_format: str = "original"
    progress: str = "auto"
    progress_every_s: float = 30.0


@dataclass
class Run:
    """Everything engine.fit needs, built from the config."""

    info: DistInfo
    paths: RunPaths
    config: dict
    plan: StartPlan
    opts: Options
    model: nn.Module                  # unwrapped: what is saved
    train_model: nn.Module            # compiled / DDP-wrapped: what trains
    val_loader: Any
    train_loader: Any = None
    steps_per_epoch: int = 0
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None
    ema: Any = None
    mixup_fn: Any = None
    criterion: Any = None
    criterion_eval: Any = field(default_factory=nn.CrossEntropyLoss)
    model_spec_classes: int = 0
    state: TrainState = field(default_factory=TrainState)
    checkpoint: Any = None            # the loaded checkpoint object (resume / evaluate / init)
    notes: list = field(default_factory=list)   # lines for the log once the run is committed


def seed_process(seed: int, rank: int = 0) -> None:
    """Python, NumPy and torch seeded with seed + rank: each rank draws its own dropout masks
    (sample augmentation depends on (seed, epoch, index) only, see engine.data)."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def setup_backends(t: dict, device: torch.device, evaluate: bool) -> None:
    """cuDNN autotuning, TF32 and deterministic algorithms as the trainer keys say."""
    if device.type != "cuda":
        return
    deterministic = bool(t.get("deterministic"))
    torch.backends.cudnn.benchmark = bool(t.get("cudnn_benchmark", True)) and not evaluate and not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cuda.matmul.allow_tf32 = bool(t.get("tf32", True))
    torch.backends.cudnn.allow_tf32 = bool(t.get("tf32", True))
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)
        import torch._inductor.config as inductor_config

        if hasattr(inductor_config, "deterministic"):  # no kernel chosen by timing in a resumed process
            inductor_config.deterministic = True


def _attention_kwargs(att: dict) -> dict:
    return {k: v for k, v in att.items() if k != "name"}


def build_model(cfg: dict, num_classes: int) -> nn.Module:
    """The network of `model.arch` with `attention`, as plain arguments to `networks.create_model`."""
    m = cfg["model"]
    kwargs = dict(m.get("kwargs") or {})
    if m.get("block"):
        kwargs["block"] = m["block"]
    if m.get("init"):
        kwargs["init"] = m["init"]
    try:
        return networks.create_model(m["arch"], num_classes=num_classes, attention=cfg["attention"]["name"],
                                     attention_kwargs=_attention_kwargs(cfg["attention"]), **kwargs)
    except (ValueError, TypeError) as e:
        raise UserError(str(e).splitlines()[0]) from None


def check_batch_split(d: dict, world_size: int) -> None:
    """The global batch sizes must split evenly over the processes."""
    for key in ("batch_size", "eval_batch_size"):
        if int(d[key]) % world_size:
            raise UserError(f"data.{key}={d[key]} is not divisible by the {world_size} processes: use a multiple of {world_size}")


def _workers(d: dict) -> int:
    """data.workers, or (null) what the machine's cores allow for each of this node's processes."""
    if d.get("workers") is None:
        return data_lib.default_workers(max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1))
    return int(d["workers"])


def build_data(cfg: dict, info: DistInfo) -> tuple[Any, Any, int]:
    """(train loader or None when evaluating, val loader, num_classes). Loaders yield normalised
    float batches on info.device (engine.data.DevicePrefetcher)."""
    d, evaluating = cfg["data"], bool(cfg.get("evaluate"))
    check_batch_split(d, info.world_size)
    gpu_decode = bool(d.get("gpu_decode", False))
    if gpu_decode and info.device.type != "cuda":
        if info.is_main:
            get_logger().warning(f"data.gpu_decode=true needs a CUDA device but this run is on {info.device.type}: decoding on the CPU")
        gpu_decode = False
    try:
        train_set, val_set, num_classes = data_lib.build_datasets(**_dataset_args(cfg, gpu_decode))
        mean, std = data_lib.normalization(d["augment"])
    except ValueError as e:
        raise UserError(str(e).splitlines()[0]) from None
    make = _loader_factory(cfg, info, mean, std, gpu_decode)
    val_loader = make(val_set, int(d["eval_batch_size"]), False)
    return (None if evaluating else make(train_set, int(d["batch_size"]), True)), val_loader, num_classes


def _dataset_args(cfg: dict, gpu_decode: bool) -> dict:
    d = cfg["data"]
    args = dict(name=d["name"], root=d.get("root"), augment=d["augment"], image_size=int(d["image_size"]),
                num_classes=d.get("num_classes"), num_train=int(d.get("num_train", 512)), num_val=int(d.get("num_val", 128)),
                download=bool(d.get("download", False)), seed=int(cfg["seed"]), bad_images=d.get("bad_images", "fail"),
                normalize=False, deferred=gpu_decode, eval_only=bool(cfg.get("evaluate")))
    args.update(auto_augment=d.get("auto_augment"), reprob=float(d.get("reprob") or 0.0), crop_pct=d.get("crop_pct"),
                interpolation=d.get("interpolation") or "bilinear", class_order=d.get("class_order"))
    return args


def _loader_factory(cfg: dict, info: DistInfo, mean: Any, std: Any, gpu_decode: bool) -> Any:
    d, t = cfg["data"], cfg["trainer"]
    common = dict(rank=info.rank, world_size=info.world_size, seed=int(cfg["seed"]))
    drop_last = d.get("drop_last")
    drop_last = info.world_size > 1 if drop_last is None else bool(drop_last)
    repeats = int(d.get("repeated_aug") or 0)

    def make(dataset: Any, global_batch: int, train: bool) -> Any:
        batch_size = global_batch // info.world_size
        extra = {"drop_last": drop_last, "repeated_aug": repeats} if train else {}
        if d.get("on_device"):
            inner = data_lib.build_device_loader(dataset, device=info.device, augment=d["augment"], image_size=int(d["image_size"]),
                                                 batch_size=batch_size, train=train, **common, **extra)
        else:
            inner = data_lib.build_loader(dataset, batch_size=batch_size, train=train, workers=_workers(d),
                                          pin_memory=info.device.type == "cuda", **common, **extra)
        decode = data_lib.DeviceDecoder(dataset.transform, info.device) if gpu_decode else None
        return data_lib.DevicePrefetcher(inner, device=info.device, mean=mean, std=std,
                                         channels_last=bool(t["channels_last"]), decode=decode)

    return make


def build_options(cfg: dict) -> Options:
    t, o = cfg["trainer"], cfg["optim"]
    amp = str(t.get("amp", "none"))
    if amp not in _AMP:
        raise UserError(f"trainer.amp={amp!r}: valid: {', '.join(_AMP)}")
    return Options(
        epochs=int(t["epochs"]), log_every=int(t["log_every"]), skip_nonfinite=bool(t["skip_nonfinite"]),
        keep_last=int(t.get("keep_last") or 0), stop_after_epochs=t.get("stop_after_epochs"),
        max_steps_per_epoch=t.get("max_steps_per_epoch"), accum_steps=int(t.get("accum_steps") or 1),
        clip_grad=o.get("clip_grad"), clip_mode=str(o.get("clip_mode") or "norm"), amp_dtype=_AMP[amp],
        channels_last=bool(t["channels_last"]), select_best_ema=bool(cfg["ema"].get("select_best")),
        evaluate_ema=bool(cfg.get("evaluate")) and bool(cfg["ema"].get("enabled")),
        save_weights=cfg.get("save_weights"), export_backbone=cfg.get("export_backbone"),
        weights_format=str(cfg.get("weights_format") or "original"), progress=str(t.get("progress", "auto")),
        progress_every_s=float(t.get("progress_every_s") or 30),
    )


def _lr(cfg: dict, info: DistInfo, notes: list) -> float:
    o = cfg["optim"]
    if o.get("lr_base") is None:
        return float(o["lr"])
    batch = int(cfg["data"]["batch_size"]) * int(cfg["trainer"].get("accum_steps") or 1)
    lr = scaled_lr(float(o["lr_base"]), int(o["lr_base_size"]), batch, str(o.get("lr_base_scale") or "linear"))
    notes.append(f"lr {lr:.6g} = optim.lr_base {o['lr_base']} scaled ({o.get('lr_base_scale') or 'linear'}) "
                 f"by global batch {batch} / {o['lr_base_size']}")
    return lr


def _training(run: Run, cfg: dict) -> None:
    """Optimizer, per-update schedule, GradScaler, EMA, mixup and the loss of a training run."""
    o, s = cfg["optim"], cfg["sched"]
    run.optimizer = build_optimizer(
        run.model, o["name"], lr=_lr(cfg, run.info, run.notes), momentum=float(o.get("momentum", 0.0) or 0.0),
        weight_decay=float(o["weight_decay"]), nesterov=bool(o.get("nesterov", False)), betas=tuple(o.get("betas") or (0.9, 0.999)),
        no_decay_norm_bias=bool(o.get("no_decay_norm_bias")))
    updates = math.ceil(run.steps_per_epoch / run.opts.accum_steps)
    run.scheduler = build_scheduler(
        run.optimizer, s["name"], steps_per_epoch=updates, epochs=run.opts.epochs, milestones=list(s.get("milestones") or []),
        gamma=float(s.get("gamma", 0.1)), min_lr=float(s.get("min_lr", 0.0)), warmup_epochs=float(s.get("warmup_epochs", 0) or 0),
        warmup_lr_init=float(s.get("warmup_lr_init", 0.0) or 0.0))
    if run.opts.amp_dtype == torch.float16:
        run.scaler = torch.amp.GradScaler(run.info.device.type)
    if cfg["ema"].get("enabled"):
        from timm.utils import ModelEmaV3

        run.ema = ModelEmaV3(run.model, decay=float(cfg["ema"]["decay"]))
    run.mixup_fn, run.criterion = _mixup_and_loss(cfg, run.model_spec_classes)


def _mixup_and_loss(cfg: dict, num_classes: int) -> tuple[Any, nn.Module]:
    """timm Mixup/CutMix with a soft-target loss when enabled, else cross-entropy with label smoothing."""
    m, smoothing = cfg["mixup"], float(cfg["loss"]["label_smoothing"])
    if float(m["mixup_alpha"]) > 0 or float(m["cutmix_alpha"]) > 0:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mix = Mixup(mixup_alpha=float(m["mixup_alpha"]), cutmix_alpha=float(m["cutmix_alpha"]), prob=float(m["prob"]),
                    label_smoothing=smoothing, num_classes=num_classes)
        return mix, SoftTargetCrossEntropy()
    return None, nn.CrossEntropyLoss(label_smoothing=smoothing)


def _wrap(run: Run, cfg: dict) -> None:
    """SyncBN, torch.compile and DDP around the unwrapped model (which is what gets saved)."""
    t, info = cfg["trainer"], run.info
    if t.get("sync_bn"):  # also with one process: the same BN arithmetic as N processes
        if t.get("compile") and info.distributed and info.device.type == "cuda":
            get_logger().warning("trainer.sync_bn with trainer.compile on several GPUs: SyncBatchNorm breaks the compiled "
                                 "graph at every BN (pytorch #161302); consider trainer.compile=false")
        run.model = convert_sync_batchnorm(run.model, info.device)
    model = run.model
    if t.get("compile"):
        model = torch.compile(model)
    if info.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    run.train_model = model


def build_run(cfg: dict, info: DistInfo, plan: StartPlan) -> Run:
    """Data, model (with the start's weights), and for training the optimizer and everything else."""
    seed_process(int(cfg["seed"]), info.rank)
    setup_backends(cfg["trainer"], info.device, bool(cfg.get("evaluate")))
    opts = build_options(cfg)
    ckpt = load_checkpoint(plan.checkpoint, trust=bool(cfg.get("trust_checkpoint"))) if plan.checkpoint else None
    if plan.kind == "weights":  # convert weights: no data set needed, the classes are the checkpoint's
        train_loader, val_loader, num_classes = None, None, _checkpoint_classes(ckpt, cfg)
    else:
        train_loader, val_loader, num_classes = build_data(cfg, info)
    model = build_model(cfg, num_classes)
    run = Run(info=info, paths=RunPaths(Path(cfg["run_dir"])), config=cfg, plan=plan, opts=opts, model=model,
              train_model=model, val_loader=val_loader, train_loader=train_loader, checkpoint=ckpt)
    run.model_spec_classes = num_classes
    if info.is_main:  # before SyncBN/DDP wrapping: profiling runs a forward pass on this rank alone
        run.notes.append(_model_line(cfg, model))
        _warn_large_cifar_input(cfg)
    if ckpt is not None:
        load_into(run, plan.kind)
    model.to(info.device)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    if train_loader is None or plan.kind == "weights":
        _expect_simam_calls(run, plan.kind)
        return run
    run.steps_per_epoch = len(train_loader)
    if opts.max_steps_per_epoch:
        run.steps_per_epoch = min(run.steps_per_epoch, int(opts.max_steps_per_epoch))
    _expect_simam_calls(run, plan.kind)
    _wrap(run, cfg)
    _training(run, cfg)
    if plan.kind == "resume":
        (_restore_training if is_run_checkpoint(run.checkpoint) else _restore_original)(run)
    return run


def _expect_simam_calls(run: Run, kind: str) -> None:
    """Tell SimAM's automatic kernel choice how many forward passes the whole run makes (training
    steps and eval batches of every epoch, the same number for a straight and a resumed run, so
    both choose the same kernels): short runs and evaluations skip compiling."""
    from networks.attention.simam_fused import set_expected_calls

    evals = len(run.val_loader) if run.val_loader is not None else 0
    calls = evals if kind in ("evaluate", "weights") else run.opts.epochs * (run.steps_per_epoch + evals)
    set_expected_calls(max(int(calls), 1))


def _warn_large_cifar_input(cfg: dict) -> None:
    """A CIFAR network (stride 4 in all) at ImageNet sizes costs (size/32)^2 the compute of 32 px."""
    info, size = networks.model_info(cfg["model"]["arch"]), int(cfg["data"]["image_size"])
    if info.family == "cifar" and size > 2 * info.input_size:
        get_logger().warning(f"{cfg['model']['arch']} is a {info.input_size} px CIFAR network but data.image_size={size}: "
                             f"{(size / info.input_size) ** 2:.0f}x the compute of {info.input_size} px; "
                             f"set data.image_size={info.input_size} unless you mean it")


def _model_line(cfg: dict, model: nn.Module) -> str:
    size = int(cfg["data"]["image_size"])
    params, macs = networks.count_params_flops(model, (1, 3, size, size))
    return (f"{cfg['model']['arch']} + {cfg['attention']['name']}: {params / 1e6:.4f} M params, {macs / 1e9:.3f} G MACs at "
            f"{size}x{size} (thop, plus the attention modules' elementwise work)")


def _checkpoint_classes(ckpt: Any, cfg: dict) -> int:
    classes = networks.inspect_checkpoint(ckpt).get("num_classes") or cfg["data"].get("num_classes")
    if not classes:
        raise UserError("cannot tell the checkpoint's number of classes: set data.num_classes")
    return int(classes)


def load_into(run: Run, kind: str) -> None:
    """The model's weights from the loaded checkpoint: all of it (resume, evaluate) or, for
    init_from, everything but a classifier whose shape does not fit (re-initialised, reported)."""
    ckpt = run.checkpoint
    if kind in ("evaluate", "weights") and run.opts.evaluate_ema:
        if not isinstance(ckpt, dict) or not ckpt.get("ema"):
            raise UserError(f"{run.plan.checkpoint} holds no EMA weights (trained without ema.enabled): drop ema=true")
        ckpt = {"model": ckpt["ema"], "model_spec": ckpt.get("model_spec")}
    try:
        if kind == "init":
            skipped = _load_skipping_head(run.model, ckpt)
            run.notes.append(f"initialised from {run.plan.checkpoint} (weights only)"
                             + (f"; re-initialised the classifier ({', '.join(skipped)}: other number of classes)" if skipped else ""))
        else:
            report = networks.load_weights(run.model, ckpt)
            run.notes.append(f"loaded {run.plan.checkpoint} ({report.format} weights)")
    except WeightsError as e:
        raise UserError(str(e)) from None


def _head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the model's last Linear layer (its classifier)."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    return {f"{last}.{p}" for p, _ in model.get_submodule(last).named_parameters()} if last else set()


def _load_skipping_head(model: nn.Module, ckpt: Any) -> list[str]:
    """Load strictly except for classifier keys whose shape differs from the model's."""
    probe = copy.deepcopy(model)
    report = networks.load_weights(probe, ckpt, strict=False)
    head = _head_keys(model)
    if report.missing_keys and set(report.missing_keys) <= head and not report.unexpected_keys:
        model.load_state_dict(probe.state_dict())
        return sorted(report.missing_keys)
    networks.load_weights(model, ckpt)  # the usual strict error (or a clean load)
    return []


def _restore_training(run: Run) -> None:
    """Optimizer, scaler, EMA, progress and RNG of the same run; the schedule is rebuilt from the
    config for trainer.epochs and moved to the stored step (so an extended run keeps training)."""
    ckpt = run.checkpoint
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    if run.ema is not None and ckpt.get("ema"):
        run.ema.module.load_state_dict(ckpt["ema"])
    run.state = TrainState.from_checkpoint(ckpt)
    ranks = ckpt.get("rng_ranks") or [ckpt.get("rng") or {}]
    if len(ranks) != run.info.world_size:
        run.notes.append(f"the checkpoint holds RNG states of {len(ranks)} processes, this run has {run.info.world_size}: "
                         "rank 0's state is used for every rank (results are not bit-exact with the uninterrupted run)")
    if not restore_rng(ranks[run.info.rank] if run.info.rank < len(ranks) else ranks[0]):
        run.notes.append("CUDA RNG states not restored (fewer GPUs than when saved)")
    run.scheduler.step_update(num_updates=run.state.step)
    run.notes.append(_resume_line(run))


def _resume_line(run: Run) -> str:
    """What the resume continues from, what it changed, and for an extension the lr ahead."""
    st, plan, sched = run.state, run.plan, run.scheduler
    line = f"resumed from {plan.checkpoint}: epoch {st.epoch}, batch {st.batch}, step {st.step}, best {st.best_metric} {st.best_acc1:.2f}"
    if plan.changes:
        line += "; changed: " + ", ".join(f"{k} {o} -> {n}" for k, o, n in plan.changes)
    if plan.extend_from is not None and hasattr(sched, "lr_at"):
        end = sched.total - 1
        line += (f"; extending the run from {plan.extend_from} to {run.opts.epochs} epochs: the {sched.name} schedule is rebuilt "
                 f"for the new length, lr continues at {sched.lr_at(st.step):.6g} and ends at {sched.lr_at(end):.6g} (step {end})")
    return line


def _restore_original(run: Run) -> None:
    """--resume of the original SimAM code's checkpoint ({'epoch', 'state_dict', 'best_acc1',
    'optimizer'}): continue at its epoch with its optimizer, as the original did. A bare state
    dict has neither: training starts at epoch 0 from these weights."""
    ckpt = run.checkpoint
    if not isinstance(ckpt, dict) or "epoch" not in ckpt:
        run.notes.append(f"{run.plan.checkpoint} holds weights only (no epoch): training starts at epoch 0 from them")
        return
    if isinstance(ckpt.get("optimizer"), dict):
        _load_foreign_optimizer(run, ckpt["optimizer"])
    epoch = int(ckpt["epoch"])
    best = next((ckpt[k] for k in ("best_acc1", "best_prec1", "best_acc") if k in ckpt), float("-inf"))
    run.state = TrainState(epoch=epoch, step=epoch * math.ceil(run.steps_per_epoch / run.opts.accum_steps),
                           best_acc1=float(best), best_epoch=epoch)
    run.scheduler.step_update(num_updates=run.state.step)
    run.notes.append(f"resumed the original code's checkpoint {run.plan.checkpoint}: epoch {epoch}, best acc1 {float(best):.2f}, "
                     f"{'its optimizer state' if isinstance(ckpt.get('optimizer'), dict) else 'a new optimizer'}, "
                     f"lr {run.scheduler.lr_at(run.state.step):.6g}")


def _load_foreign_optimizer(run: Run, state: dict) -> None:
    """Load an optimizer state of another code base, refusing buffers whose shapes do not fit."""
    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    try:
        run.optimizer.load_state_dict(state)
    except (ValueError, KeyError) as e:
        raise UserError(f"the optimizer state in {run.plan.checkpoint} does not fit this model ({str(e).splitlines()[0]}): "
                        f"start from its weights only with init_from={run.plan.checkpoint}") from None
    for p in params:
        for buf in run.optimizer.state.get(p, {}).values():
            if isinstance(buf, torch.Tensor) and buf.dim() and buf.shape != p.shape:
                raise UserError(f"the optimizer state in {run.plan.checkpoint} does not fit this model (a buffer of shape "
                                f"{tuple(buf.shape)} for a parameter of {tuple(p.shape)}): use init_from={run.plan.checkpoint}")
    for group in run.optimizer.param_groups:  # the recipe's lr/decay, not the other code's stored values
        group.pop("initial_lr", None)
