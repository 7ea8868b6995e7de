"""The config a command would run with, composed in-process by Hydra (as engine/cli.py does)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from engine.config_check import plain_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def composed(overrides: Sequence[str], entry: str = "cifar") -> dict:
    """The resolved config of `main_<entry>.py OVERRIDES` as a plain dict (no hydra node, run_dir
    unresolved); Hydra's own errors are raised."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            return plain_config(compose(config_name=entry, overrides=list(overrides)))
    finally:
        GlobalHydra.instance().clear()


def compose_plain(entry: str, overrides: Sequence[str], run_dir: Path) -> dict:
    """`composed` with run_dir set: the dict engine.build takes."""
    cfg = composed(overrides, entry)
    cfg["run_dir"] = str(run_dir)
    return cfg
