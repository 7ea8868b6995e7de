"""Reading training runs for reports, the published SimAM numbers, and models rebuilt from checkpoints.

Shared by scripts/report.py, scripts/gradcam.py, scripts/throughput.py and scripts/sweep.py; plain
functions on paths and dicts (no plotting, no argument parsing).

A run directory is what `engine.runner` writes: `.hydra/config.yaml` (+ `overrides.yaml`,
`hydra.yaml`), `metrics.jsonl` (one JSON line per finished epoch), `summary.json` at the end,
`checkpoints/{last,best}.pth` and Hydra's `<job name>.log`.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from networks.registry import SIMAM_CIFAR_NAMES

__all__ = [
    "Published", "Run", "ReportError", "checkpoint_meta", "class_names", "config_num_classes",
    "default_paper_dir", "find_run_dirs", "group_items", "load_checkpoint_model", "load_run", "lookup_published",
    "mean_std", "model_from_config", "paper_arch_name", "plain_simam", "read_paper_csv", "read_published", "recipe_text",
    "resolve_data_root", "schedule_text", "unnormalise", "val_dataset",
]

REPO = Path(__file__).resolve().parents[1]

# registry name -> the arch column of shared/paper/cifar.csv and params.csv (the original script's names)
_CIFAR_PAPER_ARCHS = {name: simam for simam, name in SIMAM_CIFAR_NAMES.items()}


class ReportError(Exception):
    """A user mistake (missing path, unknown name): the scripts print it in one line and exit 2."""


# ------------------------------------------------------------------------------------------ runs
@dataclass
class Run:
    """One training run directory, read back."""

    path: Path
    config: dict
    metrics: list[dict]  # one record per epoch (the last line wins if an epoch was logged twice)
    summary: Optional[dict]
    overrides: list[str]
    job_name: str
    status: str = "complete"  # complete | in progress | interrupted | stopped | failed
    note: str = ""
    repeated_epochs: bool = False  # metrics.jsonl logged an epoch twice (a restart without resume)

    @property
    def epochs(self) -> int:
        return int(self.config.get("trainer", {}).get("epochs", 0))

    @property
    def epochs_done(self) -> int:
        return len(self.metrics)

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    def best(self) -> Optional[dict]:
        """The record of the epoch with the highest val top-1 (the first such epoch)."""
        rows = [r for r in self.metrics if _finite(r.get("val_acc1"))]
        return max(rows, key=lambda r: (r["val_acc1"], -r["epoch"])) if rows else None

    def final(self) -> Optional[dict]:
        return self.metrics[-1] if self.metrics else None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def find_run_dirs(paths: Iterable[os.PathLike | str]) -> list[Path]:
    """Run directories at or below `paths` (those holding .hydra/config.yaml or metrics.jsonl), sorted.

    Evaluation-only runs (evaluate=true, which write eval.json into a training run or a dir of their
    own) are not training runs and are left out. ReportError for a path that does not exist.
    """
    found: set[Path] = set()
    for p in paths:
        p = Path(p).expanduser()
        if not p.exists():
            raise ReportError(f"{p} does not exist")
        if not p.is_dir():
            raise ReportError(f"{p} is not a folder (give run dirs or folders that contain them)")
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if d not in ("checkpoints", "tb", ".submitit"))
            here = Path(root)
            if "metrics.jsonl" in files or (here / ".hydra" / "config.yaml").is_file():
                found.add(here.resolve())
    return sorted(r for r in found if not _is_evaluation_only(r))


def _is_evaluation_only(run_dir: Path) -> bool:
    if (run_dir / "metrics.jsonl").exists():
        return False
    cfg = run_dir / ".hydra" / "config.yaml"
    if not cfg.is_file():
        return False
    return bool(re.search(r"(?m)^evaluate: true\s*$", cfg.read_text()))


def _read_config(run_dir: Path) -> dict:
    """The run's .hydra/config.yaml, resolved (run_dir set to the folder: its `${hydra:...}` has no resolver here)."""
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    cfg = OmegaConf.load(path)
    if "run_dir" in cfg:
        cfg.run_dir = str(run_dir)
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - an interpolation we cannot resolve: keep the raw values
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def _read_metrics(run_dir: Path) -> tuple[list[dict], bool]:
    """Records of metrics.jsonl by epoch, the last line of an epoch winning; and whether an epoch repeats."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return [], False
    by_epoch: dict[int, dict] = {}
    repeated = False
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        if "epoch" not in rec:
            continue
        epoch = int(rec["epoch"])
        repeated |= epoch in by_epoch
        by_epoch[epoch] = rec
    return [by_epoch[e] for e in sorted(by_epoch)], repeated


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _hydra_meta(run_dir: Path) -> tuple[list[str], str]:
    """(task overrides, job name) from .hydra/overrides.yaml and hydra.yaml."""
    from omegaconf import OmegaConf

    overrides: list[str] = []
    job_name = ""
    ov = run_dir / ".hydra" / "overrides.yaml"
    if ov.is_file():
        overrides = [str(o) for o in (OmegaConf.load(ov) or [])]
    hy = run_dir / ".hydra" / "hydra.yaml"
    if hy.is_file():
        m = re.search(r"(?m)^  job:\n(?:    .*\n)*?    name: (\S+)", hy.read_text())
        job_name = m.group(1) if m else ""
    return overrides, job_name


def _last_write(run_dir: Path) -> float:
    paths = [run_dir / "metrics.jsonl", run_dir / "checkpoints" / "last.pth", run_dir / ".hydra" / "config.yaml", *run_dir.glob("*.log")]
    times = [p.stat().st_mtime for p in paths if p.exists()]
    return max(times) if times else 0.0


def _log_text(run: Run) -> str:
    """The end of the run's logs: Hydra's `<job name>.log` and scripts/sweep.py's console.log."""
    texts = []
    for p in sorted(run.path.glob("*.log")):
        try:
            texts.append(p.read_text(errors="replace")[-20000:])
        except OSError:
            pass
    return "\n".join(texts)


_START = " M params, "  # the runner logs the model size each time it starts (or resumes)
_ERROR = re.compile(r"^Traceback|^[\w.]*(Error|Exception)\b|^error:|non-finite loss", re.M)


def _status(run: Run, now: float) -> tuple[str, str]:
    """(status, note). complete: every epoch of trainer.epochs logged. Otherwise the logs and files say why."""
    if run.epochs and run.epochs_done >= run.epochs:
        return "complete", ""
    done = f"{run.epochs_done}/{run.epochs or '?'} epochs"
    log = _log_text(run)
    latest = log.rsplit(_START, 1)[-1]  # what happened since the last (re)start
    errors = [l for l in latest.splitlines() if _ERROR.search(l)]
    if errors:
        return "failed", f"{done}; log: {errors[-1].strip()[:160]}"
    if "exiting with code 3" in latest:
        return "interrupted", f"{done}; stopped by a signal, last.pth saved: rerun the same command with trainer.auto_resume=true"
    if run.summary is not None:
        return "stopped", f"{done}; ended early (trainer.stop_after_epochs?): continue with resume={run.path / 'checkpoints' / 'last.pth'}"
    epoch_times = [r["epoch_time"] for r in run.metrics if _finite(r.get("epoch_time"))]
    patience = max(3 * statistics.median(epoch_times), 1800.0) if epoch_times else 6 * 3600.0
    if now - _last_write(run.path) > patience:
        hours = (now - _last_write(run.path)) / 3600
        return "stopped", f"{done}; no update for {hours:.1f} h (killed or failed?)"
    return "in progress", done


def load_run(run_dir: os.PathLike | str, now: Optional[float] = None) -> Run:
    """Read one run directory (ReportError if it is not one)."""
    run_dir = Path(run_dir)
    config = _read_config(run_dir)
    metrics, repeated = _read_metrics(run_dir)
    if not config and not metrics:
        raise ReportError(f"{run_dir} is not a run directory (no .hydra/config.yaml, no metrics.jsonl)")
    overrides, job_name = _hydra_meta(run_dir)
    run = Run(run_dir, config, metrics, _read_json(run_dir / "summary.json"), overrides, job_name, repeated_epochs=repeated)
    now = time.time() if now is None else now
    run.status, run.note = _status(run, now)
    if repeated:
        run.note = (run.note + "; " if run.note else "") + "metrics.jsonl repeats epochs (restarted without resume, or two jobs shared this dir)"
    return run


# --------------------------------------------------------------------------------------- summaries
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; nan for one value)."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else math.nan)


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def schedule_text(config: dict) -> str:
    """The lr schedule in a few words, e.g. "step x0.1 at [82, 123]" or "cosine to 0, warmup 1 ep from 0.01"."""
    s = config.get("sched") or {}
    if s.get("name") == "step":
        text = f"step x{_num(s.get('gamma'))} at {list(s.get('milestones') or [])}"
    elif s.get("name") == "cosine":
        text = f"cosine to {_num(s.get('min_lr', 0.0))}"
    else:
        text = str(s.get("name"))
    if s.get("warmup_epochs"):
        text += f", warmup {_num(s['warmup_epochs'])} ep from {_num(s.get('warmup_lr_init', 0.0))}"
    return text


def recipe_text(config: dict) -> str:
    """The training recipe in one line: optimizer, lr, wd, schedule, epochs, batch (and extras when set)."""
    o, t, d = (config.get(k, {}) or {} for k in ("optim", "trainer", "data"))
    parts = [f"{o.get('name', '?')} lr {_num(o.get('lr'))} wd {_num(o.get('weight_decay'))}", schedule_text(config),
             f"{t.get('epochs')} ep", f"batch {d.get('batch_size')}"]
    smoothing = (config.get("loss") or {}).get("label_smoothing") or 0
    mix = config.get("mixup") or {}
    if smoothing:
        parts.append(f"label smoothing {_num(smoothing)}")
    if mix.get("mixup_alpha") or mix.get("cutmix_alpha"):
        parts.append(f"mixup {_num(mix.get('mixup_alpha'))} cutmix {_num(mix.get('cutmix_alpha'))}")
    if (config.get("ema") or {}).get("enabled"):
        parts.append("EMA")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------- published
@dataclass(frozen=True)
class Published:
    """A published result of shared/paper/*.csv."""

    top1: float
    top5: Optional[float]
    attention_param: str
    source: str
    file: str


def default_paper_dir() -> Path:
    """$SIMAM_PAPER_DIR, else <repo>/../shared/paper."""
    env = os.environ.get("SIMAM_PAPER_DIR")
    return Path(env) if env else REPO.parent / "shared" / "paper"


def paper_arch_name(dataset: str, arch: str) -> str:
    """Registry name -> the arch column of the paper csv files (CIFAR models carry a `cifar_` prefix here)."""
    if dataset.startswith("cifar") and arch.startswith("cifar_"):
        return _CIFAR_PAPER_ARCHS.get(arch, arch[len("cifar_"):])
    return arch


def read_paper_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a csv file of shared/paper, without '#' comment lines; [] if it does not exist."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def _float(v: Optional[str]) -> Optional[float]:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


def read_published(paper_dir: os.PathLike | str) -> dict[tuple[str, str, str], Published]:
    """{(dataset, paper arch, attention): Published} from cifar.csv and imagenet.csv (missing files: empty)."""
    paper_dir = Path(paper_dir)
    table: dict[tuple[str, str, str], Published] = {}
    for row in read_paper_csv(paper_dir / "cifar.csv"):
        top1 = _float(row.get("top1"))
        if top1 is not None:
            table[(row["dataset"], row["arch"], row["attention"])] = Published(
                top1, _float(row.get("top5")), row.get("attention_param", ""), f"{row.get('source', '')}; runs: {row.get('runs', '')}", "cifar.csv")
    for row in read_paper_csv(paper_dir / "imagenet.csv"):
        top1 = _float(row.get("top1"))
        if top1 is not None:
            table[("imagenet", row["arch"], row["attention"])] = Published(
                top1, _float(row.get("top5")), row.get("attention_param", ""), row.get("source", ""), "imagenet.csv")
    return table


def lookup_published(table: dict, dataset: str, arch: str, attention: str) -> Optional[Published]:
    """The published row of (dataset, registry arch, attention), or None."""
    return table.get((dataset, paper_arch_name(dataset, arch), attention))


# ------------------------------------------------------------------------------ models and data
def config_num_classes(config: dict, spec: Optional[dict] = None) -> int:
    """Head size: the checkpoint's model_spec, else data.num_classes, else the architecture's usual one."""
    if spec and spec.get("num_classes"):
        return int(spec["num_classes"])
    n = (config.get("data") or {}).get("num_classes")
    if n:
        return int(n)
    import networks

    return networks.model_info(config["model"]["arch"]).num_classes


def model_from_config(config: dict, num_classes: int) -> Any:
    """The network of a run's (resolved) config, built as the trainer builds it."""
    from omegaconf import OmegaConf

    from engine.errors import UserError
    from engine.runner import build_model

    try:
        return build_model(OmegaConf.create(config), num_classes)
    except UserError as e:
        raise ReportError(str(e)) from None


def load_checkpoint_model(path: os.PathLike | str) -> tuple[Any, dict, dict]:
    """(model in eval mode with the weights of `path`, resolved config, model_spec) of one of our checkpoints."""
    import networks
    from networks.weights import WeightsError, read_checkpoint

    path = Path(path)
    if not path.is_file():
        raise ReportError(f"checkpoint not found: {path}")
    try:
        state = read_checkpoint(path)
    except WeightsError as e:
        raise ReportError(str(e)) from None
    if not isinstance(state, dict) or "config" not in state or "model_spec" not in state:
        raise ReportError(f"{path} is not a checkpoint of this project (no stored config/model_spec): "
                          "use one of run_dir/checkpoints/*.pth")
    config, spec = state["config"], state["model_spec"]
    model = model_from_config(config, config_num_classes(config, spec))
    try:
        networks.load_weights(model, state)
    except WeightsError as e:
        raise ReportError(f"{path}: {e}") from None
    model.checkpoint_info = {"epoch": state.get("epoch"), "torch_version": state.get("torch_version"), "path": str(path)}
    return model.eval(), config, spec


def resolve_data_root(root: Optional[str]) -> Optional[str]:
    """A relative data.root as the run saw it (cwd), else relative to the repository."""
    if not root or os.path.isabs(root) or os.path.exists(root):
        return root
    alt = REPO / root
    return str(alt) if alt.exists() else root


def val_dataset(config: dict) -> Any:
    """The run's validation set (normalised CHW float tensors, int labels) as engine.data builds it.

    ReportError when the data are not where the run had them (nothing is downloaded).
    """
    from engine import data as data_lib
    from engine.errors import UserError

    d = config.get("data") or {}
    root = resolve_data_root(d.get("root"))
    try:
        _, val, _ = data_lib.build_datasets(
            d["name"], root, augment=d.get("augment", "none"), image_size=int(d["image_size"]),
            num_classes=d.get("num_classes"), num_train=int(d.get("num_train", 512)), num_val=int(d.get("num_val", 128)),
            download=False, seed=int(config.get("seed", 0)), bad_images=d.get("bad_images", "fail"))
        return val
    except (UserError, ValueError, OSError, KeyError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ReportError(f"cannot open the validation data of {d.get('name')!r} at {root}: {reason}") from None


def class_names(dataset: Any) -> Optional[list[str]]:
    """Class names of a (wrapped) dataset, if it has them."""
    inner = getattr(dataset, "dataset", dataset)
    names = getattr(inner, "classes", None)
    return list(names) if names else None


def unnormalise(image: Any, augment: str) -> Any:
    """Normalised CHW tensor -> HWC float numpy array in [0, 1] for display."""
    import torch

    from engine import data as data_lib

    mean, std = data_lib.NORMALIZATION.get(augment, data_lib.NORMALIZATION["none"])  # unknown recipe: as "none"
    x = image.detach().float().cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


def group_items(items: Iterable[Any], key: Any) -> dict[Any, list[Any]]:
    """Order-preserving group-by."""
    out: dict[Any, list[Any]] = {}
    for it in items:
        out.setdefault(key(it), []).append(it)
    return out


def checkpoint_meta(path: os.PathLike | str) -> dict:
    """epoch, batch, torch_version and model_spec of a checkpoint, read without loading its tensors ({} if unreadable)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an old format, a file being written: no metadata
        return {}
    if not isinstance(state, dict):
        return {}
    return {k: state.get(k) for k in ("epoch", "batch", "torch_version", "model_spec", "best_acc1")}


@contextlib.contextmanager
def plain_simam() -> Iterator[None]:
    """Inside: SimAM modules run the plain formula (plain autograd, no torch.compile start-up, which a few
    forward passes do not repay on a CPU), unless SIMAM_IMPL already chose one; restored afterwards."""
    try:
        from networks.attention import simam_fused
    except ImportError:  # no fused implementation: nothing to choose
        yield
        return
    get = getattr(simam_fused, "impl_override", None)
    set_ = getattr(simam_fused, "set_impl_override", None)
    if get is None or set_ is None:
        yield
        return
    previous = get()
    set_(previous or "reference")
    try:
        yield
    finally:
        set_(previous)
