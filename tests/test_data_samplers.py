"""Repeated-augmentation sampling, drop_last over several ranks, and worker counts."""
from __future__ import annotations

import warnings
from collections import Counter

import pytest
import torch

from engine import data
from engine.data import loader as data_loader


def fake_train(n: int = 48, augment: str = "cifar"):
    return data.build_datasets("fake", None, augment=augment, image_size=16, num_train=n, num_val=4, normalize=False)[0]


def samplers(n: int, world: int, **kwargs) -> list:
    return [data.train_sampler(n, rank=r, world_size=world, **kwargs) for r in range(world)]


# --------------------------------------------------------------------------------------------
# Repeated augmentation
# --------------------------------------------------------------------------------------------

def test_repeated_aug_draws_each_image_repeats_times_as_virtual_indices():
    n = 60
    sampler = data.train_sampler(n, batch_size=6, seed=1, repeated_aug=3)
    assert isinstance(sampler, data.RepeatAugSampler)
    indices = list(sampler)
    assert len(indices) == len(sampler) == n and len(set(indices)) == n  # n draws, all distinct virtual indices
    images = Counter(i % n for i in indices)
    assert len(images) == 20 and set(images.values()) == {3}
    assert sorted({i // n for i in indices}) == [0, 1, 2]
    sampler.set_epoch(1)
    assert set(i % n for i in sampler) != set(images)  # another epoch, other images


def test_repeats_of_an_image_go_to_different_ranks_in_the_same_step():
    n, world, batch = 96, 3, 4
    shards = [list(s) for s in samplers(n, world, batch_size=batch, seed=2, repeated_aug=3)]
    for step in range(n // (batch * world)):
        per_rank = [{i % n for i in shard[step * batch:(step + 1) * batch]} for shard in shards]
        assert per_rank[0] == per_rank[1] == per_rank[2]  # each image once on every rank
    single = list(data.train_sampler(n, batch_size=batch * world, seed=2, repeated_aug=3))
    for step in range(n // (batch * world)):
        together = sorted(i for shard in shards for i in shard[step * batch:(step + 1) * batch])
        assert together == sorted(single[step * batch * world:(step + 1) * batch * world])  # same global batches


def test_repeats_get_different_augmentations_reproducibly():
    train = fake_train(24)
    loader = data.build_loader(train, batch_size=6, train=True, workers=0, seed=4, repeated_aug=3)
    data.set_epoch(loader, 0)
    order = list(loader.sampler)
    images = torch.cat([x for x, _ in loader])
    first = order.index(min(order, key=lambda i: (i % 24, i)))
    copies = [k for k, i in enumerate(order) if i % 24 == order[first] % 24]
    assert len(copies) == 3
    assert not torch.equal(images[copies[0]], images[copies[1]])  # same image, another crop/flip
    raw = train.dataset[order[first] % 24][1]
    assert all(train[order[k]][1] == raw for k in copies)  # same label
    again = data.build_loader(fake_train(24), batch_size=6, train=True, workers=2, seed=4, repeated_aug=3)
    data.set_epoch(again, 0)
    assert torch.equal(torch.cat([x for x, _ in again]), images)  # any worker count


def test_repeated_aug_resumes_mid_epoch_exactly():
    full = data.build_loader(fake_train(), batch_size=8, train=True, workers=0, seed=5, repeated_aug=2)
    data.set_epoch(full, 3)
    batches = [(x, y) for x, y in full]
    resumed = data.build_loader(fake_train(), batch_size=8, train=True, workers=0, seed=5, repeated_aug=2)
    data.set_epoch(resumed, 3)
    resumed.sampler.set_start_batch(4)
    rest = list(resumed)
    assert len(rest) == 2 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches[4:], rest))


def test_repeated_aug_off_is_the_plain_sampler_and_bad_counts_are_refused():
    for off in (0, 1):
        sampler = data.train_sampler(40, batch_size=4, seed=0, repeated_aug=off)
        assert type(sampler) is data.TrainSampler
        assert list(sampler) == list(data.TrainSampler(40, batch_size_per_rank=4, seed=0))
    with pytest.raises(ValueError, match="repeated_aug"):
        data.train_sampler(40, batch_size=4, repeated_aug=-1)


# --------------------------------------------------------------------------------------------
# drop_last with several ranks
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("repeated_aug", [0, 3])
@pytest.mark.parametrize("n, batch, world", [(50000, 128, 1), (103, 4, 3), (29, 4, 3), (65, 8, 4)])
def test_drop_last_false_uses_every_draw_once_with_equal_steps(n, batch, world, repeated_aug):
    shards = samplers(n, world, batch_size=batch, seed=1, drop_last=False, repeated_aug=repeated_aug)
    drawn = [i for s in shards for i in s]
    rest = n % (batch * world)
    expected = n if rest >= world else n - rest
    assert len(drawn) == len(set(drawn)) == expected  # no padding, no duplicate
    steps = {s.num_batches for s in shards}
    assert steps == {n // (batch * world) + (1 if rest >= world else 0)}  # every rank the same number of steps
    if n == 50000:
        assert steps == {391}  # the original CIFAR loader: the last partial batch is kept
    if repeated_aug == 0:
        assert sorted(drawn) == sorted(set(range(n)) - set(data.TrainSampler(n, batch_size_per_rank=batch * world, seed=1,
                                                                              drop_last=False).order()[expected:].tolist()))


@pytest.mark.parametrize("world", [1, 3])
def test_drop_last_true_drops_the_partial_global_batch_on_every_rank(world):
    shards = samplers(103, world, batch_size=4, seed=1, drop_last=True)
    assert [len(s) for s in shards] == [len(list(s)) for s in shards] == [4 * (103 // (4 * world))] * world


def test_loader_drop_last_reaches_the_sampler():
    train = fake_train(50)
    for drop_last, steps in ((True, 6), (False, 7)):
        loader = data.build_loader(train, batch_size=8, train=True, workers=0, drop_last=drop_last)
        assert len(loader) == steps and sum(len(y) for _, y in loader) == (48 if drop_last else 50)


# --------------------------------------------------------------------------------------------
# Worker counts
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cpus, processes, expected", [(2, 1, 1), (2, 2, 0), (1, 1, 0), (16, 4, 3), (64, 1, 16), (96, 8, 11)])
def test_default_workers_follow_the_cores(monkeypatch, cpus, processes, expected):
    monkeypatch.setattr(data_loader, "available_cpus", lambda: cpus)
    assert data.default_workers(processes) == expected
    with pytest.raises(ValueError):
        data.default_workers(0)


def test_default_workers_on_this_machine_give_no_torch_warning():
    workers = data.default_workers(1)
    assert 0 <= workers < data.available_cpus()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = data.build_loader(fake_train(16), batch_size=8, train=True, workers=workers)
        list(loader)
    assert not caught, [str(w.message) for w in caught]


def test_too_many_workers_are_lowered_with_one_warning_of_ours():
    too_many = data.available_cpus() + 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = data.build_loader(fake_train(16), batch_size=8, train=False, workers=too_many)
        list(loader)
    assert loader.num_workers == data.available_cpus()
    assert [str(w.message) for w in caught] == [f"data.workers={too_many} is more than the {data.available_cpus()} CPUs "
                                                f"this process may use: using {data.available_cpus()} loader workers"]
