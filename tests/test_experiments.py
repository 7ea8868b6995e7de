"""The paper's experiment configs (configs/experiment/paper/): each composes to the recipe of
shared/paper/recipes.md, and its header quotes the command and the published number it reproduces."""
from __future__ import annotations

import re

import pytest

from helpers.cli import ROOT

EXPERIMENTS = ROOT / "configs" / "experiment" / "paper"


def _expected(stem: str) -> dict:
    """What each paper experiment must compose to (shared/paper/recipes.md)."""
    dataset, _, arch = stem.partition("_")
    if dataset == "imagenet":
        if arch == "mobilenet_v2":
            return dict(primary="imagenet", arch=arch, data="imagenet", optim=("sgd", 0.05, 4e-5), sched="cosine", epochs=150, batch=256, lam=0.1)
        return dict(primary="imagenet", arch=arch, data="imagenet", optim=("sgd", 0.1, 1e-4), sched=("step", [30, 60, 90]), epochs=100, batch=256, lam=0.1)
    if arch == "alexnet":
        return dict(primary="cifar", arch="alexnet", data="cifar10", optim=("adam", 5e-4, 1e-5), sched="cosine", epochs=50, batch=128, lam=1e-5)
    return dict(primary="cifar", arch=f"cifar_{arch}", data=dataset, optim=("sgd", 0.1, 5e-4), sched=("step", [82, 123]), epochs=164, batch=128, lam=1e-4)


def test_every_published_configuration_has_an_experiment():
    cifar = [f"{d}_{a}" for d in ("cifar10", "cifar100") for a in ("resnet20", "resnet56", "resnet110", "preresnet56", "wrn16_8", "mobilenetv2")]
    imagenet = [f"imagenet_{a}" for a in ("resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "mobilenet_v2")]
    assert sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")) == sorted(cifar + imagenet + ["cifar10_alexnet"])


@pytest.mark.parametrize("stem", sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")))
def test_paper_experiment_composes(stem):
    import networks
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    exp = _expected(stem)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        default = compose(exp["primary"], overrides=[f"experiment=paper/{stem}"])
        plain = compose(exp["primary"], overrides=[f"experiment=paper/{stem}", "attention=none", "seed=3"])
    for cfg in (default, plain):
        assert cfg.model.arch == exp["arch"] and cfg.data.name == exp["data"]
        name, lr, wd = exp["optim"]
        assert cfg.optim.name == name and float(cfg.optim.lr) == pytest.approx(lr) and float(cfg.optim.weight_decay) == pytest.approx(wd)
        sched = exp["sched"] if isinstance(exp["sched"], str) else exp["sched"][0]
        assert cfg.sched.name == sched
        if sched == "step":
            assert list(cfg.sched.milestones) == exp["sched"][1] and cfg.sched.gamma == 0.1
        assert cfg.trainer.epochs == exp["epochs"] and cfg.data.batch_size == exp["batch"]
        assert cfg.optim.name != "sgd" or cfg.optim.momentum == 0.9
    resolved = OmegaConf.to_container(default.attention, resolve=True)
    assert resolved == {"name": "simam", "e_lambda": pytest.approx(exp["lam"])}  # SimAM unless attention= says otherwise
    assert plain.attention.name == "none" and plain.seed == 3  # the command line wins over the experiment
    info = networks.model_info(exp["arch"])
    assert info.family == ("cifar" if exp["primary"] == "cifar" and exp["arch"] != "alexnet" else "imagenet")
    if exp["arch"] == "alexnet":
        assert default.data.image_size == 128 and default.loss.label_smoothing == 0.1


@pytest.mark.parametrize("stem", sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")))
def test_paper_experiment_header(stem):
    text = (EXPERIMENTS / f"{stem}.yaml").read_text()
    header = "".join(l for l in text.splitlines(keepends=True) if l.startswith("#"))
    assert text.startswith("# @package _global_\n")
    script = "main_imagenet.py" if stem.startswith("imagenet") else "main_cifar.py"
    assert re.search(rf"python {script} -m experiment=paper/{stem} attention=\S+", header), header  # the sweep command
    assert "no published number" in header  # every file has attention types without one
    assert all(not l.strip() or l.startswith(("#", " ", "-", "defaults", "model", "sched", "data", "optim", "trainer"))
               for l in text.splitlines()), "override-only: no new top-level sections"


def test_headers_quote_the_published_numbers():
    """Every published top-1 of shared/paper appears in the header of the experiment that reproduces it."""
    from scripts.common import default_paper_dir, read_published

    paper = default_paper_dir()
    if not (paper / "cifar.csv").is_file():
        pytest.skip(f"no shared/paper at {paper} (set SIMAM_PAPER_DIR)")
    table = read_published(paper)
    assert table
    for (dataset, arch, _block, attention), pub in table.items():
        stem = f"{dataset}_{arch}" if dataset != "imagenet" else f"imagenet_{arch}"
        header = (EXPERIMENTS / f"{stem}.yaml").read_text()
        assert f"{attention} {pub.top1:.2f}" in header or re.search(rf"{attention}[^\n]*{pub.top1:.2f}", header), (stem, attention, pub.top1)
