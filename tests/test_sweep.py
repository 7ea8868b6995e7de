"""scripts/sweep.py: the jobs of a Hydra sweep as concurrent processes (one per GPU group, or N on the CPU)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.cli import check_ok, run_cli
from helpers.sweeps import ENV, TINY, one_error_line
from scripts import sweep
from scripts.runs import load_run


def test_plans_one_job_per_gpu(capsys):
    assert sweep.main(["--gpus", "0-3", "--gpus-per-job", "2", "--dry-run", "main_imagenet.py", "experiment=paper/imagenet_resnet50",
                       "attention=none,simam,se", "data.root=/data/imagenet", "hydra.sweep.dir=/tmp/never"]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[")]
    assert [l.split()[1] for l in lines] == ["CUDA_VISIBLE_DEVICES=0,1", "CUDA_VISIBLE_DEVICES=2,3", "CUDA_VISIBLE_DEVICES=0,1"]
    assert all("trainer.devices=2" in l and "hydra.run.dir=" in l for l in lines)
    assert "imagenet-resnet50-simam-seed0" in lines[1]
    assert not Path("/tmp/never").exists()


def test_expand_and_gpu_ids():
    assert sweep.expand(["a=1,2", "b=x", "seed=range(1,3)"]) == [["a=1", "b=x", "seed=1"], ["a=1", "b=x", "seed=2"],
                                                                 ["a=2", "b=x", "seed=1"], ["a=2", "b=x", "seed=2"]]
    assert sweep.parse_gpus("0-2,5") == ["0", "1", "2", "5"]


def test_errors_are_one_line(capsys):
    cases = [
        (["--jobs", "2", "main_foo.py", "seed=1,2"], "unknown script"),
        (["--jobs", "2", "main_cifar.py", "attention=nope"], "attention"),
        (["--jobs", "2", "main_cifar.py", "attention=simam", "attention.e_lambda=0.1,0.2"], "share the run dir"),
        (["main_cifar.py", "seed=1,2"], "--gpus IDS"),
        (["--gpus", "0-x", "main_cifar.py"], "--gpus"),
        (["--gpus", "0", "--gpus-per-job", "2", "main_cifar.py"], "--gpus-per-job 2"),
        (["--jobs", "1", "main_cifar.py", "--resume", "x"], "not flags"),
    ]
    for argv, needle in cases:
        assert sweep.main(argv) == 2, argv
        assert needle in one_error_line(capsys), (argv, needle)


@pytest.mark.slow
def test_runs_jobs_concurrently(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["--jobs", "2", "main_cifar.py", *TINY, "attention=none,simam", f"hydra.sweep.dir={sweep_dir}"]
    proc = check_ok(run_cli(["scripts.sweep", *args], script="-m", env=ENV))
    assert "2/2 jobs succeeded" in proc.stdout
    records = [json.loads(l) for l in (sweep_dir / "sweep.jsonl").read_text().splitlines()]
    assert sorted(r["run_dir"] for r in records) == [str(sweep_dir / f"fake-cifar_resnet20-{a}-seed0") for a in ("none", "simam")]
    assert all(r["returncode"] == 0 for r in records)
    assert max(r["start"] for r in records) < min(r["end"] for r in records)  # the two ran at the same time
    for r in records:
        run = load_run(r["run_dir"])
        assert run.status == "complete" and (Path(r["run_dir"]) / "console.log").is_file()
        assert not any(o.startswith("hydra.") for o in run.overrides)
    again = check_ok(run_cli(["scripts.sweep", *args], script="-m", env=ENV))  # the same command: nothing left to do
    assert again.stdout.count("skip (complete)") == 2 and "nothing to run" in again.stdout
