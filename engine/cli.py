"""Command line: Hydra overrides, plus the original SimAM code's flags translated into overrides.

    python main_imagenet.py /data/imagenet --gpu 0,1,2,3 -a resnet50 --attention_type simam --attention_param 0.1
    -> data.root=/data/imagenet trainer.devices=4 model.arch=resnet50 attention=simam attention.e_lambda=0.1

The translation is printed. A user error (unknown name, missing path, bad checkpoint, ...) is one
line on stderr and exit code 2; `--debug` or HYDRA_FULL_ERROR=1 shows the traceback instead.
"""
from __future__ import annotations

import os

import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .errors import EXIT_USER_ERROR, UserError
from .flags import override_value, translate_argv

__all__ = ["CONFIG_DIR", "main", "translate_argv"]

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")

def _run_stamp() -> str:
    """One timestamp for every process of a run (PITFALLS: Hydra's ${now:} differs per torchrun rank)."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if "LOCAL_RANK" in os.environ:
        if run_id not in ("", "none"):
            return run_id[:8]
        try:  # all local ranks share the torchrun agent as parent: use its start time
            ticks = int(Path(f"/proc/{os.getppid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
            btime = next(int(l.split()[1]) for l in Path("/proc/stat").read_text().splitlines() if l.startswith("btime"))
            return time.strftime("%Y%m%d-%H%M%S", time.localtime(btime + ticks / os.sysconf("SC_CLK_TCK")))
        except (OSError, ValueError, IndexError, StopIteration):
            return f"ppid{os.getppid()}"
    return time.strftime("%Y%m%d-%H%M%S")


def _run_dir_of_checkpoint(path: str) -> Optional[Path]:
    """`<run>/checkpoints/x.pth` of this project -> `<run>`."""
    p = Path(path).expanduser().resolve()
    if p.parent.name == "checkpoints" and (p.parent.parent / ".hydra").is_dir():
        return p.parent.parent
    return None


def _prevalidate(config_name: str, overrides: list[str]) -> None:
    """Compose the config once so that a bad override is a one-line error (Hydra prints several)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException

    run_dir = override_value(overrides, "hydra.run.dir")
    overrides = [o for o in overrides if not o.startswith("hydra")]
    if run_dir:
        _check_creatable(Path(run_dir))
    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            compose(config_name=config_name, overrides=overrides)
    except MissingConfigException as e:
        group = (getattr(e, "missing_cfg_file", "") or "").split("/")[0]
        opts = ", ".join(sorted(e.options or [])) if getattr(e, "options", None) else ""
        if group and opts:
            bad = override_value(overrides, group) or override_value(overrides, group.split("/")[0])
            raise UserError(f"unknown {group} {bad!r}; valid: {opts}") from None
        raise UserError(str(e).splitlines()[0]) from None
    except Exception as e:  # noqa: BLE001 - Hydra/OmegaConf override errors
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        msg = "; ".join(lines[:3]) if lines else type(e).__name__
        raise UserError(f"invalid override: {msg}") from None
    finally:
        GlobalHydra.instance().clear()


def _check_creatable(path: Path) -> None:
    """The run directory exists as a writable folder or can be created (before Hydra tries)."""
    p = path.expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK):
        raise UserError(f"cannot create the run directory {path}: {p} is not a writable folder (set hydra.run.dir)")


def main(config_name: str, entry: str, argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of main_cifar.py / main_imagenet.py."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("HYDRA_FULL_ERROR") == "1"
    try:
        hydra_args, translated, debug2 = translate_argv(argv, entry)
        debug = debug or debug2
        if translated:
            print("original flags translated to: " + " ".join(translated), file=sys.stderr)
        overrides = translated + [a for a in hydra_args if "=" in a and not a.startswith("-")]
        flags = [a for a in hydra_args if a.startswith("-")]
        multirun = "-m" in flags or "--multirun" in flags
        extra = _hydra_extras(overrides)
        if not multirun and not any(f in flags for f in ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c")):
            _prevalidate(config_name, overrides + extra)
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)
    os.environ.setdefault("SIMAM_RUN_STAMP", _run_stamp())
    if debug:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv = [sys.argv[0]] + translated + hydra_args + extra
    _hydra_main(config_name, debug)


def _hydra_extras(overrides: list[str]) -> list[str]:
    """Overrides the runner needs: the run dir of a resumed run, quiet non-zero ranks."""
    extra: list[str] = []
    resume = override_value(overrides, "resume")
    evaluating = (override_value(overrides, "evaluate") or "").lower() in ("true", "1", "yes")
    has_dir = any(o.startswith("hydra.run.dir=") for o in overrides)
    if resume and not has_dir:
        run_dir = _run_dir_of_checkpoint(resume)
        if run_dir is not None:  # continue (or evaluate) in the checkpoint's own run directory
            extra.append(f"hydra.run.dir={run_dir}")
            if evaluating:  # keep the training run's .hydra/config.yaml
                extra.append("hydra.output_subdir=null")
    if int(os.environ.get("RANK", "0")) != 0:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    return extra


def _hydra_main(config_name: str, debug: bool) -> None:
    import hydra
    from omegaconf import DictConfig

    from .runner import run

    @hydra.main(config_path=CONFIG_DIR, config_name=config_name, version_base=None)
    def _task(cfg: DictConfig) -> Optional[float]:
        try:
            summary = run(cfg)
        except UserError as e:
            if debug:
                raise
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR)
        return summary.get("best_acc1") if isinstance(summary, dict) else None

    _task()
