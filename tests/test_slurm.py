"""SLURM through Hydra's submitit launcher: the launcher config, and the preempt/time-out -> requeue -> resume path.

What SLURM does is simulated on the CPU: the signal is sent to a running trainer by hand, and
submitit's own requeue machinery runs through its local executor (`hydra/launcher=submitit_local`),
which handles SIGUSR2 exactly as on SLURM except that it restarts the task itself instead of calling
`scontrol requeue`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import helpers.cli as clihelpers
from helpers.cli import FAKE, ROOT, check_ok, metrics, model_state, run_cli

CONFIG_DIR = str(ROOT / "configs")
# the same float arithmetic in every run that is compared (run_cli adds SUBPROCESS_ENV itself; Popen here too)
ENV = {"OMP_NUM_THREADS": "1", **getattr(clihelpers, "SUBPROCESS_ENV", {})}
# 4 steps of 32 images per epoch: after the first epoch's line the trainer is inside epoch 2
TRAIN = FAKE + ["attention=se", "trainer.epochs=4", "sched=cosine"]


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("cifar", overrides=overrides, return_hydra_config=True)


# ------------------------------------------------------------------------------ the launcher config
def test_slurm_launcher_config_composes():
    cfg = _compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=60"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.timeout_min == 60  # overridable keys
    assert launcher.max_num_timeout >= 1  # hydra-submitit's default 0 would never requeue after a time-out
    assert launcher.tasks_per_node == 1 and launcher.gpus_per_node == 1 and launcher.cpus_per_task >= 1
    assert 60 <= launcher.signal_delay_s < 60 * launcher.timeout_min
    assert launcher.additional_parameters.requeue is True
    for key in ("account", "qos", "mem_gb", "setup", "nodes"):
        assert key in launcher, key


def test_sbatch_script_from_the_launcher(tmp_path, monkeypatch):
    """hydra-submitit's own launch() turns slurm.yaml into the sbatch script (submission itself is faked)."""
    import submitit
    from hydra.utils import instantiate

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit checks that srun exists
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    captured = {}

    class Recorder(submitit.AutoExecutor):
        def map_array(self, fn, *iterable):  # instead of sbatch
            captured["executor"], captured["jobs"] = self, list(zip(*iterable))
            return []

    monkeypatch.setattr(submitit, "AutoExecutor", Recorder)
    cfg = _compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    assert launcher.launch([["attention=none", "seed=1"], ["attention=simam", "seed=1"]], initial_job_idx=0) == []
    slurm = captured["executor"]._executor
    assert slurm.max_num_timeout == 20 and len(captured["jobs"]) == 2
    text = slurm._make_submission_file_text("python -u -m submitit.core._submit FOLDER", "uid")
    for line in ("#SBATCH --signal=USR2@300", "#SBATCH --requeue", "#SBATCH --time=1440", "#SBATCH --partition=gpu",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=10"):
        assert line in text, (line, text)


# ------------------------------------------------------------------------------ signal -> last.pth -> resume
@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The same training, never interrupted."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    check_ok(run_cli(TRAIN + [f"hydra.run.dir={run_dir}"], env=ENV))
    return run_dir


def _trainer_handles(sig: int) -> bool:
    from engine.signals import StopFlag

    flag = StopFlag()
    flag.install()
    try:
        return signal.getsignal(sig) == flag._handle
    finally:
        flag.restore()


def _wait_for_epoch(proc: subprocess.Popen, run_dir: Path, timeout: float = 300) -> None:
    """Until epoch 1 is logged and its last.pth written (the trainer logs the epoch first, then saves)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        logged = (run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").read_text().strip()
        if logged and (run_dir / "checkpoints" / "last.pth").is_file():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before its first epoch\n{err[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no epoch finished in time")


def _assert_same_training(run_dir: Path, reference: Path) -> None:
    a, b = model_state(reference / "checkpoints" / "last.pth"), model_state(run_dir / "checkpoints" / "last.pth")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ref = {r["epoch"]: r["val_acc1"] for r in metrics(reference)}
    got = {r["epoch"]: r["val_acc1"] for r in metrics(run_dir)}  # a repeated epoch line: the last one counts
    assert got == ref


@pytest.mark.slow
@pytest.mark.parametrize("sig, workers", [("SIGTERM", 0), ("SIGUSR2", 2)])
def test_signal_saves_last_and_auto_resume_continues_exactly(tmp_path, reference_run, sig, workers):
    """SLURM preemption sends SIGTERM; submitit's time-limit warning is SIGUSR2 (signal_delay_s before the end).

    SIGUSR2 goes, as SLURM sends it, to every process of the job: the trainer and its loader workers.
    """
    signum = getattr(signal, sig)
    assert _trainer_handles(signum), f"engine/signals.py StopFlag must handle {sig}"
    run_dir = tmp_path / "run"
    args = TRAIN + [f"data.workers={workers}", f"hydra.run.dir={run_dir}", "trainer.auto_resume=true"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **ENV}
    proc = subprocess.Popen([sys.executable, "main_cifar.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for_epoch(proc, run_dir)
    if workers:
        os.killpg(proc.pid, signum)  # the trainer and its loader workers
    else:
        proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, f"exit {proc.returncode}\n{err[-3000:]}"
    state = torch.load(run_dir / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert 1 <= state["epoch"] < 4 and state["step"] == 4 * state["epoch"] + state["batch"]
    assert not (run_dir / "summary.json").exists()
    proc2 = check_ok(run_cli(args, env=ENV))  # the requeued job: the same command in the same run dir
    assert "resumed from" in proc2.stdout + proc2.stderr
    assert [r["epoch"] for r in metrics(run_dir)][-1] == 4 and (run_dir / "summary.json").is_file()
    _assert_same_training(run_dir, reference_run)


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below pid (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                cmd = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            out.append((child, cmd))
            todo.append(child)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the submitit task through /proc (Linux)")
def test_submitit_requeue_resumes_the_run(tmp_path, reference_run):
    """submitit's SIGUSR2 handling under Hydra's launcher: checkpoint(), requeue, the same job again, auto-resume."""
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=30", f"hydra.sweep.dir={sweep}",
            "trainer.auto_resume=true"] + TRAIN
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **ENV}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "main_cifar.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = sweep / "fake-cifar_resnet20-se-seed0"
    _wait_for_epoch(proc, run_dir)
    tasks = [pid for pid, cmd in _descendants(proc.pid) if "submitit.core._submit" in cmd]
    assert len(tasks) == 1, _descendants(proc.pid)
    os.kill(tasks[0], signal.SIGUSR2)  # what SLURM sends signal_delay_s before the time limit
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{err[-3000:]}"
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Caught signal SIGUSR2" in logs and "Requeued job" in logs and logs.count("Starting with JobEnvironment") == 2
    assert "resumed from" in logs
    _assert_same_training(run_dir, reference_run)
