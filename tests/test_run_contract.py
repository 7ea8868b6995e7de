"""The run contract (engine/contract.py): identity, resume, extend, fine-tune, evaluate.

Each test runs the real entry point as a user would; the unit tests at the end use the public
functions of engine.contract directly.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.cli import FAKE, ROOT, SUBPROCESS_ENV, assert_user_error, check_ok, metrics, run_cli, write_jpeg_folder
from engine.contract import RESUME_MAY_CHANGE, config_changes, evaluation_overrides, flatten
from engine.errors import UserError

COSINE = FAKE + ["sched=cosine", "attention=simam"]


def _hashes(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch cosine run."""
    run_dir = tmp_path_factory.mktemp("contract") / "run"
    check_ok(run_cli(COSINE + ["trainer.epochs=1", f"hydra.run.dir={run_dir}"]))
    return run_dir


def test_fresh_run_into_a_finished_run_is_refused(finished):
    before = _hashes(finished)
    proc = run_cli(COSINE + ["trainer.epochs=1", f"hydra.run.dir={finished}"])
    line = assert_user_error(proc, "already holds a run", "epoch 1 of 1", "resume=", "hydra.run.dir=")
    assert str(finished / "checkpoints" / "last.pth") in line
    assert _hashes(finished) == before


@pytest.mark.parametrize("change, keys", [
    (["optim.lr=0.001"], ["optim.lr"]),
    (["optim=adam"], ["optim.name"]),
    (["data.batch_size=16"], ["data.batch_size"]),
    (["optim.lr=0.5", "attention=none"], ["optim.lr", "attention.name"]),
])
def test_resume_that_changes_the_recipe_is_refused_and_writes_nothing(finished, change, keys):
    before = _hashes(finished)
    proc = run_cli(COSINE + ["trainer.epochs=2", f"resume={finished / 'checkpoints' / 'last.pth'}"] + change)
    line = assert_user_error(proc, "init_from=", *keys)
    assert _hashes(finished) == before, line


def test_smaller_epochs_than_trained_is_refused(tmp_path):
    run_dir = tmp_path / "r"
    check_ok(run_cli(COSINE + ["trainer.epochs=2", f"hydra.run.dir={run_dir}"]))
    before = _hashes(run_dir)
    proc = run_cli(COSINE + ["trainer.epochs=1", f"resume={run_dir / 'checkpoints' / 'last.pth'}"])
    assert_user_error(proc, "trainer.epochs=1", "already trained 2 epochs")
    assert _hashes(run_dir) == before


def test_resume_of_a_finished_run_changes_nothing(finished):
    before = _hashes(finished)
    proc = check_ok(run_cli(COSINE + ["trainer.epochs=1", f"resume={finished / 'checkpoints' / 'last.pth'}"]))
    assert "nothing to train" in proc.stderr
    assert _hashes(finished) == before
    assert json.loads((finished / "summary.json").read_text())["final"]  # never emptied


@pytest.mark.slow
def test_extending_a_cosine_run_trains_the_new_epochs_at_positive_lr(tmp_path):
    run_dir = tmp_path / "r"
    check_ok(run_cli(COSINE + ["trainer.epochs=1", f"hydra.run.dir={run_dir}"]))
    first = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)["model"]
    proc = check_ok(run_cli(COSINE + ["trainer.epochs=3", f"resume={run_dir / 'checkpoints' / 'last.pth'}"]))
    assert "extend" in proc.stderr and "trainer.epochs 1 -> 3" in proc.stderr
    rows = metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(r["lr"] > 0 for r in rows[1:2]), rows  # epoch 2 ends at lr > 0; epoch 3 ends the schedule
    last = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)
    assert last["epoch"] == 3 and last["step"] == 12
    assert any(not torch.equal(first[k], last["model"][k]) for k in first if first[k].is_floating_point())
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"


def test_two_runs_started_together_get_two_directories(tmp_path):
    env = {**__import__("os").environ, "PYTHONUNBUFFERED": "1", **SUBPROCESS_ENV}
    env.pop("SIMAM_RUN_STAMP", None)
    args = [sys.executable, "main_cifar.py", *FAKE, "trainer.epochs=1", "trainer.max_steps_per_epoch=1",
            f"hydra.run.dir={tmp_path}/${{oc.env:SIMAM_RUN_STAMP}}"]
    procs = [subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    dirs = [d for d in tmp_path.iterdir() if (d / "checkpoints" / "last.pth").is_file()]
    assert len(dirs) == 2, list(tmp_path.iterdir())


def test_init_from_a_10_class_checkpoint_trains_on_a_4_class_folder(finished, tmp_path):
    folder = write_jpeg_folder(tmp_path / "imgs", classes=4, train_per_class=4, val_per_class=2, size=32)
    run_dir = tmp_path / "ft"
    proc = check_ok(run_cli(["data=imagefolder", f"data.root={folder}", "data.batch_size=8", "data.eval_batch_size=8",
                             "data.workers=0", "attention=simam", "trainer.epochs=1", f"init_from={finished / 'checkpoints' / 'best.pth'}",
                             f"hydra.run.dir={run_dir}"]))
    assert "re-initialised the classifier" in proc.stderr and "linear.weight" in proc.stderr
    ckpt = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)
    assert ckpt["model_spec"]["num_classes"] == 4 and ckpt["epoch"] == 1
    src = torch.load(finished / "checkpoints" / "best.pth", weights_only=True)["model"]
    assert ckpt["config"]["init_from"].endswith("best.pth")
    assert src["conv1.weight"].shape == ckpt["model"]["conv1.weight"].shape


def test_init_from_with_another_attention_is_the_usual_strict_error(finished, tmp_path):
    proc = run_cli(FAKE + ["attention=se", "trainer.epochs=1", f"init_from={finished / 'checkpoints' / 'best.pth'}",
                           f"hydra.run.dir={tmp_path / 'r'}"])
    assert_user_error(proc, "attention")
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_evaluate_with_no_other_argument_reproduces_the_recorded_acc1(finished):
    best = finished / "checkpoints" / "best.pth"
    recorded = {r["epoch"]: r for r in metrics(finished)}[torch.load(best, weights_only=True)["epoch"]]
    before = (finished / ".hydra" / "config.yaml").read_text()
    for _ in range(2):
        check_ok(run_cli(["-e", "--resume", best]))
    result = json.loads((finished / "eval.json").read_text())
    assert result["acc1"] == recorded["val_acc1"] and result["num_samples"] == 40
    lines = [json.loads(l) for l in (finished / "evals.jsonl").read_text().splitlines()]
    assert len(lines) >= 2
    for line in lines[-2:]:
        assert {"checkpoint", "sha256", "epoch", "acc1", "acc5", "loss", "num_samples", "time"} <= set(line)
        assert line["acc1"] == recorded["val_acc1"] and line["epoch"] == 1 and len(line["sha256"]) == 64
    assert (finished / ".hydra" / "config.yaml").read_text() == before


def test_evaluate_refuses_an_override_that_contradicts_the_checkpoint(finished):
    proc = run_cli(["-e", "--resume", finished / "checkpoints" / "best.pth", "attention=none"])
    assert_user_error(proc, "attention=none", "attention=simam")


# ------------------------------------------------------------------------------------ units
def test_config_changes_lists_only_what_differs():
    old = {"optim": {"lr": 0.1, "name": "sgd"}, "trainer": {"epochs": 3, "log_every": 5}, "run_dir": "a"}
    new = {"optim": {"lr": 0.1, "name": "adam"}, "trainer": {"epochs": 5, "log_every": 1}, "run_dir": "b", "added": 1}
    assert config_changes(old, new) == [("optim.name", "sgd", "adam"), ("trainer.epochs", 3, 5), ("trainer.log_every", 5, 1)]
    assert {"trainer.epochs", "data.root", "data.workers", "trainer.devices", "trainer.keep_last"} <= RESUME_MAY_CHANGE
    assert flatten({"a": {"b": {"c": 1}}, "d": []}) == {"a.b.c": 1, "d": []}


def test_evaluation_overrides_take_the_network_from_the_checkpoint():
    stored = {"model": {"arch": "cifar_resnet20", "block": None, "kwargs": {}}, "attention": {"name": "se", "reduction": 8},
              "data": {"name": "fake", "num_classes": 10, "image_size": 32, "augment": "none", "root": None, "num_val": 40}}
    out = evaluation_overrides(stored, [], data_given=False)
    assert "attention=se" in out and "attention.reduction=8" in out and "data=fake" in out and "model.arch=cifar_resnet20" in out
    assert "data=fake" not in evaluation_overrides(stored, ["data=cifar10"], data_given=True)
    with pytest.raises(UserError, match="attention.reduction=16 contradicts"):
        evaluation_overrides(stored, ["attention.reduction=16"], data_given=False)


def test_resume_of_an_original_checkpoint_continues_its_epoch_and_optimizer(tmp_path):
    import networks

    model = networks.create_model("cifar_resnet20", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()  # momentum buffers exist, as in a checkpoint written after an epoch
    original = {"epoch": 1, "arch": "resnet20", "best_acc1": torch.tensor(12.5),
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "optimizer": opt.state_dict()}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(original, path)
    run_dir = tmp_path / "r"
    proc = check_ok(run_cli(FAKE + ["trainer.epochs=2", f"resume={path}", f"hydra.run.dir={run_dir}"]))
    assert "resumed the original code's checkpoint" in proc.stderr and "epoch 1" in proc.stderr
    assert [r["epoch"] for r in metrics(run_dir)] == [2]
    last = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)
    assert last["epoch"] == 2 and last["step"] == 8


def test_resume_of_an_original_checkpoint_whose_optimizer_does_not_fit_is_refused(tmp_path):
    import networks

    model = networks.create_model("cifar_resnet20", num_classes=10)
    other = torch.optim.SGD(networks.create_model("cifar_resnet32", num_classes=10).parameters(), lr=0.1)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 1, "state_dict": model.state_dict(), "optimizer": other.state_dict()}, path)
    assert_user_error(run_cli(FAKE + ["trainer.epochs=2", f"resume={path}", f"hydra.run.dir={tmp_path / 'r'}"]),
                      "optimizer state", "init_from=")


def test_resume_starts_from_the_checkpoints_config_and_names_only_what_the_command_changes(finished):
    last = finished / "checkpoints" / "last.pth"
    before = _hashes(finished)
    proc = check_ok(run_cli([f"resume={last}", "trainer.epochs=1"]))  # no data=, attention=, ...: the run's own
    assert "nothing to train" in proc.stderr
    line = assert_user_error(run_cli([f"resume={last}", "trainer.epochs=2", "optim.lr=0.5"]), "optim.lr 0.1 -> 0.5")
    assert "data." not in line and "attention." not in line, line
    assert _hashes(finished) == before
