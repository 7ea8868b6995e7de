"""A tiny real sweep shared by the script tests (report, gradcam, throughput, validate): a 2x2 Hydra
multirun, attention none/simam x seeds 1, 2, one epoch of data=fake each (about 20 s on 2 cores),
run once per test session however many test files ask for it."""
from __future__ import annotations

from pathlib import Path

from helpers.cli import check_ok, run_cli

TINY = ["data=fake", "data.num_train=64", "data.num_val=32", "data.batch_size=32", "trainer.epochs=1"]
ENV = {"OMP_NUM_THREADS": "1"}  # (run_cli adds helpers.cli.SUBPROCESS_ENV: SimAM without torch.compile start-up)
RUNS = [f"fake-cifar_resnet20-{a}-seed{s}" for a in ("none", "simam") for s in (1, 2)]

_BUILT: dict[str, Path] = {}


def tiny_sweep(tmp_path_factory) -> Path:
    """The sweep directory (its run dirs are RUNS), built on first use in the session's temporary folder."""
    if "sweep" not in _BUILT:
        sweep_dir = tmp_path_factory.mktemp("multirun") / "sweep"
        check_ok(run_cli(["-m", *TINY, "attention=none,simam", "seed=1,2", f"hydra.sweep.dir={sweep_dir}"], env=ENV))
        _BUILT["sweep"] = sweep_dir
    return _BUILT["sweep"]


def checkpoint(sweep_dir: Path, attention: str = "none", seed: int = 1, name: str = "best.pth") -> Path:
    return sweep_dir / f"fake-cifar_resnet20-{attention}-seed{seed}" / "checkpoints" / name


def one_error_line(capsys) -> str:
    """The single `error:` line a script printed on stderr (no traceback)."""
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
