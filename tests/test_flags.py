"""The original SimAM flags: their translation, the original's defaults and semantics (-j per node,
the `epoch // 30` schedule, --gpu ids), and one-line refusals of bad values."""
from __future__ import annotations

import os
import re

import pytest
import torch

from engine.config_check import check_config
from engine.errors import UserError
from engine.flags import FLAGS, ORIGINAL_DEFAULTS, translate_argv
from helpers.compose import composed


def _translated(cmd: str, entry: str = "imagenet") -> dict[str, str]:
    _, translated, _ = translate_argv(cmd.split(), entry)
    return dict(o.split("=", 1) for o in translated)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # recorded, so what translate_argv sets is undone
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


@pytest.fixture
def gpus(monkeypatch):
    """A machine with 4 GPUs (torch.cuda mocked); returns a setter for CUDA_VISIBLE_DEVICES."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(os.environ.get("CUDA_VISIBLE_DEVICES", "0,1,2,3").split(",")))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # recorded, so what translate_argv sets is undone
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    return lambda mask: monkeypatch.setenv("CUDA_VISIBLE_DEVICES", mask)


def test_imagenet_defaults_of_the_original(no_gpu):
    t = _translated("/data/imagenet -a resnet50")
    assert t["data"] == "imagenet" and t["data.root"] == "/data/imagenet" and t["model.arch"] == "resnet50"
    for key, value in ORIGINAL_DEFAULTS["imagenet"].items():
        if key != "model.arch":
            assert t[key] == value, key
    assert t["trainer.epochs"] == "90" and t["sched.milestones"] == "[30,60]" and t["data.eval_batch_size"] == "256"


@pytest.mark.parametrize("epochs, milestones", [(90, "[30,60]"), (100, "[30,60,90]"), (150, "[30,60,90,120]"), (10, "[]"), (31, "[30]")])
def test_step_schedule_is_epoch_div_30_whatever_the_epochs(no_gpu, epochs, milestones):
    assert _translated(f"/d --epochs {epochs}")["sched.milestones"] == milestones
    assert _translated(f"/d trainer.epochs={epochs}")["sched.milestones"] == milestones


def test_cosine_and_user_keys_win_over_the_defaults(no_gpu):
    t = _translated("/d --cos_lr --epochs 150")
    assert t["sched"] == "cosine" and "sched.milestones" not in t and "sched.gamma" not in t
    hydra, translated, _ = translate_argv("/d -b 64 optim=adam trainer.log_every=3".split(), "imagenet")
    t = dict(o.split("=", 1) for o in translated)
    assert t["data.batch_size"] == "64" and t["data.eval_batch_size"] == "64"  # the original evaluated with -b too
    assert not any(k.startswith("optim") for k in t) and "trainer.log_every" not in t
    assert hydra == ["optim=adam", "trainer.log_every=3"]


@pytest.mark.parametrize("cmd", ["-e --resume x.pth", "--seed 3", "-p 5 model.arch=resnet18", "/d experiment=imagenet_resnet",
                                 "/d -a resnet18 -e --resume x.pth", "/d --resume x.pth --save_weights w.pth"])
def test_no_defaults_without_a_recipe_flag_or_with_an_experiment(no_gpu, cmd):
    t = _translated(cmd)
    assert not {"trainer.epochs", "optim.lr", "sched.milestones", "data.eval_batch_size"} & set(t)
    assert ("model.arch" in t) == ("-a " in cmd)


def test_cifar_defaults_of_the_original(no_gpu):
    t = _translated("--arch resnet56", "cifar")
    assert t["model.arch"] == "cifar_resnet56" and t["model.block"] == "basic"
    for key, value in ORIGINAL_DEFAULTS["cifar"].items():
        assert t[key] == value, key
    assert t["data"] == "cifar10" and t["seed"] == "1" and t["sched.milestones"] == "[82,123]"
    assert _translated("--arch resnet20 --attention_type simam", "cifar")["attention.e_lambda"] == "4"  # as the original
    assert "attention.e_lambda" not in _translated("--arch resnet20 attention=simam", "cifar")  # our default lambda


@pytest.mark.parametrize("cmd, expected", [
    ("--arch resnet20 --block_type basic", {"model.block": "basic"}),
    ("--arch resnet56 --block_type bottlenect", {"model.block": "bottleneck"}),
    ("--arch preresnet20 --block_type prebasic", {"model.arch": "cifar_preresnet20", "model.block": "basic"}),
    ("--arch preresnet164 --block_type prebottlenect", {"model.arch": "cifar_preresnet164", "model.block": "bottleneck"}),
    ("--arch wideresnet28x10 --block_type widebasic", {"model.arch": "cifar_wrn28_10"}),
    ("--arch mobilenetv2 --block_type ivrd", {"model.arch": "cifar_mobilenetv2"}),
])
def test_original_block_types(no_gpu, cmd, expected):
    t = _translated(cmd, "cifar")
    assert expected.items() <= t.items()
    if "widebasic" in cmd or "ivrd" in cmd:
        assert "model.block" not in t


def test_print_frequency_and_ema(no_gpu):
    assert _translated("-p 7")["trainer.log_every"] == "7"
    assert _translated("--print-freq=7", "cifar")["trainer.log_every"] == "7"
    hydra, _, _ = translate_argv(["ema=true", "-m", "ema=false,true", "--package", "trainer", "--cfg", "job"], "cifar")
    assert hydra == ["ema.enabled=true", "-m", "ema.enabled=false,true", "--package", "trainer", "--cfg", "job"]


BAD = [
    ("imagenet", "--epochs abc", ["--epochs abc", "integer >= 1"]),
    ("imagenet", "--epochs 0", ["--epochs 0", ">= 1"]),
    ("imagenet", "-b 0", ["-b 0", ">= 1"]),
    ("imagenet", "--lr -1", ["--lr -1", "> 0"]),
    ("imagenet", "--lr inf", ["--lr inf"]),
    ("imagenet", "--wd -1", ["--wd -1"]),
    ("imagenet", "-j -2", ["-j -2", ">= 0"]),
    ("imagenet", "-p 0", ["-p 0"]),
    ("imagenet", "--seed foo", ["--seed foo"]),
    ("imagenet", "--attention_type se --attention_param abc", ["--attention_param abc", "integer >= 1"]),
    ("imagenet", "--attention_type se --attention_param inf", ["--attention_param inf", "integer >= 1"]),
    ("imagenet", "--attention_type se --attention_param 0.1", ["--attention_param 0.1", "integer >= 1"]),
    ("cifar", "--arch resnet20 --attention_type cbam --attention_param 2.5", ["--attention_param 2.5"]),
    ("imagenet", "--attention_type simam --attention_param 0", ["--attention_param 0", "> 0"]),
    ("imagenet", "--attention_type simam --attention_param nan", ["--attention_param nan"]),
    ("imagenet", "--attention_type eca --attention_param 3", ["no meaning for attention type 'eca'"]),
    ("imagenet", "--attention_type simAMM", ["--attention_type simAMM", "simam"]),
    ("imagenet", "--gpu x,y", ["expected GPU ids"]),
    ("imagenet", "--gpu 0,0", ["distinct"]),
    ("imagenet", "--lr", ["needs a value"]),
    ("imagenet", "--pretrained", ["unknown flag --pretrained", "init_from="]),
    ("imagenet", "--multiprocessing-distributed", ["unknown flag --multiprocessing-distributed", "--gpu"]),
    ("imagenet", "--start-epoch 3", ["--start-epoch"]),
    ("imagenet", "--nope", ["unknown flag --nope", "--print-freq"]),
    ("imagenet", "/a /b", ["unexpected argument '/b'"]),
    ("cifar", "--arch resnet18", ["--arch resnet18", "not a CIFAR network", "main_imagenet.py"]),
    ("cifar", "--arch resnt20", ["--arch resnt20", "did you mean resnet20"]),
    ("cifar", "--dataset cifar100", ["needs --arch", "resnet18"]),
    ("cifar", "--block_type prebasic", ["needs --arch"]),
    ("cifar", "--arch resnet20 --block_type prebasic", ["--block_type prebasic", "basic or bottlenect"]),
    ("cifar", "--arch preresnet56 --block_type basic", ["--block_type basic", "prebasic or prebottlenect"]),
    ("cifar", "--arch preresnet56", ["default --block_type basic", "prebasic"]),
    ("cifar", "--arch wideresnet28x10 --block_type bottlenect", ["widebasic"]),
    ("cifar", "--arch resnet20 --block_type bottle", ["--block_type bottle", "prebottlenect"]),
    ("cifar", "--optim adam", ["unknown flag --optim", "optim=", "--base_lr"]),
    ("cifar", "--wrn", ["unknown flag --wrn"]),
    ("cifar", "-a resnet20", ["unknown flag -a"]),
]


@pytest.mark.parametrize("entry, cmd, needles", BAD, ids=[f"{e}: {c}" for e, c, _ in BAD])
def test_bad_flags_are_one_line(no_gpu, entry, cmd, needles):
    with pytest.raises(UserError) as info:
        translate_argv(cmd.split(), entry)
    line = str(info.value)
    assert "\n" not in line
    for needle in needles:
        assert needle in line, (needle, line)


@pytest.mark.parametrize("cmd", [
    "/data/imagenet --gpu 0,1,2,3 --epochs 100 -j 20 -a resnet18 --attention_type simam --attention_param 0.1",
    "/data/imagenet --gpu 0,1,2,3 --epochs 150 -j 20 -a mobilenet_v2 --attention_type simam --attention_param 0.1 "
    "--lr .05 --cos_lr --wd 4e-5",
    "/data/imagenet --gpu 0,1,2,3 -j 20 -a resnet18 -e --resume ckpt.pth attention=simam",
    "/data/imagenet --epochs 10 --attention_type se",
])
def test_translations_pass_the_config_check(no_gpu, cmd):
    hydra, translated, _ = translate_argv(cmd.split(), "imagenet")
    check_config(composed(translated + hydra, "imagenet"), "imagenet")


@pytest.mark.parametrize("cmd", [
    "--dataset cifar100 --arch resnet20 --block_type basic --attention_type simam --attention_param 0.0001 --seed 0 --gpu_ids 0",
    "--arch preresnet110 --block_type prebottlenect --warmup --attention_type cbam",
    "--arch wideresnet16x8 --block_type widebasic --num_epoch 1 --batch_size 64",
])
def test_cifar_translations_pass_the_config_check(no_gpu, cmd):
    hydra, translated, _ = translate_argv(cmd.split(), "cifar")
    check_config(composed(translated + hydra, "cifar"), "cifar")


def test_gpu_ids_select_the_visible_devices(gpus):
    t = _translated("--gpu 1,3")
    assert t["trainer.devices"] == "2" and t["trainer.accelerator"] == "cuda"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1,3"


def test_gpu_ids_map_through_an_existing_mask(gpus, capsys):
    """SLURM sets CUDA_VISIBLE_DEVICES=4,5,6,7: --gpu 2,3 means the third and fourth of those."""
    gpus("4,5,6,7")
    t = _translated("--gpu 2,3")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6,7" and t["trainer.devices"] == "2"
    assert "CUDA_VISIBLE_DEVICES=6,7" in capsys.readouterr().err
    gpus("GPU-aaaa,GPU-bbbb")
    _translated("--gpu 1")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb"


def test_gpu_ids_beyond_the_mask_are_refused(gpus):
    gpus("4,5")
    with pytest.raises(UserError, match=r"--gpu names GPU 2 but CUDA_VISIBLE_DEVICES=4,5 shows 2 \(valid ids: 0-1\)"):
        translate_argv(["--gpu", "0,2"], "imagenet")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5"  # unchanged


def test_slurm_launcher_does_not_probe_gpus_here(monkeypatch):
    """From a login node without GPUs: the job runs on a GPU node with the given count."""
    def no_probe():
        raise AssertionError("device_count called on the submitting machine")

    monkeypatch.setattr(torch.cuda, "device_count", no_probe)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    hydra, translated, _ = translate_argv("-m hydra/launcher=slurm /d --gpu 0,1,2,3 -j 20".split(), "imagenet")
    t = dict(o.split("=", 1) for o in translated)
    assert t["trainer.accelerator"] == "cuda" and t["trainer.devices"] == "4" and t["hydra.launcher.gpus_per_node"] == "4"
    assert t["data.workers"] == "5" and os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_no_gpu_falls_back_to_one_cpu_process(no_gpu, capsys):
    t = _translated("--gpu 0,1")
    assert t["trainer.accelerator"] == "cpu" and t["trainer.devices"] == "1"
    assert "no CUDA GPU" in capsys.readouterr().err


def test_gpu_under_torchrun_is_refused(gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(UserError, match="torchrun"):
        translate_argv(["--gpu", "0,1"], "imagenet")


@pytest.mark.parametrize("cmd, workers", [
    ("--gpu 0,1,2,3 -j 20", "5"), ("--gpu 0,1,2,3 -j 2", "1"), ("--gpu 0,1,2,3 -j 0", "0"), ("--gpu 0 -j 3", "3"),
    ("-j 8 trainer.devices=2", "4"),
])
def test_workers_are_per_node_as_in_the_original(gpus, capsys, cmd, workers):
    assert _translated(cmd)["data.workers"] == workers


def test_default_workers_are_the_originals_split_and_capped_by_the_cores(gpus, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert _translated("/d --gpu 0,1,2,3")["data.workers"] == "1"  # -j 4 over 4 processes
    assert _translated("--arch resnet20 --gpu_ids 0,1", "cifar")["data.workers"] == "8"  # 16 over 2
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert _translated("--arch resnet20", "cifar")["data.workers"] == "2"


def test_every_flag_has_help_or_a_reason():
    for entry, flags in FLAGS.items():
        names = [n for f in flags for n in f.names]
        assert len(names) == len(set(names)), entry
        assert all(re.fullmatch(r"--?[a-z][a-z0-9_-]*", n) for n in names)
