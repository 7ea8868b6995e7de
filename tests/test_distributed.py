"""engine.distributed: threads per spawned process, stop signals and failures of the ranks, GPUs per node."""
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from engine.distributed import SpawnError, init_distributed, spawn, threads_per_process
from engine.errors import UserError


def test_threads_per_process_splits_the_cores_unless_omp_num_threads_is_set():
    assert threads_per_process(4, cores=16, environ={}) == 4
    assert threads_per_process(3, cores=2, environ={}) == 1
    assert threads_per_process(2, cores=7, environ={"OMP_NUM_THREADS": ""}) == 3
    assert threads_per_process(2, cores=16, environ={"OMP_NUM_THREADS": "8"}) is None


class _FakeCuda:
    def __init__(self, count: int) -> None:
        self.count, self.selected = count, []

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "set_device", self.selected.append)


def _torchrun_env(monkeypatch, rank: int, local_rank: int, local_world: int, world: int) -> None:
    for key, value in (("RANK", rank), ("LOCAL_RANK", local_rank), ("LOCAL_WORLD_SIZE", local_world), ("WORLD_SIZE", world)):
        monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")


def test_more_local_processes_than_visible_gpus_are_refused_in_one_line(monkeypatch):
    cuda = _FakeCuda(1)
    cuda.install(monkeypatch)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: pytest.fail("joined a group"))
    for local_rank in (0, 1):  # every rank says so, before it joins the group
        _torchrun_env(monkeypatch, local_rank, local_rank, 2, 2)
        with pytest.raises(UserError) as e:
            init_distributed("auto")
        assert str(e.value) == ("2 processes on this node but 1 visible GPU(s) (CUDA_VISIBLE_DEVICES 3): start at most 1 "
                                "per node (torchrun --nproc_per_node=1 or trainer.devices=1)")
    assert cuda.selected == []


def test_each_local_rank_gets_its_own_gpu(monkeypatch):
    cuda = _FakeCuda(2)
    cuda.install(monkeypatch)
    _torchrun_env(monkeypatch, 3, 1, 2, 1)  # WORLD_SIZE=1: no group is joined in this test
    info = init_distributed("cuda")
    assert info.device == torch.device("cuda", 1) and cuda.selected == [1] and info.rank == 3


def test_a_launcher_binding_one_gpu_per_task_is_accepted(monkeypatch):
    cuda = _FakeCuda(1)
    cuda.install(monkeypatch)
    _torchrun_env(monkeypatch, 2, 2, 0, 1)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")  # not torchrun: e.g. srun --gpus-per-task=1
    assert init_distributed("auto").device == torch.device("cuda", 0) and cuda.selected == [0]
    cuda.count = 2  # two GPUs visible to local rank 2: a third process on two GPUs
    with pytest.raises(UserError, match="3 processes on this node but 2 visible GPU"):
        init_distributed("auto")


# ------------------------------------------------------------------ spawned ranks (module-level: pickled by name)
def _fail_on_rank_1(kind: str) -> None:
    if os.environ["RANK"] != "1":
        return
    if kind == "user":
        raise UserError("data.batch_size=3 does not split over 2 processes: use a multiple of 2")
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError("boom\nsecond line")


def _wait_for_stop_signal(out: str) -> None:
    got = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, lambda signum, frame: got.append(signum))
    Path(out, f"ready{os.environ['RANK']}").touch()
    deadline = time.time() + 60
    while not got and time.time() < deadline:
        time.sleep(0.01)
    name = signal.Signals(got[0]).name if got else "nothing"
    Path(out, f"got{os.environ['RANK']}").write_text(json.dumps([name, torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")]))
    raise SystemExit(3)


@pytest.mark.slow
@pytest.mark.parametrize("kind, code, message", [
    ("user", 2, "data.batch_size=3 does not split over 2 processes: use a multiple of 2"),
    ("crash", 1, "training process 1 failed: RuntimeError: boom"),
    ("kill", 1, "training process 1 died (SIGKILL); the others were stopped"),
])
def test_a_failing_rank_is_reported_in_one_line_with_its_exit_code(kind, code, message, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with pytest.raises(SpawnError) as e:
        spawn(_fail_on_rank_1, 2, args=(kind,))
    assert (str(e.value), e.value.exit_code, e.value.rank, e.value.signum) == (message, code, 1, None)
    assert ("Traceback" in e.value.detail) == (kind == "crash")


@pytest.mark.slow
@pytest.mark.parametrize("sent, received", [("SIGUSR2", "SIGUSR2"), ("SIGINT", "SIGTERM")])
def test_the_parent_passes_stop_signals_on_to_every_rank_with_its_share_of_the_cores(sent, received, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = threads_per_process(2, environ={})
    before = signal.getsignal(getattr(signal, sent))

    def send_when_ready() -> None:
        deadline = time.time() + 60
        while not all((tmp_path / f"ready{r}").exists() for r in (0, 1)) and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), getattr(signal, sent))

    threading.Thread(target=send_when_ready, daemon=True).start()
    with pytest.raises(SpawnError) as e:
        spawn(_wait_for_stop_signal, 2, args=(str(tmp_path),))
    assert e.value.exit_code == 3 and e.value.signum == getattr(signal, sent)
    got = [json.loads((tmp_path / f"got{r}").read_text()) for r in (0, 1)]
    assert got == [[received, threads, str(threads)]] * 2
    assert str(e.value).endswith(f"stopped after this process received {sent} (exit code 3)")
    assert signal.getsignal(getattr(signal, sent)) is before
