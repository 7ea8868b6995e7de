"""The command line: original SimAM flags, their translation, and one-line user errors."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from helpers.cli import FAKE, ROOT, assert_user_error, check_ok, metrics, run_cli, write_jpeg_folder
from engine.flags import translate_argv
from engine.errors import UserError

RECIPES = Path(os.environ.get("SIMAM_PAPER_DIR", ROOT.parent / "shared" / "paper")) / "recipes.md"


def _recipe_commands() -> list[str]:
    if not RECIPES.is_file():
        pytest.skip(f"{RECIPES} not found (set SIMAM_PAPER_DIR)")
    return re.findall(r"Original command: `python (main_\w+\.py [^`]+)`", RECIPES.read_text())


def test_imagenet_translation():
    hydra, translated, _ = translate_argv(
        "/data/imagenet --gpu 0,1,2,3 --epochs 150 -j 20 -a mobilenet_v2 --attention_type simam "
        "--attention_param 0.1 --lr .05 --cos_lr --wd 4e-5".split(), "imagenet")
    assert hydra == []
    for o in ("data=imagenet", "data.root=/data/imagenet", "trainer.epochs=150", "data.workers=20", "model.arch=mobilenet_v2",
              "attention=simam", "attention.e_lambda=0.1", "optim.lr=.05", "sched=cosine", "optim.weight_decay=4e-5"):
        assert o in translated, (o, translated)
    # no GPU here: one CPU process, with a warning
    assert "trainer.accelerator=cpu" in translated and "trainer.devices=1" in translated


def test_cifar_translation_and_passthrough():
    hydra, translated, _ = translate_argv(
        "--dataset cifar100 --arch resnet20 --block_type bottlenect --attention_type se --attention_param 4 --seed 0 "
        "--gpu_ids 0 --batch_size 64 --num_epoch 3 --base_lr 0.05 --weight_decay 1e-4 --workers 1 --warmup "
        "trainer.amp=bf16 -m".split(), "cifar")
    assert hydra == ["trainer.amp=bf16", "-m"]
    for o in ("data=cifar100", "model.arch=cifar_resnet20", "model.block=bottleneck", "attention=se", "attention.reduction=4",
              "seed=0", "data.batch_size=64", "trainer.epochs=3", "optim.lr=0.05", "optim.weight_decay=1e-4",
              "data.workers=1", "sched.warmup_epochs=1"):
        assert o in translated, (o, translated)


@pytest.mark.parametrize("argv, needle", [
    (["--pretrained"], "unknown flag --pretrained"),
    (["--attention_type", "eca", "--attention_param", "3"], "no meaning for attention type 'eca'"),
    (["--gpu", "x,y"], "expected GPU ids"),
    (["--lr"], "needs a value"),
])
def test_bad_original_flags(argv, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        translate_argv(argv, "imagenet")


@pytest.mark.parametrize("args, needles", [
    (["model.arch=resnet5"], ["unknown architecture 'resnet5'", "resnet50"]),
    (["attention=simAMM"], ["unknown attention 'simAMM'", "simam"]),
    (["experiment=nope"], ["unknown experiment 'nope'", "alexnet_cifar10"]),
    (["data=imagnet"], ["unknown data 'imagnet'", "imagenet"]),
    (["optim.lrr=0.1"], ["optim.lrr"]),
    (["attention=se", "attention.e_lambda=0.1"], ["e_lambda"]),
    (["--optim", "adam"], ["unknown flag --optim", "--base_lr"]),
    (["data.batch_size=33", "trainer.devices=2"], ["not divisible", "2 processes"]),
    (["-e"], ["needs a checkpoint"]),
    (["resume=/nonexistent/last.pth"], ["/nonexistent/last.pth"]),
    (["data=imagefolder", "data.root=/nonexistent/folder"], ["/nonexistent/folder"]),
    (["data=cifar10", "data.root=/nonexistent/cifar", "data.download=false"], ["/nonexistent/cifar"]),
])
def test_user_errors_are_one_line(args, needles):
    extra = [] if any(a.startswith("data=") for a in args) else FAKE
    assert_user_error(run_cli(extra + args, timeout=300), *needles)


def test_debug_shows_traceback():
    proc = run_cli(FAKE + ["model.arch=resnet5", "--debug"], timeout=300)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_corrupt_checkpoint_is_refused_and_kept(tmp_path):
    bad = tmp_path / "last.pth"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    assert_user_error(run_cli(FAKE + ["-e", "--resume", bad], timeout=300), str(bad))
    assert bad.read_bytes() == b"PK\x03\x04 truncated zip"


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    return write_jpeg_folder(tmp_path_factory.mktemp("imagefolder"))


@pytest.mark.slow
def test_original_imagenet_commands_run(jpeg_folder, tmp_path):
    """The commands of shared/paper/recipes.md as typed, on a small JPEG folder (shrunk by appended flags)."""
    commands = [c for c in _recipe_commands() if c.startswith("main_imagenet.py")]
    assert len(commands) == 3
    train = [c for c in commands if " -e " not in c]
    evaluate = [c for c in commands if " -e " in c]
    shrink = ["--epochs", "1", "-b", "6", "-j", "0", "data.image_size=64", "data.eval_batch_size=6"]
    ckpt = None
    for i, cmd in enumerate(train):
        run_dir = tmp_path / f"train{i}"
        argv = cmd.replace("{imagenet}", str(jpeg_folder)).split()[1:] + shrink + [f"hydra.run.dir={run_dir}"]
        proc = check_ok(run_cli(argv, script="main_imagenet.py"))
        assert "original flags translated to:" in proc.stderr and "no CUDA GPU" in proc.stderr
        (row,) = metrics(run_dir)
        assert row["num_val"] == 6
        if "resnet18" in cmd:
            ckpt = run_dir / "checkpoints" / "best.pth"
    for cmd in evaluate:  # `-a resnet18 -e --resume {checkpoint.pth}`
        argv = cmd.replace("{imagenet}", str(jpeg_folder)).replace("{checkpoint.pth}", str(ckpt)).split()[1:]
        argv += ["-j", "0", "data.image_size=64", "data.eval_batch_size=6", "attention=simam"]
        check_ok(run_cli(argv, script="main_imagenet.py"))
        import json

        result = json.loads((ckpt.parent.parent / "eval.json").read_text())
        assert result["num_samples"] == 6
        assert result["acc1"] == metrics(ckpt.parent.parent)[0]["val_acc1"]


@pytest.mark.slow
def test_original_cifar_command_runs(jpeg_folder, tmp_path):
    (cmd,) = [c for c in _recipe_commands() if c.startswith("main_cifar.py")]
    argv = cmd.split()[1:] + ["--num_epoch", "1", "--batch_size", "6", "--workers", "0",
                              "data=imagefolder", f"data.root={jpeg_folder}", "data.augment=cifar", "data.image_size=32",
                              "data.eval_batch_size=6", f"hydra.run.dir={tmp_path / 'cifar'}"]
    proc = check_ok(run_cli(argv))
    assert "model.arch=cifar_resnet20" in proc.stderr and "attention.e_lambda=0.0001" in proc.stderr
    (row,) = metrics(tmp_path / "cifar")
    assert row["num_val"] == 6


def _synset_folder(root, synsets, per_class):
    from PIL import Image

    for s in synsets:
        d = root / "val" / s
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (16, 16), (i * 40 % 255, 90, 160)).save(d / f"{i}.JPEG", quality=90)
    return root


def _original_r18_predicting(tmp_path, index, attention_keys=False):
    """A 1000-class ResNet-18 in the original code's file format whose head always predicts `index`."""
    import networks

    model = networks.create_model("resnet18", num_classes=1000)
    sd = model.state_dict()
    sd["fc.weight"].zero_()
    sd["fc.bias"].zero_()
    sd["fc.bias"][index] = 10.0
    if attention_keys:  # the SimAM code wrapped each block's conv2 with SimAM: conv2.0.weight
        sd = {k.replace(".conv2.weight", ".conv2.0.weight"): v for k, v in sd.items()}
    path = tmp_path / "r18.pth.tar"
    torch.save({"epoch": 100, "arch": "resnet18", "state_dict": {f"module.{k}": v for k, v in sd.items()}, "best_acc1": 70.0}, path)
    return path


README_EVAL = "--gpu 0,1,2,3 -j 20 -a resnet18 -e --resume {ckpt}"


@pytest.mark.slow
def test_original_readme_evaluation_on_a_synset_subset_uses_imagenet_labels(tmp_path):
    from engine.data import imagenet_synsets

    synsets = list(imagenet_synsets())
    chosen = [synsets[i] for i in (1, 100, 500, 999)]
    root = _synset_folder(tmp_path / "in4", chosen, per_class=2)
    ckpt = _original_r18_predicting(tmp_path, 500)
    run_dir = tmp_path / "eval"
    proc = check_ok(run_cli([str(root)] + README_EVAL.format(ckpt=ckpt).split() + [f"hydra.run.dir={run_dir}"], script="main_imagenet.py"))
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["num_samples"] == 8 and result["acc1"] == 25.0, (result, proc.stderr[-2000:])  # label 500 = the 3rd folder


@pytest.mark.slow
def test_original_readme_evaluation_on_the_full_1000_folder_layout(tmp_path):
    from engine.data import imagenet_synsets

    root = _synset_folder(tmp_path / "in1k", list(imagenet_synsets()), per_class=1)
    ckpt = _original_r18_predicting(tmp_path, 7)
    run_dir = tmp_path / "eval"
    check_ok(run_cli([str(root)] + README_EVAL.format(ckpt=ckpt).split() + ["-b", "200", f"hydra.run.dir={run_dir}"],
                     script="main_imagenet.py"))
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["num_samples"] == 1000 and result["acc1"] == pytest.approx(0.1)


def test_original_readme_evaluation_of_simam_weights_without_its_flag_says_what_to_add(tmp_path):
    from engine.data import imagenet_synsets

    root = _synset_folder(tmp_path / "in4", list(imagenet_synsets())[:4], per_class=1)
    ckpt = _original_r18_predicting(tmp_path, 0, attention_keys=True)
    proc = run_cli([str(root)] + README_EVAL.format(ckpt=ckpt).split() + [f"hydra.run.dir={tmp_path / 'e'}"], script="main_imagenet.py")
    assert_user_error(proc, "--attention_type simam")


# every bad input of issue 10 through the entry point: exit 2, one error line naming the key, no directory
BAD_INPUTS = [
    (["trainer.epochs=abc"], "trainer.epochs"), (["sched.milestones=abc"], "sched.milestones"), (["seed=foo"], "seed"),
    (["data.batch_size=0"], "data.batch_size"), (["data.batch_size=-1"], "data.batch_size"),
    (["data.eval_batch_size=0"], "data.eval_batch_size"), (["optim.lr=-1"], "optim.lr"), (["data.workers=-1"], "data.workers"),
    (["data.image_size=0"], "data.image_size"), (["data.image_size=-5"], "data.image_size"),
    (["data.image_size=100000"], "data.image_size"), (["model.arch=alexnet", "data.image_size=16"], "data.image_size"),
    (["data.num_classes=-3"], "data.num_classes"), (["attention=se", "attention.reduction=0"], "attention.reduction"),
    (["attention=eca", "attention.gamma=0"], "attention.gamma"), (["attention=simam", "attention.e_lambda=0"], "attention.e_lambda"),
    (["attention=simam", "attention.e_lambda=-1"], "attention.e_lambda"), (["trainer.epochs=0"], "trainer.epochs"),
    (["data.num_val=0"], "data.num_val"), (["+trainer.epoch=3"], "trainer.epoch"), (["trainer.epoch=3"], "trainer.epochs"),
    (["trainer.accelerator=tpu"], "trainer.accelerator"), (["model.arch=../../x"], "model.arch"),
    (["--attention_type", "se", "--attention_param", "abc"], "--attention_param"),
    (["--attention_type", "se", "--attention_param", "inf"], "--attention_param"),
    (["--attention_type", "se", "--attention_param", "0.1"], "--attention_param"),
    (["experiment=paper/cifar100_resnt20"], "paper/cifar100_resnet20"), (["data.augment=randaug"], "data.augment"),
    (["data.auto_augment=rand-zz9"], "data.auto_augment"), (["optim.clip_mode=l3"], "optim.clip_mode"),
    (["trainer.accum_steps=0"], "trainer.accum_steps"), (["ema.select_best=true"], "ema.enabled"),
    (["weights_format=onnx"], "weights_format"), (["save_weights=/tmp/x.pth"], "resume="),
    (["resume=/nonexistent/last.pth"], "/nonexistent/last.pth"), (["init_from=/nonexistent/w.pth"], "/nonexistent/w.pth"),
    (["evaluate=true"], "resume="),
]


@pytest.mark.parametrize("args, needle", BAD_INPUTS, ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path, args, needle):
    run_dir = tmp_path / "run"
    outputs = ROOT / "outputs"
    before = sorted(p.name for p in outputs.iterdir()) if outputs.is_dir() else None
    proc = run_cli(FAKE + args + [f"hydra.run.dir={run_dir}"] if "model.arch=../../x" not in args else FAKE + args)
    assert_user_error(proc, needle)
    assert not run_dir.exists()
    assert (sorted(p.name for p in outputs.iterdir()) if outputs.is_dir() else None) == before


def test_main_cifar_on_an_image_folder_trains_at_32_px_with_cifar_augmentation(tmp_path):
    root = write_jpeg_folder(tmp_path / "imgs", classes=3, train_per_class=4, val_per_class=2, size=64)
    run_dir = tmp_path / "r"
    proc = check_ok(run_cli(["data=imagefolder", f"data.root={root}", "data.batch_size=4", "data.eval_batch_size=6",
                             "data.workers=0", "trainer.epochs=1", "trainer.max_steps_per_epoch=1", f"hydra.run.dir={run_dir}"]))
    assert "data.image_size=32 data.augment=cifar" in proc.stderr and "at 32x32" in proc.stderr
    cfg = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)["config"]["data"]
    assert cfg["image_size"] == 32 and cfg["augment"] == "cifar"
    # what the command sets wins
    proc = check_ok(run_cli(["data=imagefolder", f"data.root={root}", "data.image_size=48", "data.batch_size=4",
                             "data.eval_batch_size=6", "data.workers=0", "trainer.epochs=1", "trainer.max_steps_per_epoch=1",
                             f"hydra.run.dir={tmp_path / 'r48'}"]))
    assert "at 48x48" in proc.stderr and "warning" not in proc.stderr
    proc = check_ok(run_cli(["data=imagefolder", f"data.root={root}", "data.image_size=96", "data.batch_size=4",
                             "data.eval_batch_size=6", "data.workers=0", "trainer.epochs=1", "trainer.max_steps_per_epoch=1",
                             f"hydra.run.dir={tmp_path / 'r96'}"]))
    assert "32 px CIFAR network but data.image_size=96: 9x the compute" in proc.stderr
