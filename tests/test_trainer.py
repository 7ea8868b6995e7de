"""The trainer through its real entry points (main_cifar.py / main_imagenet.py) on CPU."""
from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from helpers.cli import FAKE, ROOT, check_ok, metrics, model_state, run_cli

METRIC_KEYS = {"epoch", "lr", "train_loss", "train_acc1", "val_loss", "val_acc1", "val_acc5", "throughput", "epoch_time"}
TB_TAGS = {"train/loss", "train/acc1", "val/loss", "val/acc1", "val/acc5", "lr", "throughput"}


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "r"
    check_ok(run_cli(FAKE + ["attention=simam", "trainer.epochs=2", "sched.milestones=[1]", f"hydra.run.dir={run_dir}"]))
    return run_dir


def test_run_writes_every_file(two_epoch_run):
    run_dir = two_epoch_run
    for rel in (".hydra/config.yaml", "checkpoints/last.pth", "checkpoints/best.pth", "metrics.jsonl"):
        assert (run_dir / rel).is_file(), rel
    rows = metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert METRIC_KEYS <= set(r), set(r)
        assert 0 <= r["val_acc1"] <= r["val_acc5"] <= 100 and r["throughput"] > 0 and r["epoch_time"] > 0
    assert rows[0]["lr"] == pytest.approx(0.01)  # milestone at epoch 1: the lr in force after epoch 1's last update
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert TB_TAGS <= tags, TB_TAGS - tags
    assert len(acc.Scalars("val/acc1")) == 2


def test_checkpoint_is_complete(two_epoch_run):
    ckpt = torch.load(two_epoch_run / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "epoch", "step", "best_acc1", "rng", "config", "model_spec"):
        assert key in ckpt, key
    assert not any(k.startswith(("module.", "_orig_mod.")) or k.endswith("total_ops") for k in ckpt["model"])
    assert ckpt["epoch"] == 2 and ckpt["step"] == 8 and isinstance(ckpt["best_acc1"], float)
    assert ckpt["model_spec"] == {"arch": "cifar_resnet20", "attention": "simam", "num_classes": 10, "attention_kwargs": {"e_lambda": 1e-4}}
    assert ckpt["config"]["attention"]["e_lambda"] == pytest.approx(1e-4)
    assert {"python", "numpy", "torch"} <= set(ckpt["rng"])
    assert not list((two_epoch_run / "checkpoints").glob("*.tmp"))


def test_evaluate_reproduces_recorded_acc1(two_epoch_run):
    run_dir = two_epoch_run
    config_before = (run_dir / ".hydra" / "config.yaml").read_text()
    best = torch.load(run_dir / "checkpoints" / "best.pth", map_location="cpu", weights_only=True)
    recorded = {r["epoch"]: r for r in metrics(run_dir)}[best["epoch"]]
    proc = check_ok(run_cli(FAKE + ["attention=simam", "-e", "--resume", run_dir / "checkpoints" / "best.pth"]))
    assert "evaluate=true" in proc.stderr  # the translation is printed
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["acc1"] == recorded["val_acc1"] and result["acc5"] == recorded["val_acc5"]
    assert result["num_samples"] == 40 and result["checkpoint"].endswith("best.pth")
    assert (run_dir / ".hydra" / "config.yaml").read_text() == config_before  # evaluation keeps the run's config


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_bit_exact(tmp_path, workers):
    common = FAKE + [f"data.workers={workers}", "attention=se", "trainer.epochs=2", "sched=cosine", "sched.warmup_epochs=0.5"]
    full, part = tmp_path / "full", tmp_path / "part"
    check_ok(run_cli(common + [f"hydra.run.dir={full}"]))
    check_ok(run_cli(common + ["trainer.stop_after_epochs=1", f"hydra.run.dir={part}"]))
    assert torch.load(part / "checkpoints" / "last.pth", weights_only=True)["epoch"] == 1
    check_ok(run_cli(common + [f"resume={part / 'checkpoints' / 'last.pth'}"]))
    a, b = model_state(full / "checkpoints" / "last.pth"), model_state(part / "checkpoints" / "last.pth")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["val_acc1"] for r in metrics(full)] == [r["val_acc1"] for r in metrics(part)]


@pytest.mark.slow
def test_auto_resume_picks_up_last(tmp_path):
    run_dir = tmp_path / "auto"
    common = FAKE + ["trainer.epochs=2", f"hydra.run.dir={run_dir}", "trainer.auto_resume=true"]
    check_ok(run_cli(common + ["trainer.stop_after_epochs=1"]))
    proc = check_ok(run_cli(common))
    assert "resumed from" in proc.stdout + proc.stderr
    assert [r["epoch"] for r in metrics(run_dir)] == [1, 2]


@pytest.mark.slow
def test_devices_2_and_torchrun_on_gloo(tmp_path):
    spawned, launched = tmp_path / "spawn", tmp_path / "torchrun"
    args = FAKE + ["data.num_val=41", "data.eval_batch_size=20", "trainer.epochs=1"]
    one_thread = {"OMP_NUM_THREADS": "1"}  # torchrun's default; the same float summation order in both runs
    check_ok(run_cli(args + ["trainer.devices=2", f"hydra.run.dir={spawned}"], env=one_thread))
    check_ok(run_cli(args + [f"hydra.run.dir={launched}"], env=one_thread,
                     launcher=[sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]))
    for run_dir in (spawned, launched):
        (row,) = metrics(run_dir)
        assert row["num_val"] == 41  # every validation image exactly once over 2 ranks (no padding)
        assert (run_dir / "checkpoints" / "last.pth").is_file()
    a, b = model_state(spawned / "checkpoints" / "last.pth"), model_state(launched / "checkpoints" / "last.pth")
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_syncbn_two_processes_match_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # One full step (global-batch BN forward, backward through the global statistics, DDP
    # all-reduce, SGD update), both with SyncBN (float64 BN statistics). Measured: 9e-8 apart after
    # one step; after 4 steps at lr 0.1 float32 rounding (plain BN alone is 0.5% off float64
    # gradients in this untrained ResNet-20) grows to 1e-3 whatever the number of processes.
    args = FAKE + ["trainer.epochs=1", "data.workers=0", "trainer.sync_bn=true", "trainer.max_steps_per_epoch=1"]
    one_thread = {"OMP_NUM_THREADS": "1"}
    check_ok(run_cli(args + [f"hydra.run.dir={one}"], env=one_thread))
    check_ok(run_cli(args + ["trainer.devices=2", f"hydra.run.dir={two}"], env=one_thread))
    a, b = model_state(one / "checkpoints" / "last.pth"), model_state(two / "checkpoints" / "last.pth")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), rtol=1e-5, atol=1e-5, msg=k)


def test_export_backbone_after_training_and_save_weights_of_a_checkpoint(tmp_path, two_epoch_run):
    out = tmp_path / "backbone.pth"
    check_ok(run_cli(FAKE + ["trainer.epochs=1", "trainer.max_steps_per_epoch=1", f"export_backbone={out}", "weights_format=ours",
                             f"hydra.run.dir={tmp_path / 'r'}"]))
    saved = torch.load(out, weights_only=True)
    sd = saved["model"]
    assert saved["backbone_only"] and saved["model_spec"]["arch"] == "cifar_resnet20"
    assert "conv1.weight" in sd and "layer3.2.bn2.weight" in sd and not any(k.startswith("linear") for k in sd)
    # the original --save_weights: read the checkpoint, write it in the original layout, exit without training
    converted = tmp_path / "simam_r20.pth"
    before = sorted(p.name for p in two_epoch_run.rglob("*"))
    proc = check_ok(run_cli(["--resume", two_epoch_run / "checkpoints" / "last.pth", f"save_weights={converted}", "attention=simam"]))
    assert "epoch 1/" not in proc.stderr + proc.stdout
    saved = torch.load(converted, weights_only=True)
    assert set(saved) == {"state_dict"} and all(v.device.type == "cpu" for v in saved["state_dict"].values())
    assert sorted(p.name for p in two_epoch_run.rglob("*")) == before

@pytest.mark.slow
def test_ema_selects_best_and_evaluates_the_ema_weights(tmp_path):
    run_dir = tmp_path / "ema"
    check_ok(run_cli(FAKE + ["trainer.epochs=3", "ema=true", "ema.decay=0.5", "ema.select_best=true", f"hydra.run.dir={run_dir}"]))
    rows = metrics(run_dir)
    assert all("ema_val_acc1" in r and r["best_metric"] == "ema_val_acc1" for r in rows)
    best_ema = max(r["ema_val_acc1"] for r in rows)
    chosen = next(r for r in rows if r["ema_val_acc1"] == best_ema)
    best = torch.load(run_dir / "checkpoints" / "best.pth", weights_only=True)
    assert best["epoch"] == chosen["epoch"] and best["best_acc1"] == best_ema
    check_ok(run_cli(["-e", "--resume", run_dir / "checkpoints" / "best.pth", "ema=true"]))
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["acc1"] == chosen["ema_val_acc1"] and result["weights"] == "ema"
    check_ok(run_cli(["-e", "--resume", run_dir / "checkpoints" / "best.pth"]))
    assert json.loads((run_dir / "eval.json").read_text())["acc1"] == chosen["val_acc1"]


def test_evaluating_ema_of_a_checkpoint_without_ema_is_refused(two_epoch_run):
    from helpers.cli import assert_user_error

    assert_user_error(run_cli(["-e", "--resume", two_epoch_run / "checkpoints" / "best.pth", "ema=true"]), "no EMA weights")


@pytest.mark.slow
@pytest.mark.parametrize("option", [["trainer.amp=fp16"], ["trainer.amp=bf16"], ["trainer.channels_last=true"],
                                    ["ema=true", "ema.decay=0.9"], ["trainer.compile=true"]], ids=lambda o: o[0])
def test_each_trainer_option_trains_and_resumes_bit_exact(tmp_path, option):
    # fp16 autocast convolutions are ~5x slower than bf16 on the CPU: half the images there (still
    # 1 step + the GradScaler's state per epoch)
    size = ["data.num_train=32", "data.num_val=20"] if option == ["trainer.amp=fp16"] else ["data.num_train=64"]
    common = FAKE + size + ["trainer.epochs=2", "attention=simam"] + option
    full, part = tmp_path / "full", tmp_path / "part"
    check_ok(run_cli(common + [f"hydra.run.dir={full}"]))
    check_ok(run_cli(common + ["trainer.stop_after_epochs=1", f"hydra.run.dir={part}"]))
    check_ok(run_cli(common + [f"resume={part / 'checkpoints' / 'last.pth'}"]))
    a, b = (torch.load(d / "checkpoints" / "last.pth", weights_only=True) for d in (full, part))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    if a.get("ema"):
        for k in a["ema"]:
            assert torch.equal(a["ema"][k], b["ema"][k]), k
    if a.get("scaler"):
        assert a["scaler"] == b["scaler"]
    assert [r["val_acc1"] for r in metrics(full)] == [r["val_acc1"] for r in metrics(part)]


@pytest.mark.slow
def test_torchvision_resnet50_recipe_trains_end_to_end(tmp_path):
    """The modern recipe (auto-augment, random erasing, repeated augmentation, mixup/cutmix, label
    smoothing, lr scaling, no decay on norm/bias, warmup + cosine, EMA selection), shrunk to 2 steps."""
    run_dir = tmp_path / "tv"
    proc = check_ok(run_cli(["experiment=torchvision_resnet50", "data=fake", "model.arch=resnet18", "data.image_size=64",
                             "input_size=64", "data.batch_size=16", "data.eval_batch_size=16", "data.num_train=64",
                             "data.num_val=16", "data.workers=0", "trainer.epochs=1", "trainer.max_steps_per_epoch=2", "sched.warmup_epochs=0.5", "data.augment=imagenet",
                             f"hydra.run.dir={run_dir}"], script="main_imagenet.py"))
    assert "scaled (linear) by global batch 16 / 1024" in proc.stderr
    (row,) = metrics(run_dir)
    assert row["best_metric"] == "ema_val_acc1" and "ema_val_acc1" in row


def test_each_rank_draws_its_own_dropout_masks():
    from engine.build import seed_process

    masks = []
    for rank in (0, 1):
        seed_process(0, rank)
        masks.append(torch.nn.functional.dropout(torch.ones(1000), 0.3))
    assert not torch.equal(masks[0], masks[1])
    seed_process(0, 1)
    assert torch.equal(torch.nn.functional.dropout(torch.ones(1000), 0.3), masks[1])


@pytest.mark.slow
def test_two_ranks_with_dropout_resume_bit_exact_with_each_ranks_rng(tmp_path):
    """WRN-16-8 has dropout 0.3: a rank resumed with another rank's RNG state would draw other
    masks and end with other weights."""
    args = FAKE + ["model.arch=cifar_wrn16_8", "data.num_train=64", "data.num_val=20", "trainer.epochs=2", "trainer.devices=2"]
    env = {"OMP_NUM_THREADS": "1"}
    full, part = tmp_path / "full", tmp_path / "part"
    check_ok(run_cli(args + [f"hydra.run.dir={full}"], env=env))
    check_ok(run_cli(args + ["trainer.stop_after_epochs=1", f"hydra.run.dir={part}"], env=env))
    ckpt = torch.load(part / "checkpoints" / "last.pth", weights_only=True)
    assert len(ckpt["rng_ranks"]) == 2 and not torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng_ranks"][1]["torch"])
    check_ok(run_cli(args + [f"resume={part / 'checkpoints' / 'last.pth'}"], env=env))
    a, b = model_state(full / "checkpoints" / "last.pth"), model_state(part / "checkpoints" / "last.pth")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert "epoch 1 " in (full / "main_cifar.log").read_text()  # rank 0's log file under trainer.devices
