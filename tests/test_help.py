"""--help and "did you mean": one screen with the original flags and every name to choose from,
suggestions for typos, no torch import on these paths, and the torch-free name table kept equal
to the model registries."""
from __future__ import annotations

import subprocess
import sys

import pytest

from engine.config_check import group_options, known_keys, zoo_names
from engine.flags import FLAGS
from engine.help import explain_compose_error, help_text, suggest, suggest_key
from helpers.compose import CONFIG_DIR, composed

ROOT = CONFIG_DIR.parent


@pytest.mark.parametrize("entry", ["cifar", "imagenet"])
def test_help_lists_flags_names_experiments_and_keys_in_one_screen(entry):
    text = help_text(entry)
    lines = text.splitlines()
    assert len(lines) <= 64
    for flag in FLAGS[entry]:
        if flag.help:
            assert all(name in text for name in flag.names), flag.names
    zoo = zoo_names()
    for name in [*zoo.ARCHITECTURES, *zoo.ATTENTIONS, *group_options("data"), *group_options("experiment")]:
        assert name in text.split(), name
    assert "paper/cifar100_resnet20" in text and "paper/imagenet_resnet50" in text
    for key in ("data.batch_size=", "optim.lr=", "trainer.epochs=", "trainer.devices=", "resume=", "ema.enabled="):
        assert key in text, key
    assert ("trainer.epochs=164" if entry == "cifar" else "trainer.epochs=100") in text  # the entry's own defaults


@pytest.mark.parametrize("name, options, expected", [
    ("resnt50", ["resnet50", "resnet18", "alexnet"], "did you mean resnet50?"),
    ("simAMM", ["none", "simam", "se"], "did you mean simam?"),
    ("zzz", ["b", "a"], "valid: a, b"),
])
def test_suggest(name, options, expected):
    assert suggest(name, options) == expected


def test_suggest_is_closest_first():
    hint = suggest("paper/cifar100_resnt20", group_options("experiment"))
    assert hint.startswith("did you mean paper/cifar100_resnet20")
    assert suggest("trainer.epoch", known_keys("cifar")) == "did you mean trainer.epochs?"


def _compose_error(overrides: list[str]) -> BaseException:
    with pytest.raises(Exception) as info:  # noqa: PT011 - whatever Hydra raises
        composed(overrides)
    return info.value


@pytest.mark.parametrize("overrides, needles, absent", [
    (["experiment=paper/cifar100_resnt20"], ["unknown experiment 'paper/cifar100_resnt20'", "did you mean paper/cifar100_resnet20"], []),
    (["experiment=nope"], ["unknown experiment 'nope'", "alexnet_cifar10", "paper/cifar10_resnet20"], []),
    (["trainer.epoch=3"], ["trainer.epoch", "did you mean trainer.epochs?"], ["+trainer.epoch"]),
    (["data=imagnet"], ["unknown data 'imagnet'", "did you mean imagenet?"], []),
    (["attention=se", "attention.e_lambda=0.1"], ["attention.e_lambda", "attention=se", "attention=simam"], ["+attention"]),
    (["model.kwargs.drop_rate=0.3"], ["+model.kwargs.drop_rate=0.3"], []),
])
def test_hydra_errors_become_one_line_with_suggestions(overrides, needles, absent):
    line = explain_compose_error(_compose_error(overrides), overrides, "cifar")
    assert "\n" not in line
    for needle in needles:
        assert needle in line, (needle, line)
    for word in absent:
        assert word not in line, (word, line)


def test_suggest_key_reads_hydras_message():
    assert suggest_key("Could not override 'optim.lrr'.", ["optim.lrr=1"]) == "unknown config key optim.lrr; did you mean optim.lr?"
    assert suggest_key("some other problem", []) == ""


def test_help_and_config_errors_do_not_import_torch():
    """--help and a config error must answer in well under 1.5 s: importing torch alone takes longer."""
    code = (
        "import sys, time; t = time.perf_counter()\n"
        "from engine.help import help_text; from engine.flags import translate_argv\n"
        "from engine.config_check import check_config, known_keys\n"
        "help_text('cifar'); help_text('imagenet'); known_keys('cifar')\n"
        "translate_argv('--dataset cifar100 --arch resnet20 --attention_type simam -p 5 ema=true'.split(), 'cifar')\n"
        "translate_argv('/data -a resnet50 --epochs 100 -j 8'.split(), 'imagenet')\n"
        "cfg = {'model': {'arch': 'resnet50'}, 'trainer': {'epochs': 0}}\n"
        "try:\n    check_config(cfg, 'imagenet')\nexcept Exception as e:\n    print(type(e).__name__)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm', 'networks')))\n"
        "print(round(time.perf_counter() - t, 3))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "UserError" and lines[1] == "[]", proc.stdout


def test_zoo_names_match_the_registries():
    import networks

    zoo = zoo_names()
    assert sorted(zoo.ARCHITECTURES) == networks.list_models()
    assert sorted(zoo.ATTENTIONS) == networks.list_attentions()
    for name, facts in zoo.ARCHITECTURES.items():
        info = networks.model_info(name)
        assert (facts.family, facts.input_size, facts.num_classes) == (info.family, info.input_size, info.num_classes), name
    cifar = set(networks.list_models("cifar"))
    assert set(zoo.SIMAM_CIFAR_NAMES.values()) <= cifar
    registry_names = getattr(__import__("networks.registry").registry, "SIMAM_CIFAR_NAMES", None)
    assert registry_names is None or registry_names == zoo.SIMAM_CIFAR_NAMES


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(zoo_names().ARCHITECTURES))
def test_zoo_sizes_and_blocks_are_what_the_networks_accept(name, single_thread):
    """Each network runs at its smallest accepted size; AlexNet refuses one pixel outside its range;
    every listed block builds and an architecture without blocks refuses one."""
    import torch

    import networks

    facts = zoo_names().ARCHITECTURES[name]
    model = networks.create_model(name, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, facts.min_size, facts.min_size)).shape == (1, 3)
        if name == "alexnet":
            assert model(torch.zeros(1, 3, facts.max_size, facts.max_size)).shape == (1, 3)
            for size in (facts.min_size - 1, facts.max_size + 1):
                with pytest.raises(Exception):  # noqa: PT011 - whatever the layer raises
                    model(torch.zeros(1, 3, size, size))
    for block in facts.blocks:
        networks.create_model(name, num_classes=3, block=block)
    if not facts.blocks:
        with pytest.raises((ValueError, TypeError)):
            networks.create_model(name, num_classes=3, block="basic")
