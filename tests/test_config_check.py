"""The config check: every bad value, key and combination is one line naming the key, before
anything is created; every shipped recipe passes."""
from __future__ import annotations

import shutil

import pytest

from engine import config_check
from engine.config_check import check_config, group_options, known_keys, rule_for
from engine.errors import UserError
from engine.help import explain_compose_error
from helpers.compose import composed


def _refusal(overrides: list[str], entry: str = "cifar") -> str:
    """The one line a command with these overrides is refused with (composition or check)."""
    try:
        cfg = composed(overrides, entry)
    except Exception as e:  # noqa: BLE001 - Hydra's composition errors, explained like engine/cli.py does
        return explain_compose_error(e, overrides, entry)
    with pytest.raises(UserError) as info:
        check_config(cfg, entry)
    return str(info.value)


# (overrides, words the one line must hold): issue 10's list first, then more
BAD = [
    (["trainer.epochs=abc"], ["trainer.epochs=abc", "integer >= 1"]),
    (["sched.milestones=abc"], ["sched.milestones=abc", "list of integers"]),
    (["seed=foo"], ["seed=foo", "integer"]),
    (["data.batch_size=0"], ["data.batch_size=0", ">= 1"]),
    (["data.batch_size=-1"], ["data.batch_size=-1", ">= 1"]),
    (["data.eval_batch_size=0"], ["data.eval_batch_size=0", ">= 1"]),
    (["optim.lr=-1"], ["optim.lr=-1", "> 0"]),
    (["data.workers=-1"], ["data.workers=-1", ">= 0"]),
    (["data.image_size=0"], ["data.image_size=0"]),
    (["data.image_size=-5"], ["data.image_size=-5"]),
    (["data.image_size=100000"], ["data.image_size=100000", "1024"]),
    (["model.arch=alexnet", "data.image_size=16"], ["data.image_size=16", "alexnet", "121 to 152"]),
    (["data.num_classes=-3"], ["data.num_classes=-3", "null or an integer >= 1"]),
    (["attention=se", "attention.reduction=0"], ["attention.reduction=0", "integer >= 1"]),
    (["attention=eca", "attention.gamma=0"], ["attention.gamma=0", "> 0"]),
    (["attention=simam", "attention.e_lambda=0"], ["attention.e_lambda=0", "> 0"]),
    (["attention=simam", "attention.e_lambda=-1"], ["attention.e_lambda=-1", "> 0"]),
    (["trainer.epochs=0"], ["trainer.epochs=0", ">= 1"]),
    (["data=fake", "data.num_val=0"], ["data.num_val=0", ">= 1"]),
    (["+trainer.epoch=3"], ["trainer.epoch", "did you mean trainer.epochs?"]),
    (["trainer.epoch=3"], ["trainer.epoch", "did you mean trainer.epochs?"]),
    (["trainer.accelerator=tpu"], ["trainer.accelerator=tpu", "auto, cpu, cuda"]),
    (["model.arch=../../x"], ["unknown architecture '../../x'", "model.arch"]),
    # more
    (["model.arch=resnt50"], ["unknown architecture 'resnt50'", "did you mean resnet50"]),
    (["seed=1.5"], ["seed=1.5", "integer"]),
    (["seed=-1"], ["seed=-1"]),
    (["optim.lr=inf"], ["optim.lr=inf", "> 0"]),
    (["optim.lr=abc"], ["optim.lr=abc", "a number > 0"]),
    (["optim.momentum=1.5"], ["optim.momentum=1.5", "< 1"]),
    (["optim.weight_decay=-0.1"], ["optim.weight_decay=-0.1", ">= 0"]),
    (["trainer.amp=fp8"], ["trainer.amp=fp8", "none, bf16, fp16"]),
    (["trainer.progress=fancy"], ["trainer.progress=fancy"]),
    (["trainer.dist_backend=mpi"], ["trainer.dist_backend=mpi", "nccl"]),
    (["trainer.devices=0"], ["trainer.devices=0", ">= 1"]),
    (["trainer.log_every=0"], ["trainer.log_every=0"]),
    (["trainer.accum_steps=0"], ["trainer.accum_steps=0"]),
    (["trainer.compile=maybe"], ["trainer.compile=maybe", "true or false"]),
    (["data.augment=randaug"], ["data.augment=randaug", "cifar, imagenet, alexnet, none"]),
    (["data.bad_images=ignore"], ["data.bad_images=ignore", "fail, skip"]),
    (["data.interpolation=lanczos"], ["data.interpolation=lanczos", "bicubic"]),
    (["data.reprob=1.5"], ["data.reprob=1.5"]),
    (["data.crop_pct=0"], ["data.crop_pct=0"]),
    (["weights_format=onnx"], ["weights_format=onnx", "original, torchvision, ours"]),
    (["optim.clip_mode=abs"], ["optim.clip_mode=abs", "norm, value"]),
    (["optim.clip_grad=0"], ["optim.clip_grad=0", "null or a number > 0"]),
    (["optim.lr_base_scale=log"], ["optim.lr_base_scale=log", "linear, sqrt"]),
    (["model.init=xavier"], ["model.init=xavier", "original, kaiming"]),
    (["ema.decay=1"], ["ema.decay=1", "< 1"]),
    (["ema.select_best=true"], ["ema.select_best=true", "ema.enabled=true"]),
    (["ema=true"], ["ema is a section", "ema.enabled=true"]),
    (["sched.milestones=[60,30]"], ["sched.milestones=[60,30]", "increase"]),
    (["sched.milestones=[0,30]"], ["sched.milestones=[0,30]", ">= 1"]),
    (["sched.warmup_epochs=200"], ["sched.warmup_epochs=200", "trainer.epochs=164"]),
    (["loss.label_smoothing=1"], ["loss.label_smoothing=1", "< 1"]),
    (["simam_lambda=0"], ["simam_lambda=0"]),
    (["model.block=bottleneck", "model.arch=cifar_wrn16_8"], ["model.block=bottleneck", "model.block=null"]),
    (["model.block=wide"], ["model.block=wide", "basic, bottleneck"]),
    (["model.arch=resnet50", "data.image_size=16"], ["data.image_size=16", "resnet50", "32 to 1024"]),
    (["attention=se", "+attention.e_lambda=0.1"], ["attention.e_lambda", "attention=se", "attention=simam"]),
    (["attention=se", "attention.e_lambda=0.1"], ["attention.e_lambda", "attention=se", "attention=simam"]),
    (["+data.num_train=5"], ["data.num_train=5", "data=cifar100", "data=fake"]),
    (["+foo=1"], ["unknown config key foo"]),
    (["+optim.lrr=1"], ["optim.lrr", "did you mean optim.lr?"]),
    (["~trainer.epochs"], ["trainer.epochs is missing"]),
    (["data.name=../x"], ["unknown data set '../x'", "data.name"]),
    (["attention.name=../x"], ["unknown attention '../x'"]),
    (["experiment=paper/cifar100_resnt20"], ["unknown experiment 'paper/cifar100_resnt20'", "paper/cifar100_resnet20"]),
    (["attention=simAMM"], ["unknown attention 'simAMM'", "did you mean simam?"]),
    (["data=imagnet"], ["unknown data 'imagnet'", "did you mean imagenet?"]),
    (["model.kwargs.drop_rate=0.3"], ["+model.kwargs.drop_rate=0.3"]),
]


@pytest.mark.parametrize("overrides, needles", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_is_one_line_naming_the_key(overrides, needles):
    line = _refusal(overrides)
    assert "\n" not in line and len(line) < 600, line
    for needle in needles:
        assert needle in line, (needle, line)


def test_imagenet_entry_is_checked_the_same_way():
    line = _refusal(["model.arch=alexnet", "data.image_size=224"], "imagenet")
    assert "data.image_size=224" in line and "121 to 152" in line


@pytest.mark.parametrize("entry", ["cifar", "imagenet"])
@pytest.mark.parametrize("experiment", [None] + group_options("experiment"))
def test_every_shipped_recipe_passes(entry, experiment):
    check_config(composed([f"experiment={experiment}"] if experiment else [], entry), entry)


@pytest.mark.parametrize("overrides", [
    *[[f"attention={a}"] for a in group_options("attention")],
    *[[f"data={d}", "data.root=/x"] for d in group_options("data")],
    *[[f"optim={o}"] for o in group_options("optim")], *[[f"sched={s}"] for s in group_options("sched")],
    ["model.arch=cifar_resnet164", "model.block=basic"], ["model.arch=alexnet", "data.image_size=128"],
    ["+model.kwargs.drop_rate=0.3", "model.arch=cifar_wrn16_8"], ["ema.enabled=true", "ema.select_best=true"],
    ["data.num_classes=null"], ["sched.milestones=[]"], ["optim.lr=1"], ["seed=4294967295"], ["data.workers=0"],
    ["data.auto_augment=rand-m9-mstd0.5-inc1", "data.reprob=0.25", "optim.clip_grad=1.0", "trainer.accum_steps=2"],
])
def test_valid_overrides_pass(overrides):
    check_config(composed(overrides), "cifar")


def test_plain_dicts_are_checked_too():
    cfg = composed([])
    cfg["trainer"]["epochs"] = 0
    with pytest.raises(UserError, match=r"trainer\.epochs=0"):
        check_config(cfg, "cifar")


def test_keys_come_from_the_yaml_files(tmp_path, monkeypatch):
    """A key added to a config file is known at once, with the type of its value."""
    configs = tmp_path / "configs"
    shutil.copytree(config_check.CONFIG_DIR, configs)
    (configs / "trainer" / "default.yaml").write_text((configs / "trainer" / "default.yaml").read_text() + "new_knob: 3\n")
    assert "trainer.new_knob" not in known_keys("cifar")
    monkeypatch.setattr(config_check, "CONFIG_DIR", configs)
    assert "trainer.new_knob" in known_keys("cifar")
    assert rule_for("trainer.new_knob", "cifar").kind == "int"


def test_enum_values_match_the_code_that_uses_them():
    """data.augment lists exactly the augment recipes engine.data builds."""
    import engine.data as data

    rule = rule_for("data.augment", "cifar")
    for name in rule.choices:
        data.build_transforms(name, 32)
    with pytest.raises(ValueError) as info:
        data.build_transforms("no-such-recipe", 32)
    valid = str(info.value).split("valid:")[1]
    assert sorted(v.strip() for v in valid.split(",")) == sorted(rule.choices)


def test_yaml_files_read_as_hydra_reads_them():
    """The config check reads configs/ without OmegaConf (faster); the values must be the same."""
    from omegaconf import OmegaConf

    for path in sorted(config_check.CONFIG_DIR.rglob("*.yaml")):
        assert config_check.read_yaml(path) == OmegaConf.to_container(OmegaConf.load(path), resolve=False), path
