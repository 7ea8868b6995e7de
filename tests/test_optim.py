"""engine.optim: optimizers, lr scaling, and per-update schedules whose milestones a warmup never moves."""
import math

import pytest
import torch
from torch import nn

from engine.optim import build_optimizer, build_scheduler, scaled_lr


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


def _lr_per_epoch(sched, opt, epochs: int, spe: int) -> list[float]:
    """The lr of each epoch's updates (asserting it is constant within the epoch after warmup)."""
    lrs = []
    for e in range(epochs):
        sched.step_update(e * spe)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("warmup_epochs", [0, 1, 2.5])
def test_step_milestones_do_not_move_with_warmup(warmup_epochs):
    spe = 7
    opt = build_optimizer(_net(), "sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = build_scheduler(opt, "step", spe, 164, milestones=[82, 123], gamma=0.1,
                            warmup_epochs=warmup_epochs, warmup_lr_init=0.01)
    for u in range(3 * spe, 164 * spe):  # every update after the warmup
        sched.step_update(u)
        epoch = u // spe
        want = 0.1 * (0.1 ** ((epoch >= 82) + (epoch >= 123)))
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12), (u, epoch)
    lrs = _lr_per_epoch(sched, opt, 164, spe)
    drops = [e for e in range(1, 164) if lrs[e] < lrs[e - 1] * 0.5]
    assert drops == [82, 123]


def test_warmup_is_linear_per_update_from_warmup_lr_init():
    opt = build_optimizer(_net(), "sgd", lr=0.1, momentum=0.9, weight_decay=0.0)
    sched = build_scheduler(opt, "step", 10, 5, milestones=[3], warmup_epochs=1, warmup_lr_init=0.01)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)  # the first update's lr, set when built
    sched.step_update(5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 + 0.09 * 5 / 10)
    sched.step_update(10)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize("warmup_epochs", [0, 1])
def test_cosine_is_positive_at_every_update_of_the_run(warmup_epochs):
    spe, epochs = 13, 6
    opt = build_optimizer(_net(), "sgd", lr=0.1, momentum=0.9, weight_decay=0.0)
    sched = build_scheduler(opt, "cosine", spe, epochs, min_lr=0.0, warmup_epochs=warmup_epochs, warmup_lr_init=1e-3)
    lrs = []
    for u in range(epochs * spe):
        sched.step_update(u)
        lrs.append(opt.param_groups[0]["lr"])
    assert min(lrs) > 0
    assert lrs[warmup_epochs * spe] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[warmup_epochs * spe:], lrs[warmup_epochs * spe + 1:]))
    sched.step_update(epochs * spe)  # after the last update: the end of the schedule
    assert opt.param_groups[0]["lr"] == 0.0


def test_a_longer_run_resumed_from_a_shorter_one_follows_its_own_length_and_lr():
    spe = 10
    short_opt = build_optimizer(_net(), "sgd", lr=0.1, momentum=0.9, weight_decay=0.0)
    short = build_scheduler(short_opt, "cosine", spe, 2)
    opt = build_optimizer(_net(), "sgd", lr=0.2, momentum=0.9, weight_decay=0.0)
    longer = build_scheduler(opt, "cosine", spe, 5)
    opt.load_state_dict(short_opt.state_dict())  # the old run's lr is in the optimizer state
    longer.load_state_dict(short.state_dict())
    for u in range(2 * spe, 5 * spe):
        longer.step_update(u)
        want = 0.5 * 0.2 * (1 + math.cos(math.pi * u / (5 * spe)))
        assert opt.param_groups[0]["lr"] == pytest.approx(want) and want > 0


def test_no_weight_decay_on_norm_and_bias():
    net = _net()
    opt = build_optimizer(net, "sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, no_decay_norm_bias=True)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    names = dict(net.named_parameters())
    assert decay_of[id(names["0.weight"])] == 5e-4 and decay_of[id(names["3.weight"])] == 5e-4
    for name in ("0.bias", "1.weight", "1.bias", "3.bias"):
        assert decay_of[id(names[name])] == 0.0, name
    assert len(decay_of) == len(names)
    every = build_optimizer(net, "adamw", lr=1e-3, weight_decay=5e-4)
    assert {g["weight_decay"] for g in every.param_groups} == {5e-4}


def test_optimizers_and_their_options():
    net = _net()
    sgd = build_optimizer(net, "sgd", lr=0.1, momentum=0.8, weight_decay=1e-4, nesterov=True)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8
    adam = build_optimizer(net, "adam", lr=1e-3, betas=[0.8, 0.99])
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["betas"] == (0.8, 0.99)
    assert isinstance(build_optimizer(net, "adamw", lr=1e-3), torch.optim.AdamW)
    with pytest.raises(ValueError, match="valid: sgd, adam, adamw"):
        build_optimizer(net, "lamb", lr=1e-3)
    with pytest.raises(ValueError, match="valid: cosine, step"):
        build_scheduler(sgd, "poly", 10, 3)


def test_scaled_lr():
    assert scaled_lr(0.1, 256, 1024) == pytest.approx(0.4)
    assert scaled_lr(0.1, 256, 1024, "sqrt") == pytest.approx(0.2)
    assert scaled_lr(5e-4, 512, 128, "linear") == pytest.approx(1.25e-4)
    with pytest.raises(ValueError, match="linear, sqrt"):
        scaled_lr(0.1, 256, 512, "log")
    with pytest.raises(ValueError):
        scaled_lr(0.0, 256, 512)
