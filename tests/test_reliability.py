"""Preemption, crashes and bad input: each ends in a clear message and a run that can continue."""
from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.cli import FAKE, ROOT, SUBPROCESS_ENV, assert_user_error, check_ok, metrics, model_state, run_cli, write_jpeg_folder
from engine.checkpoint import save_atomic
from engine.errors import UserError

# 2 epochs of 8 steps (256 images, batch 32); log (and agree on signals) every step
LONG = ["data=fake", "data.num_train=256", "data.num_val=40", "data.batch_size=32", "data.eval_batch_size=20",
        "trainer.epochs=2", "trainer.log_every=1", "trainer.progress=lines", "attention=simam"]


def _start(args, env=None):
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **SUBPROCESS_ENV, **(env or {})}
    return subprocess.Popen([sys.executable, "main_cifar.py", *map(str, args)], cwd=ROOT, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _signal_at_step(proc, step: int, sig: int, epoch: int = 1, timeout: float = 400) -> str:
    """Read the run's output until it logs `epoch E/.. step S/..`, then send `sig`; return all output."""
    out, deadline, sent = [], time.time() + timeout, False
    for line in proc.stdout:
        out.append(line)
        if not sent and f"epoch {epoch}/" in line and f" step {step}/" in line:
            proc.send_signal(sig)
            sent = True
        if time.time() > deadline:
            proc.kill()
            break
    proc.wait(timeout=120)
    assert sent, "".join(out)[-3000:]
    return "".join(out)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full") / "r"
    check_ok(run_cli(LONG + [f"hydra.run.dir={run_dir}"]))
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("sig, workers", [(signal.SIGTERM, 0), (signal.SIGUSR1, 2), (signal.SIGINT, 0)])
def test_signal_saves_mid_epoch_and_resume_is_bit_exact(uninterrupted, tmp_path, sig, workers):
    step = random.randint(1, 7)  # a random step of the first epoch (not its last)
    epoch = random.choice([1, 2])
    run_dir = tmp_path / "r"
    args = LONG + [f"data.workers={workers}", f"hydra.run.dir={run_dir}"]
    proc = _start(args)
    out = _signal_at_step(proc, step, sig, epoch=epoch)
    assert proc.returncode == 3, out[-3000:]
    assert "Traceback" not in out
    ckpt = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)
    # the step in progress when the signal arrived is finished, then the run stops
    assert (ckpt["epoch"], ckpt["batch"]) in {(epoch - 1, step), (epoch - 1, step + 1)}, (ckpt["epoch"], ckpt["batch"], step)
    check_ok(run_cli(args[:-1] + [f"resume={run_dir / 'checkpoints' / 'last.pth'}"]))
    a, b = model_state(uninterrupted / "checkpoints" / "last.pth"), model_state(run_dir / "checkpoints" / "last.pth")
    for k in a:
        assert torch.equal(a[k], b[k]), (k, sig, step, epoch)
    assert [r["val_acc1"] for r in metrics(run_dir)][-1] == [r["val_acc1"] for r in metrics(uninterrupted)][-1]


@pytest.mark.slow
def test_signal_with_two_processes_stops_both_and_resumes(tmp_path):
    run_dir = tmp_path / "ddp"
    env = {"OMP_NUM_THREADS": "1"}
    args = LONG + ["trainer.devices=2", f"hydra.run.dir={run_dir}"]
    proc = _start(args, env=env)
    out = _signal_at_step(proc, 3, signal.SIGTERM)
    assert proc.returncode == 3, out[-3000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["batch"] in (3, 4)
    check_ok(run_cli(args[:-1] + [f"resume={run_dir / 'checkpoints' / 'last.pth'}"], env=env))
    full = tmp_path / "full"
    check_ok(run_cli(LONG + ["trainer.devices=2", f"hydra.run.dir={full}"], env=env))
    a, b = model_state(full / "checkpoints" / "last.pth"), model_state(run_dir / "checkpoints" / "last.pth")
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_dead_rank_stops_the_run(tmp_path):
    run_dir = tmp_path / "dead"
    proc = _start(LONG + ["trainer.epochs=50", "trainer.devices=2", "trainer.dist_timeout=30", f"hydra.run.dir={run_dir}"])
    out = []
    for line in proc.stdout:
        out.append(line)
        if " step 2/" in line:
            break
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == proc.pid]
    workers = [c for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text().replace("\0", " ")]
    assert len(workers) == 2, children
    t0 = time.time()
    os.kill(workers[1], signal.SIGKILL)
    out.append(proc.communicate(timeout=120)[0])
    assert time.time() - t0 < 60
    text = "".join(out)
    assert proc.returncode not in (0, None) and "training process" in text and "died" in text, text[-2000:]


def _ppid(p: Path) -> int:
    try:
        return int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_sigkill_during_save_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "last.pth"
    save_atomic({"version": torch.tensor(-1), "w": torch.zeros(10)}, path)
    code = (
        "import torch\n"
        "from engine.checkpoint import save_atomic\n"
        "big = torch.randn(8_000_000)\n"
        "i = 0\n"
        "while True:\n"
        "    save_atomic({'version': torch.tensor(i), 'w': big}, %r); i += 1\n"
    ) % (str(path),)
    rng = random.Random()
    for _ in range(4):
        child = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(rng.uniform(1.5, 4.0))  # import torch, then somewhere inside a save
        child.send_signal(signal.SIGKILL)
        child.wait()
        state = torch.load(path, weights_only=True)  # the previous or the new checkpoint, whole
        assert state["w"].numel() in (10, 8_000_000)
    assert not [p for p in tmp_path.iterdir() if p.name != "last.pth" and not p.name.endswith(".tmp")]


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_atomic({"epoch": 1}, path)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match="No space left on device") as e:
        save_atomic({"epoch": 2}, path)
    assert "\n" not in str(e.value) and "previous file is kept" in str(e.value) and "MiB free" in str(e.value)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_keep_last(tmp_path):
    run_dir = tmp_path / "k"
    check_ok(run_cli(FAKE + ["trainer.epochs=4", "trainer.keep_last=2", "trainer.max_steps_per_epoch=1", f"hydra.run.dir={run_dir}"]))
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["best.pth", "epoch_0003.pth", "epoch_0004.pth", "last.pth"], names


@pytest.mark.parametrize("content, needle", [(b"", "empty"), (b"PK\x03\x04garbage", "corrupt or truncated"), (b"{}", "not a PyTorch checkpoint")])
def test_bad_checkpoint_for_resume_is_refused_and_kept(tmp_path, content, needle):
    bad = tmp_path / "last.pth"
    bad.write_bytes(content)
    assert_user_error(run_cli(FAKE + [f"resume={bad}"], timeout=300), str(bad), needle)
    assert bad.read_bytes() == content


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("small") / "r"
    check_ok(run_cli(FAKE + ["attention=se", "trainer.epochs=1", "trainer.max_steps_per_epoch=1", f"hydra.run.dir={run_dir}"]))
    return run_dir / "checkpoints" / "last.pth"


@pytest.mark.parametrize("args, needle", [
    (["model.arch=cifar_resnet32", "attention=se"], "model.arch 'cifar_resnet20' -> 'cifar_resnet32'"),
    (["attention=cbam"], "attention.name 'se' -> 'cbam'"),
    (["attention=se", "data.num_classes=7"], "data.num_classes 10 -> 7"),
    (["attention=se", "attention.reduction=4"], "attention.reduction 16 -> 4"),
])
def test_checkpoint_of_another_model_is_refused(small_run, args, needle):
    assert_user_error(run_cli(FAKE + args + [f"resume={small_run}", "trainer.epochs=2"], timeout=300), needle, "init_from=")


@pytest.mark.parametrize("args, needle", [
    (["model.arch=cifar_resnet32", "attention=se"], "arch=cifar_resnet20"),
    (["attention=cbam"], "attention=se"),
])
def test_weights_of_another_model_are_refused_for_init_from(small_run, tmp_path, args, needle):
    assert_user_error(run_cli(FAKE + args + [f"init_from={small_run}", f"hydra.run.dir={tmp_path / 'r'}"], timeout=300), needle)


def test_nonfinite_loss_stops_with_step_and_lr(tmp_path):
    run_dir = tmp_path / "nan"
    proc = run_cli(FAKE + ["optim.lr=1e30", "trainer.epochs=2", f"hydra.run.dir={run_dir}"], timeout=300)
    line = assert_user_error(proc, "non-finite loss at step", "lr 1e+30", "trainer.skip_nonfinite=true")
    assert "checkpoint" in line


def test_skip_nonfinite_counts(tmp_path):
    proc = check_ok(run_cli(FAKE + ["optim.lr=1e30", "trainer.epochs=1", "trainer.skip_nonfinite=true", f"hydra.run.dir={tmp_path / 's'}"], timeout=300))
    assert "steps with a non-finite loss" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    return write_jpeg_folder(tmp_path_factory.mktemp("jpegs"))


def test_corrupt_image_fails_with_its_path_or_is_skipped(jpegs, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(jpegs, root)
    bad = root / "train" / "class1" / "0.jpg"
    bad.write_bytes(b"not a jpeg at all")
    args = ["data=imagefolder", f"data.root={root}", "data.image_size=32", "data.batch_size=4", "data.eval_batch_size=3",
            "data.workers=0", "trainer.epochs=1", "data.augment=cifar"]
    assert_user_error(run_cli(args + [f"hydra.run.dir={tmp_path / 'fail'}"], timeout=300), str(bad))
    proc = check_ok(run_cli(args + ["data.bad_images=skip", f"hydra.run.dir={tmp_path / 'skip'}"], timeout=300))
    assert "skipped 1 unreadable training images" in proc.stdout + proc.stderr


@pytest.mark.parametrize("layout, needle", [("no_val", "val"), ("empty_class", "class2")])
def test_broken_image_folder(jpegs, tmp_path, layout, needle):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(jpegs, root)
    if layout == "no_val":
        shutil.rmtree(root / "val")
    else:
        for f in (root / "train" / "class2").iterdir():
            f.unlink()
    assert_user_error(run_cli(["data=imagefolder", f"data.root={root}", "data.image_size=32"], timeout=300), str(root), needle)


def test_unwritable_run_dir(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    assert_user_error(run_cli(FAKE + [f"hydra.run.dir={f / 'run'}"], timeout=300), str(f))


def test_gpu_ids_beyond_the_machine(monkeypatch):
    from engine.flags import translate_argv

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match=r"--gpu names GPU 2 but this machine has 2 \(valid ids: 0-1\)"):
        translate_argv(["--gpu", "0,1,2,3"], "imagenet")


# ------------------------------------------------------------------------- files (engine.files)
def _failing_save_epoch_files(tmp_path, monkeypatch, fail_on: str, error: BaseException):
    """save_epoch_files with `fail_on` (last / best / epoch) failing; returns the UserError."""
    import shutil

    from engine.checkpoint import RunPaths, save_epoch_files

    paths = RunPaths(tmp_path)
    save_epoch_files(paths, {"epoch": 1, "batch": 0, "w": torch.ones(3)}, improved=True, keep_last=2)
    real_save, real_copy = torch.save, shutil.copyfileobj
    calls = {"n": 0}

    def save(obj, f, *a, **k):
        if fail_on == "last":
            raise error
        return real_save(obj, f, *a, **k)

    def copy(src, dst, *a, **k):
        calls["n"] += 1
        if (fail_on == "best" and calls["n"] == 1) or (fail_on == "epoch" and calls["n"] == 2):
            raise error
        return real_copy(src, dst, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(shutil, "copyfileobj", copy)
    with pytest.raises(UserError) as e:
        save_epoch_files(paths, {"epoch": 2, "batch": 0, "w": torch.zeros(3)}, improved=True, keep_last=2)
    monkeypatch.undo()
    return e.value, paths


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")])
@pytest.mark.parametrize("fail_on, name", [("last", "last.pth"), ("best", "best.pth"), ("epoch", "epoch_0002.pth")])
def test_write_error_on_each_checkpoint_file_is_one_line_and_keeps_earlier_files(tmp_path, monkeypatch, fail_on, name, error):
    err, paths = _failing_save_epoch_files(tmp_path, monkeypatch, fail_on, error)
    msg = str(err)
    assert "\n" not in msg and name in msg and "free" in msg, msg
    for f in (paths.last, paths.best, paths.epoch_file(1)):
        torch.load(f, weights_only=True)  # every file on disk is whole
    assert not list(paths.checkpoints.glob("*.tmp"))


def test_writer_never_follows_a_planted_symlink(tmp_path, monkeypatch):
    import secrets

    from engine import files

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    names = [f"{i:016x}" for i in range(100)]
    for n in names:  # every temp name the writer can draw
        os.symlink(victim, tmp_path / f".out.json.{n}.tmp")
    seq = iter(names * 2)
    monkeypatch.setattr(secrets, "token_hex", lambda k=8: next(seq))
    with pytest.raises(UserError, match="random names were taken"):
        files.write_json(tmp_path / "out.json", {"a": 1})
    assert victim.read_text() == "precious" and not (tmp_path / "out.json").exists()
    (tmp_path / f".out.json.{names[-1]}.tmp").unlink()  # one free name: the writer takes it
    seq2 = iter(names)
    monkeypatch.setattr(secrets, "token_hex", lambda k=8: next(seq2))
    files.write_json(tmp_path / "out.json", {"a": 1})
    assert victim.read_text() == "precious" and (tmp_path / "out.json").read_text().strip().endswith("}")


def _mount_tmpfs(path: Path, size_kb: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("size_kb, extra, name", [
    (3300, [], "best.pth"),                                       # last.pth (2.2 MB) fits, its best copy does not
    (5400, ["trainer.keep_last=1"], "epoch_0001.pth"),            # last + best fit, the epoch copy does not
    (5400, ["trainer.epochs=2"], "last.pth"),                     # epoch 2's last.pth beside epoch 1's last + best
])
def test_full_disk_during_a_run(tmp_path, size_kb, extra, name):
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, size_kb):
        pytest.skip("cannot mount a tmpfs here (needs root): the injected-error tests above cover the writer")
    try:
        run_dir = mnt / "run"
        proc = run_cli(FAKE + ["attention=simam", "trainer.epochs=1", f"hydra.run.dir={run_dir}"] + extra)
        line = assert_user_error(proc, name, "free")
        for f in (run_dir / "checkpoints").glob("*.pth"):
            torch.load(f, weights_only=True)
        assert not list(run_dir.rglob("*.tmp")), line
    finally:
        subprocess.run(["umount", str(mnt)])


@pytest.mark.slow
def test_sigkill_then_resume_has_no_duplicate_epoch_and_no_temp_file(tmp_path):
    run_dir = tmp_path / "k"
    args = LONG + ["trainer.epochs=3", f"hydra.run.dir={run_dir}"]
    proc = _start(args)
    killed_at = random.choice([(2, random.randint(1, 7)), (3, random.randint(1, 7))])
    for line in proc.stdout:
        if f"epoch {killed_at[0]}/" in line and f" step {killed_at[1]}/" in line:
            proc.kill()
            break
    proc.wait(timeout=60)
    check_ok(run_cli(LONG + ["trainer.epochs=3", f"resume={run_dir / 'checkpoints' / 'last.pth'}"]))
    epochs = [r["epoch"] for r in metrics(run_dir)]
    assert epochs == [1, 2, 3], (epochs, killed_at)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val/acc1")] == [1, 2, 3], killed_at
    assert not list(run_dir.rglob("*.tmp"))
    import json

    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"


@pytest.mark.slow
def test_sigusr2_to_a_two_process_run_saves_and_exits_3(tmp_path):
    run_dir = tmp_path / "usr2"
    proc = _start(LONG + ["trainer.devices=2", f"hydra.run.dir={run_dir}"], env={"OMP_NUM_THREADS": "1"})
    out = _signal_at_step(proc, 2, signal.SIGUSR2)
    assert proc.returncode == 3, out[-3000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["batch"] in (2, 3)
    import json

    assert json.loads((run_dir / "status.json").read_text())["state"] == "preempted"


def test_failure_after_start_is_recorded_in_status_and_log(tmp_path):
    import json

    run_dir = tmp_path / "nan"
    assert_user_error(run_cli(FAKE + ["optim.lr=1e30", "trainer.epochs=2", f"hydra.run.dir={run_dir}"], timeout=300), "non-finite")
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "non-finite loss" in status["error"] and status["exit_code"] == 2
    assert "error: non-finite loss" in (run_dir / "main_cifar.log").read_text()
