"""Our networks inside timm: names, parameter counts, timm's train.py/validate.py calls, our checkpoints.

timm's train.py builds a model with `create_model(name, pretrained=, in_chans=, num_classes=,
drop_rate=, drop_path_rate=, drop_block_rate=, global_pool=, bn_momentum=, bn_eps=, scriptable=,
checkpoint_path=)` (None values pruned by timm) and imports `--device-modules` first; validate.py
calls `create_model(name, pretrained=, num_classes=, in_chans=, global_pool=, scriptable=)` and
then `load_checkpoint(model, path, use_ema)`. Both are reproduced here with those arguments.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.data import resolve_data_config
from timm.models import load_checkpoint

import networks
from engine.checkpoint import TrainState, make_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")

PREFIXES = {"simam": "simam", "se": "se", "cbam": "cbam", "eca": "eca", "srm": "srm", "gc": "gc", "none": "plain"}


def test_every_architecture_and_attention_has_a_timm_name():
    expected = {f"{PREFIXES[a]}_{arch}" for arch in networks.list_models() for a in networks.list_attentions()}
    assert set(networks.list_timm_models()) == expected
    assert set(timm.list_models(module="timm_zoo")) == expected
    assert networks.timm_zoo.clashes() == []
    for name in ("simam_resnet50", "se_resnet50", "cbam_resnet50", "eca_resnet50", "plain_resnet50", "simam_cifar_resnet56"):
        assert timm.is_model(name), name
    # timm's own attention ResNets stay timm's
    for own in ("seresnet50", "ecaresnet50d", "resnet50"):
        assert timm.models.model_entrypoint(own).__module__.startswith("timm."), own


@pytest.mark.parametrize("name,arch,attention,params", [
    ("simam_resnet50", "resnet50", "simam", 25_557_032),  # = ResNet-50: SimAM adds no parameter
    ("se_resnet50", "resnet50", "se", None),
    ("plain_cifar_resnet20", "cifar_resnet20", "none", None),
])
def test_timm_model_is_ours(name: str, arch: str, attention: str, params):
    with torch.device("meta"):
        model = timm.create_model(name)
        reference = networks.create_model(arch, num_classes=networks.model_info(arch).num_classes, attention=attention,
                                          attention_kwargs={"e_lambda": 0.1} if attention == "simam" else None)
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in reference.parameters())
    if params is not None:
        assert count == params
    assert model.model_spec == reference.model_spec
    assert list(model.state_dict()) == list(reference.state_dict())


def test_simam_lambda_defaults_to_the_papers_per_family():
    with torch.device("meta"):
        assert timm.create_model("simam_resnet18").model_spec["attention_kwargs"]["e_lambda"] == 0.1
        assert timm.create_model("simam_cifar_resnet20").model_spec["attention_kwargs"]["e_lambda"] == 1e-4
        assert timm.create_model("simam_alexnet").model_spec["attention_kwargs"]["e_lambda"] == 1e-5
        assert timm.create_model("simam_resnet18", e_lambda=0.5).model_spec["attention_kwargs"]["e_lambda"] == 0.5
        assert timm.create_model("se_resnet18", reduction=8).model_spec["attention_kwargs"]["reduction"] == 8


def train_py_create(name: str, **overrides):
    """create_model as timm's train.py calls it, with its defaults (drop 0.0, the rest None)."""
    args = dict(pretrained=False, in_chans=3, num_classes=None, drop_rate=0.0, drop_path_rate=None, drop_block_rate=None,
                global_pool=None, bn_momentum=None, bn_eps=None, scriptable=None, checkpoint_path="")
    args.update(overrides)
    return timm.create_model(name, **args)


def test_train_py_arguments_and_data_config():
    with torch.device("meta"):
        model = train_py_create("simam_cifar_resnet20")
        assert model.num_classes == 100
        assert resolve_data_config({}, model=model)["input_size"] == (3, 32, 32)
        imagenet = train_py_create("simam_resnet18", num_classes=10)
    config = resolve_data_config({}, model=imagenet)
    assert imagenet.num_classes == 10 and imagenet.fc.out_features == 10
    assert (config["input_size"], config["crop_pct"], config["interpolation"]) == ((3, 224, 224), 0.875, "bilinear")


def test_drop_rate_zero_keeps_the_architectures_dropout():
    with torch.device("meta"):
        assert train_py_create("plain_alexnet").classifier[2].p == 0.5  # the notebook's dropout, despite --drop 0.0
        assert train_py_create("plain_mobilenet_v2", drop_rate=0.2).classifier[0].p == 0.2
        with pytest.raises(ValueError, match="no dropout"):
            train_py_create("plain_resnet18", drop_rate=0.2)


@pytest.mark.parametrize("kwargs,needle", [({"pretrained": True}, "no pretrained weights"), ({"in_chans": 1}, "3 input channels")])
def test_refusals(kwargs: dict, needle: str):
    with pytest.raises(ValueError, match=needle):
        timm.create_model("simam_resnet18", **kwargs)


@torch.no_grad()
def _our_checkpoint(tmp_path: Path, arch: str, num_classes: int, e_lambda: float) -> tuple[torch.nn.Module, Path]:
    """A trained-looking model of ours saved the way the trainer saves last.pth."""
    torch.manual_seed(0)
    model = networks.create_model(arch, num_classes=num_classes, attention="simam", attention_kwargs={"e_lambda": e_lambda})
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ckpt = make_checkpoint(model=model, optimizer=optimizer, scheduler=None, scaler=None, ema=None,
                           state=TrainState(epoch=3, step=30), config={"model": {"arch": arch}}, rng_ranks=[])
    path = tmp_path / "last.pth"
    torch.save(ckpt, path)
    return model.eval(), path


@pytest.mark.parametrize("arch,num_classes,size,e_lambda", [("cifar_resnet20", 10, 32, 1e-4), ("resnet18", 1000, 64, 0.1)])
def test_validate_py_loading_of_our_checkpoint_gives_our_logits(arch: str, num_classes: int, size: int, e_lambda: float,
                                                                tmp_path: Path):
    ours, path = _our_checkpoint(tmp_path, arch, num_classes, e_lambda)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ours(x)
    name = networks.timm_name(arch, "simam")
    # validate.py: create_model(...) then load_checkpoint(model, --checkpoint, --use-ema)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=3, global_pool=None, scriptable=None)
    load_checkpoint(model, str(path), use_ema=False)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), expected, rtol=0, atol=0)
    # create_model(checkpoint_path=...) and train.py --initial-checkpoint (load_checkpoint with use_ema=True)
    model = train_py_create(name, num_classes=num_classes, checkpoint_path=str(path))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), expected, rtol=0, atol=0)


@pytest.mark.slow
def test_a_fresh_timm_knows_our_names_only_after_importing_networks():
    """What timm's train.py `--device-modules networks` (an importlib.import_module) provides."""
    code = ("import importlib, timm; before = timm.is_model('simam_resnet50'); importlib.import_module('networks'); "
            "print(before, timm.is_model('simam_resnet50'))")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def _original_simam_r18(tmp_path: Path, attention: str) -> tuple[torch.nn.Module, Path]:
    """A checkpoint file of the SimAM code (its README's released format), from the reference network."""
    import reference_simam as ref

    torch.manual_seed(0)
    original = ref.build_reference("resnet18", 1000, attention, 0.1 if attention == "simam" else None).eval()
    with torch.no_grad():
        for m in original.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "model_best.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in original.state_dict().items()}, "epoch": 100,
                "arch": "resnet18", "best_acc": 71.31}, path)
    return original, path


def test_validate_py_loads_the_simam_codes_checkpoint(tmp_path: Path):
    original, path = _original_simam_r18(tmp_path, "simam")
    model = timm.create_model("simam_resnet18", pretrained=False, num_classes=None, in_chans=3)
    load_checkpoint(model, str(path), use_ema=False)  # conv2.0.weight -> conv2.weight by the pre-hook
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), original(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="add --attention_type simam --attention_param 0.1"):
        load_checkpoint(timm.create_model("plain_resnet18"), str(path), use_ema=False)
