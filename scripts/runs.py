"""Training run directories read back for scripts/report.py and scripts/sweep.py.

A run directory is what the trainer writes: `.hydra/config.yaml` (+ `overrides.yaml`, `hydra.yaml`),
`metrics.jsonl` (one JSON line per finished epoch), `status.json` ({"state": running | done | failed |
preempted, "epoch", "error", "exit_code", "updated"}), `summary.json` at the end,
`checkpoints/{last,best}.pth` and the job's `.log`. Nothing here aborts on one bad file: an unreadable
line of metrics.jsonl is skipped with a warning naming the file and line (Run.warnings), and a run
that cannot be read at all raises UserError naming the file, for the caller to skip.
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Optional

from engine.errors import UserError

__all__ = ["STATUSES", "Run", "find_run_dirs", "load_run", "read_metrics", "read_status", "recipe_text", "schedule_text"]

STATUSES = ("complete", "in progress", "interrupted", "stopped", "failed")
_STATES = ("running", "done", "failed", "preempted")  # status.json's "state"


@dataclass
class Run:
    """One training run directory, read back."""

    path: Path
    config: dict
    metrics: list[dict]  # one record per epoch (the last line wins if an epoch was logged twice)
    summary: Optional[dict]
    overrides: list[str]
    job_name: str
    status: str = "complete"  # one of STATUSES
    note: str = ""
    repeated_epochs: bool = False  # metrics.jsonl logged an epoch twice (a restart without resume)
    state: Optional[dict] = None  # status.json, when the run has a readable one
    warnings: list[str] = field(default_factory=list)  # "FILE:LINE: what was skipped"

    @property
    def epochs(self) -> int:
        try:
            return int(self.config.get("trainer", {}).get("epochs", 0))
        except (TypeError, ValueError, AttributeError):
            return 0

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
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ------------------------------------------------------------------------------------------ finding
def find_run_dirs(paths: Iterable[os.PathLike | str]) -> list[Path]:
    """Run directories at or below `paths` (those holding .hydra/config.yaml, metrics.jsonl or status.json), sorted.

    Evaluation-only runs (evaluate=true, which write eval.json into a training run or a dir of their
    own) are not training runs and are left out. UserError for a path that does not exist.
    """
    found: set[Path] = set()
    for p in paths:
        p = Path(p).expanduser()
        if not p.exists():
            raise UserError(f"{p} does not exist")
        if not p.is_dir():
            raise UserError(f"{p} is not a folder (give run dirs or folders that contain them)")
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if d not in ("checkpoints", "tb", ".submitit", ".hydra"))
            here = Path(root)
            if "metrics.jsonl" in files or "status.json" in files or (here / ".hydra" / "config.yaml").is_file():
                found.add(here.resolve())
    return sorted(r for r in found if not _is_evaluation_only(r))


def _is_evaluation_only(run_dir: Path) -> bool:
    if (run_dir / "metrics.jsonl").exists():
        return False
    cfg = run_dir / ".hydra" / "config.yaml"
    try:
        return cfg.is_file() and bool(re.search(r"(?m)^evaluate: true\s*$", cfg.read_text(errors="replace")))
    except OSError:
        return False


# ------------------------------------------------------------------------------------------ files
def _read_config(run_dir: Path) -> dict:
    """The run's .hydra/config.yaml, resolved (run_dir set to the folder: its `${hydra:...}` has no resolver here)."""
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - YAML syntax, bad bytes, permissions: one line naming the file
        raise UserError(f"{path}: cannot read it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not OmegaConf.is_dict(cfg):
        raise UserError(f"{path}: not a mapping of config keys")
    if "run_dir" in cfg:
        cfg.run_dir = str(run_dir)
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - an interpolation we cannot resolve: keep the raw values
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def _epoch(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


def read_metrics(path: Path) -> tuple[list[dict], bool, list[str]]:
    """(records of metrics.jsonl by epoch, the last line of an epoch winning; whether an epoch repeats; warnings).

    A line that is not a JSON object with a whole, non-negative "epoch" (`42`, `{"epoch": "abc"}`,
    bytes that are not UTF-8, a line cut by a kill) is skipped with a warning "FILE:LINE: why".
    """
    if not path.is_file():
        return [], False, []
    by_epoch: dict[int, dict] = {}
    repeated = False
    warnings: list[str] = []
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        why, rec = _parse_line(raw)
        if why:
            warnings.append(f"{path}:{number}: skipped ({why}): {raw[:60].decode('utf-8', 'replace')!r}")
            continue
        epoch = _epoch(rec["epoch"])
        repeated |= epoch in by_epoch
        by_epoch[epoch] = {**rec, "epoch": epoch}
    return [by_epoch[e] for e in sorted(by_epoch)], repeated, warnings


def _parse_line(raw: bytes) -> tuple[str, Optional[dict]]:
    """('', record) or (why the line cannot be used, None)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8 text", None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError:
        return "not JSON (a line cut by a kill or being written?)", None
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not an object", None
    if _epoch(rec.get("epoch")) is None:
        return "no whole, non-negative epoch", None
    return "", rec


def _read_json(path: Path) -> Optional[dict]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def read_status(run_dir: os.PathLike | str) -> tuple[Optional[dict], str]:
    """(status.json as a dict, '') or (None, a warning naming the file when it exists but cannot be used)."""
    path = Path(run_dir) / "status.json"
    if not path.exists():
        return None, ""
    state = _read_json(path)
    if state is None or state.get("state") not in _STATES:
        return None, f"{path}: unreadable or no valid \"state\" ({'/'.join(_STATES)}): status from the logs instead"
    return state, ""


def _hydra_meta(run_dir: Path) -> tuple[list[str], str]:
    """(task overrides, job name) from .hydra/overrides.yaml and hydra.yaml ([] and '' when unreadable)."""
    from omegaconf import OmegaConf

    overrides: list[str] = []
    job_name = ""
    ov = run_dir / ".hydra" / "overrides.yaml"
    try:
        if ov.is_file():
            overrides = [str(o) for o in (OmegaConf.load(ov) or [])]
    except Exception:  # noqa: BLE001 - only the report's command line needs them
        overrides = []
    hy = run_dir / ".hydra" / "hydra.yaml"
    if hy.is_file():
        m = re.search(r"(?m)^  job:\n(?:    .*\n)*?    name: (\S+)", hy.read_text(errors="replace"))
        job_name = m.group(1) if m else ""
    return overrides, job_name


def _last_write(run_dir: Path) -> float:
    paths = [run_dir / "metrics.jsonl", run_dir / "status.json", run_dir / "checkpoints" / "last.pth",
             run_dir / ".hydra" / "config.yaml", *run_dir.glob("*.log")]
    times = [p.stat().st_mtime for p in paths if p.exists()]
    return max(times) if times else 0.0


def _log_text(run: Run) -> str:
    """The end of the run's logs: the job's `<job name>.log` and scripts/sweep.py's console.log."""
    texts = []
    for p in sorted(run.path.glob("*.log")):
        try:
            texts.append(p.read_text(errors="replace")[-20000:])
        except OSError:
            pass
    return "\n".join(texts)


# ------------------------------------------------------------------------------------------ status
_START = " M params, "  # the runner logs the model size each time it starts (or resumes)
_ERROR = re.compile(r"^Traceback|^[\w.]*(Error|Exception)\b|^error:|non-finite loss", re.M)


def _patience(run: Run) -> float:
    epoch_times = [r["epoch_time"] for r in run.metrics if _finite(r.get("epoch_time"))]
    return max(3 * statistics.median(epoch_times), 1800.0) if epoch_times else 6 * 3600.0


def _updated(state: dict, run_dir: Path) -> float:
    try:
        return datetime.fromisoformat(str(state.get("updated"))).timestamp()
    except (TypeError, ValueError):
        return _last_write(run_dir)


def _status_from_file(run: Run, state: dict, now: float) -> tuple[str, str]:
    """(status, note) from status.json."""
    done = f"{run.epochs_done}/{run.epochs or '?'} epochs"
    where = f"after epoch {state.get('epoch')}" if state.get("epoch") is not None else "before its first epoch"
    last = run.path / "checkpoints" / "last.pth"
    if state["state"] == "failed":
        code = f" (exit code {state['exit_code']})" if state.get("exit_code") is not None else ""
        return "failed", f"{done}; failed {where}{code}: {str(state.get('error') or 'no error recorded')[:200]}"
    if state["state"] == "preempted":
        return "interrupted", f"{done}; preempted {where}, last.pth saved: rerun the same command with trainer.auto_resume=true"
    if state["state"] == "done":
        if run.epochs and run.epochs_done >= run.epochs:
            return "complete", ""
        return "stopped", f"{done}; ended {where} (trainer.stop_after_epochs, or unreadable metrics lines): continue with resume={last}"
    if run.epochs and run.epochs_done >= run.epochs:  # every epoch logged, the final status not yet written
        return "complete", ""
    quiet = now - max(_updated(state, run.path), _last_write(run.path))
    if quiet > _patience(run):
        return "stopped", f"{done}; status.json says running but nothing was written for {quiet / 3600:.1f} h (killed?)"
    return "in progress", done


def _status_from_logs(run: Run, now: float) -> tuple[str, str]:
    """(status, note) of a run without status.json: complete when every epoch is logged, else the logs and files say why."""
    if run.epochs and run.epochs_done >= run.epochs:
        return "complete", ""
    done = f"{run.epochs_done}/{run.epochs or '?'} epochs"
    latest = _log_text(run).rsplit(_START, 1)[-1]  # what happened since the last (re)start
    errors = [l for l in latest.splitlines() if _ERROR.search(l)]
    if errors:
        return "failed", f"{done}; log: {errors[-1].strip()[:160]}"
    if "exiting with code 3" in latest:
        return "interrupted", f"{done}; stopped by a signal, last.pth saved: rerun the same command with trainer.auto_resume=true"
    if run.summary is not None:
        return "stopped", f"{done}; ended early (trainer.stop_after_epochs?): continue with resume={run.path / 'checkpoints' / 'last.pth'}"
    quiet = now - _last_write(run.path)
    if quiet > _patience(run):
        return "stopped", f"{done}; no update for {quiet / 3600:.1f} h (killed or failed?)"
    return "in progress", done


def load_run(run_dir: os.PathLike | str, now: Optional[float] = None) -> Run:
    """Read one run directory; UserError naming the file if it is not one or cannot be read."""
    run_dir = Path(run_dir)
    config = _read_config(run_dir)
    try:
        metrics, repeated, warnings = read_metrics(run_dir / "metrics.jsonl")
    except OSError as e:
        raise UserError(f"{run_dir / 'metrics.jsonl'}: cannot read it ({e.strerror or e})") from None
    state, state_warning = read_status(run_dir)
    if not config and not metrics and state is None:
        raise UserError(f"{run_dir} is not a run directory (no readable .hydra/config.yaml, metrics.jsonl or status.json)")
    overrides, job_name = _hydra_meta(run_dir)
    run = Run(run_dir, config, metrics, _read_json(run_dir / "summary.json"), overrides, job_name,
              repeated_epochs=repeated, state=state, warnings=warnings + ([state_warning] if state_warning else []))
    now = time.time() if now is None else now
    run.status, run.note = _status_from_file(run, state, now) if state else _status_from_logs(run, now)
    if repeated:
        run.note = (run.note + "; " if run.note else "") + "metrics.jsonl repeats epochs (restarted without resume, or two jobs shared this dir)"
    if warnings:
        run.note = (run.note + "; " if run.note else "") + f"{len(warnings)} unreadable metrics.jsonl lines skipped"
    return run


# ------------------------------------------------------------------------------------------ recipes
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
