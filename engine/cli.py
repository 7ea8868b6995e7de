"""Command line: Hydra overrides, plus the original SimAM code's flags translated into overrides.

    python main_imagenet.py /data/imagenet --gpu 0,1,2,3 -a resnet50 --attention_type simam --attention_param 0.1
    -> data.root=/data/imagenet trainer.devices=4 model.arch=resnet50 attention=simam attention.e_lambda=0.1

The translation is printed. A user error (unknown name, missing path, bad checkpoint, ...) is one
line on stderr and exit code 2; `--debug` or HYDRA_FULL_ERROR=1 shows the traceback instead.
"""
from __future__ import annotations

import os
import secrets

import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from .errors import EXIT_USER_ERROR, UserError
from .contract import override_text
from .flags import override_value, translate_argv

__all__ = ["CONFIG_DIR", "main", "translate_argv"]

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")

def _run_stamp() -> str:
    """One timestamp for every process of a run (PITFALLS: Hydra's ${now:} differs per torchrun rank)."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if "LOCAL_RANK" in os.environ:
        if run_id not in ("", "none"):
            return run_id[:8]
        try:  # all local ranks share the torchrun agent as parent: its start time and pid
            ticks = int(Path(f"/proc/{os.getppid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
            btime = next(int(l.split()[1]) for l in Path("/proc/stat").read_text().splitlines() if l.startswith("btime"))
            start = time.localtime(btime + ticks / os.sysconf("SC_CLK_TCK"))
            return time.strftime("%Y%m%d-%H%M%S", start) + f"-p{os.getppid()}"
        except (OSError, ValueError, IndexError, StopIteration):
            return f"ppid{os.getppid()}"
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)  # two runs started in the same second differ



def _run_dir_of_checkpoint(path: str) -> Optional[Path]:
    """`<run>/checkpoints/x.pth` of this project -> `<run>`."""
    p = Path(path).expanduser().resolve()
    if p.parent.name == "checkpoints" and ((p.parent.parent / ".hydra").is_dir() or (p.parent.parent / "metrics.jsonl").is_file()):
        return p.parent.parent
    return None


def _check_creatable(path: Path) -> None:
    """The run directory exists as a writable folder or can be created (before Hydra tries)."""
    p = path.expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK):
        raise UserError(f"cannot create the run directory {path}: {p} is not a writable folder (set hydra.run.dir)")


def _compose(config_name: str, overrides: list[str]) -> Any:
    """The config as the job will see it (with the hydra node); a bad override is one line with
    the closest valid names (engine.help)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .help import explain_compose_error

    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except Exception as e:  # noqa: BLE001 - Hydra/OmegaConf override errors
        raise UserError(explain_compose_error(e, overrides, config_name)) from None
    finally:
        GlobalHydra.instance().clear()


def _resolved(cfg: Any) -> tuple[dict, Path]:
    """(the config as a plain dict, resolved, run_dir set) and the run directory."""
    from omegaconf import OmegaConf

    run_dir = Path(str(cfg.hydra.run.dir))
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    plain["run_dir"] = str(run_dir)
    plain = OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
    return plain, run_dir


def _entry_defaults(entry: str, overrides: list[str]) -> list[str]:
    """main_cifar.py builds CIFAR networks: an image folder gets 32 px and CIFAR augmentation
    unless the command says otherwise (the folder default is 224 px, 49x the compute)."""
    data = override_value(overrides, "data")
    if entry != "cifar" or data not in ("imagefolder", "imagenet"):
        return []
    extra = [f"data.{k}={v}" for k, v in (("image_size", 32), ("augment", "cifar")) if override_value(overrides, f"data.{k}") is None]
    if extra:
        print(f"note: main_cifar.py with data={data}: {' '.join(extra)} (CIFAR networks; override to change)", file=sys.stderr)
    return extra


def _true(overrides: list[str], key: str) -> bool:
    return (override_value(overrides, key) or "").lower() in ("true", "1", "yes")


def _resumed_checkpoint(overrides: list[str]) -> Optional[str]:
    """resume=, or trainer.auto_resume=true with an explicit hydra.run.dir holding last.pth."""
    resume = override_value(overrides, "resume")
    if resume:
        return resume
    run_dir = override_value(overrides, "hydra.run.dir")
    if _true(overrides, "trainer.auto_resume") and run_dir and (Path(run_dir) / "checkpoints" / "last.pth").is_file():
        return str(Path(run_dir) / "checkpoints" / "last.pth")
    return None


def _checkpoint_extras(overrides: list[str]) -> tuple[list[str], Optional[dict]]:
    """Run dir of a resumed/evaluated checkpoint, an evaluation's identity from the checkpoint, and
    (for a resume) the checkpoint's meta, whose config the command starts from."""
    resume = _resumed_checkpoint(overrides)
    extra: list[str] = []
    if not resume:
        return extra, None
    if override_value(overrides, "hydra.run.dir") is None:
        run_dir = _run_dir_of_checkpoint(resume)
        if run_dir is not None:  # continue (or evaluate) in the checkpoint's own run directory
            extra.append(f"hydra.run.dir={override_text(str(run_dir))}")
    if not Path(resume).expanduser().is_file():
        return extra, None
    from .contract import evaluation_overrides, read_meta, resume_group_overrides

    meta = read_meta(resume, trust=_true(overrides, "trust_checkpoint"))
    if not meta or not meta.get("config"):
        return extra, None
    if _true(overrides, "evaluate"):
        classes = (meta.get("model_spec") or {}).get("num_classes")
        return extra + evaluation_overrides(meta["config"], overrides, override_value(overrides, "data") is not None, classes), None
    if override_value(overrides, "save_weights") or override_value(overrides, "init_from"):
        return extra, None
    return extra + resume_group_overrides(meta["config"], overrides), meta


def _prepare(config_name: str, entry: str, overrides: list[str]) -> list[str]:
    """Everything that can refuse a command, before Hydra creates a run directory. Returns the
    overrides to add (the run directory fixed, the checkpoint's identity for an evaluation)."""
    extra = _entry_defaults(entry, overrides)
    more, resumed = _checkpoint_extras(overrides + extra)
    extra += more
    cfg = _compose(config_name, overrides + extra)
    plain, run_dir = _resolved(cfg)
    if resumed is not None:  # a resume starts from the run's own config; what the command sets is compared
        from .contract import resume_value_overrides

        extra += resume_value_overrides(resumed["config"], plain, overrides)
        cfg = _compose(config_name, overrides + extra)
        plain, run_dir = _resolved(cfg)
    from .config_check import check_config

    check_config(plain, entry)
    _check_creatable(run_dir)
    from .contract import plan_start, read_meta

    trust = bool(plain.get("trust_checkpoint"))
    plan_start(plain, run_dir, lambda p: read_meta(p, trust=trust))
    if override_value(overrides + extra, "hydra.run.dir") is None:
        extra.append(f"hydra.run.dir={override_text(str(run_dir))}")
    return extra


_INFO_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc", "--version")


def main(config_name: str, entry: str, argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of main_cifar.py / main_imagenet.py."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ.setdefault("SIMAM_RUN_STAMP", _run_stamp())
    try:
        hydra_args, translated, debug2 = translate_argv(argv, entry)
        debug = debug or debug2
        flags = [a for a in hydra_args if a.startswith("-")]
        if any(f in ("--help", "-h") for f in flags) and _print_help(entry):
            return
        if translated:
            print("original flags translated to: " + " ".join(translated), file=sys.stderr)
        overrides = translated + [a for a in hydra_args if "=" in a and not a.startswith("-")]
        extra: list[str] = []
        if not ("-m" in flags or "--multirun" in flags) and not any(f in _INFO_FLAGS for f in flags):
            extra = _prepare(config_name, entry, overrides)
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)
    if debug:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv = [sys.argv[0]] + translated + hydra_args + extra
    _hydra_main(config_name, debug)


def _print_help(entry: str) -> bool:
    from .help import help_text

    print(help_text(entry))
    return True


def _hydra_main(config_name: str, debug: bool) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from .runner import run

    @hydra.main(config_path=CONFIG_DIR, config_name=config_name, version_base=None)
    def _task(cfg: DictConfig) -> Optional[float]:
        hc = HydraConfig.get()
        try:
            summary = run(cfg, job=hc.job.name, overrides=list(hc.overrides.task))
        except UserError as e:
            if debug:
                raise
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR)
        return summary.get("best_acc1") if isinstance(summary, dict) else None

    _task()
