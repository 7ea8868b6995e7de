"""engine.loops: no per-step host copies, gradient accumulation, clipping, non-finite steps, progress."""
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from engine.loops import NonFiniteLossError, evaluate, train_one_epoch

CPU = torch.device("cpu")


class ScalarToTensorRecorder(TorchFunctionMode):
    """Records every tensor made from Python data (torch.tensor, as_tensor, ...): on CUDA each is
    a blocking host-to-device copy, the sync that `torch.as_tensor(step, device=cuda)` caused."""

    FACTORIES = {"tensor", "as_tensor", "asarray", "scalar_tensor", "new_tensor"}

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        data = args[1] if name == "new_tensor" else (args[0] if args else kwargs.get("data"))
        if name in self.FACTORIES and not isinstance(data, torch.Tensor):
            self.calls.append(f"{name}({data!r})")
        return func(*args, **kwargs)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5))


def _batches(n: int, size: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 6, 6, generator=g), torch.randint(0, 5, (size,), generator=g)) for _ in range(n)]


def _sgd(net: nn.Module, lr: float = 0.1) -> torch.optim.SGD:
    return torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)


def _train(net, batches, **kw):
    opt = kw.pop("optimizer", None) or _sgd(net)
    return train_one_epoch(net, batches, opt, nn.CrossEntropyLoss(), device=CPU, **kw)


def _params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def _max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


class _Sched:
    def __init__(self) -> None:
        self.updates: list[int] = []

    def step_update(self, num_updates: int) -> None:
        self.updates.append(num_updates)


@pytest.mark.parametrize("options", [
    {}, {"skip_nonfinite": True}, {"accum_steps": 2, "clip_grad": 1.0}, {"clip_grad": 0.1, "clip_mode": "value"},
])
def test_no_tensor_is_made_from_a_python_number_per_step_or_eval_batch(options):
    net, batches = _net(), _batches(5, 4)
    infos = []
    with ScalarToTensorRecorder() as rec:
        _train(net, batches, scheduler=_Sched(), log_every=2, on_log=infos.append, on_step=infos.append, **options)
        evaluate(net, batches, nn.CrossEntropyLoss(), device=CPU)
    assert rec.calls == [] and len(infos) == 5 + 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: part of the prepared GPU check")
def test_no_host_sync_per_step_or_eval_batch_on_cuda():
    """torch.cuda.set_sync_debug_mode counts the synchronizing calls: the same for 3 and 9 batches."""
    import warnings

    cuda = torch.device("cuda")

    def syncs(n: int) -> int:
        net = _net().to(cuda)
        data = [(x.to(cuda), y.to(cuda)) for x, y in _batches(n, 8)]
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_one_epoch(net, data, _sgd(net), nn.CrossEntropyLoss(), device=cuda, log_every=0,
                                scheduler=_Sched(), accum_steps=2, clip_grad=1.0, on_step=lambda info: None)
                evaluate(net, data, nn.CrossEntropyLoss(), device=cuda)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    syncs(3)  # warm-up: lazy CUDA initialisation
    assert syncs(3) == syncs(9)


def test_the_recorder_sees_the_old_per_step_copy():
    with ScalarToTensorRecorder() as rec:
        torch.as_tensor(3, device=CPU)
        torch.zeros(2).new_tensor(1.0)
    assert rec.calls == ["as_tensor(3)", "new_tensor(1.0)"]


def test_accumulating_2x16_equals_one_step_of_32():
    data = _batches(4, 16)
    big = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(data[::2], data[1::2])]
    one, two = _net(), _net()
    s1, s2 = _Sched(), _Sched()
    r1 = _train(one, big, scheduler=s1, global_step=10)
    r2 = _train(two, data, scheduler=s2, global_step=10, accum_steps=2)
    assert _max_diff(_params(one), _params(two)) < 1e-6
    assert s1.updates == s2.updates == [11, 12] and r1["global_step"] == r2["global_step"] == 12
    assert (r2["steps"], r2["updates"], r1["updates"]) == (4, 2, 2)
    assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-6) and r1["images"] == r2["images"] == 64


def test_a_partial_window_at_the_end_of_the_epoch_is_the_mean_of_its_batches():
    data = _batches(3, 16)
    ref, acc = _net(), _net()
    opt = _sgd(ref)
    _train(ref, [(torch.cat([data[0][0], data[1][0]]), torch.cat([data[0][1], data[1][1]]))], optimizer=opt)
    _train(ref, [data[2]], optimizer=opt)
    result = _train(acc, data, accum_steps=2)
    assert _max_diff(_params(ref), _params(acc)) < 1e-6
    assert (result["steps"], result["updates"], result["global_step"]) == (3, 2, 2)
    assert _train(_net(), data, accum_steps=2, max_steps=1)["updates"] == 1  # max_steps ends a window too


def test_a_stop_happens_between_updates_only():
    asked = []

    def should_stop() -> bool:
        asked.append(True)
        return True

    result = _train(_net(), _batches(6, 4), accum_steps=3, should_stop=should_stop)
    assert result["interrupted"] and result["steps"] == 3 and result["updates"] == 1 and len(asked) == 1


def test_an_epoch_stopped_between_updates_resumes_to_the_same_weights():
    data = _batches(7, 4)
    full, parts = _net(), _net()
    s_full, s_parts = _Sched(), _Sched()
    _train(full, data, accum_steps=2, scheduler=s_full, optimizer=(opt_full := _sgd(full)))
    opt = _sgd(parts)
    first = _train(parts, data, accum_steps=2, scheduler=s_parts, optimizer=opt, should_stop=lambda: True)
    rest = _train(parts, data[first["steps"]:], accum_steps=2, scheduler=s_parts, optimizer=opt,
                  global_step=first["global_step"], first_batch=first["steps"])
    assert (first["steps"], first["global_step"], rest["global_step"]) == (2, 1, 4)
    assert _max_diff(_params(full), _params(parts)) == 0.0 and s_full.updates == s_parts.updates == [1, 2, 3, 4]
    assert opt_full.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


@pytest.mark.parametrize("use_scaler", [False, True])
def test_clipping_bounds_the_gradient_norm_of_the_update(use_scaler):
    data = [(torch.randn(8, 3, 6, 6) * 50, torch.randint(0, 5, (8,)))]
    free = _net()
    before = _params(free)
    _train(free, data, optimizer=torch.optim.SGD(free.parameters(), lr=1.0))
    free_norm = torch.linalg.vector_norm(torch.cat([(a - b).flatten() for a, b in zip(before, _params(free))]))
    assert free_norm > 1.0  # so that clipping at 0.25 has work to do
    clipped = _net()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if use_scaler else None
    _train(clipped, data, optimizer=torch.optim.SGD(clipped.parameters(), lr=1.0), clip_grad=0.25, scaler=scaler)
    step = torch.cat([(a - b).flatten() for a, b in zip(before, _params(clipped))])
    assert float(torch.linalg.vector_norm(step)) == pytest.approx(0.25, rel=1e-4)  # the true gradient, clipped


def test_clipping_by_value():
    net = _net()
    _train(net, [(torch.randn(8, 3, 6, 6) * 50, torch.randint(0, 5, (8,)))], clip_grad=0.01, clip_mode="value")
    grads = torch.cat([p.grad.flatten() for p in net.parameters()])
    assert float(grads.abs().max()) <= 0.01 + 1e-7 and float(grads.abs().max()) == pytest.approx(0.01)


def _with_nan(batches, index):
    out = list(batches)
    out[index] = (torch.full_like(out[index][0], float("nan")), out[index][1])
    return out


def test_skip_nonfinite_drops_the_update_and_keeps_the_metrics_finite():
    data = _batches(4, 4)
    skipping, reference = _net(), _net()
    sched = _Sched()
    result = _train(skipping, _with_nan(data, 2), skip_nonfinite=True, scheduler=sched)
    opt = _sgd(reference)
    _train(reference, data[:2], optimizer=opt)
    _train(reference, data[3:], optimizer=opt)
    assert _max_diff(_params(skipping), _params(reference)) == 0.0
    assert result["skipped"] == 1 and result["updates"] == 3 and result["global_step"] == 4 and sched.updates == [1, 2, 3, 4]
    assert torch.isfinite(torch.tensor(result["loss"])) and result["images"] == 12


def test_a_nonfinite_loss_raises_at_the_next_log_step():
    # batch 2 is in the second window of 2 batches: update 5 + 1
    with pytest.raises(NonFiniteLossError, match="at step 6"):
        _train(_net(), _with_nan(_batches(4, 4), 2), log_every=100, global_step=5, accum_steps=2)


def test_progress_every_step_without_a_log_step():
    steps, logs = [], []
    _train(_net(), _batches(5, 4), log_every=50, on_step=steps.append, on_log=logs.append, first_batch=3)
    assert [s["step"] for s in steps] == [4, 5, 6, 7, 8] and [s["images"] for s in steps] == [4, 8, 12, 16, 20]
    assert logs == []


def test_bad_options_are_refused():
    for kw, match in (({"accum_steps": 0}, "accum_steps"), ({"clip_mode": "agc"}, "norm, value"), ({"clip_grad": 0.0}, "clip_grad")):
        with pytest.raises(ValueError, match=match):
            _train(_net(), _batches(1, 2), **kw)


def test_evaluate_counts_every_sample_once():
    data = _batches(3, 5) + _batches(1, 2, seed=4)
    result = evaluate(_net(), data, nn.CrossEntropyLoss(), device=CPU)
    assert result["num_samples"] == 17 and 0 <= result["acc1"] <= result["acc5"] <= 100


# ------------------------------------------------------------------ two gloo ranks (spawned: module-level)
def _rank_data(rank: int, epoch: int) -> list:
    return _batches(4, 4, seed=10 * epoch + rank)


def _ddp_rank(out: str) -> None:
    from engine.distributed import cleanup, init_distributed

    info = init_distributed("cpu", "gloo", timeout_s=60)
    net = _net()
    ddp = nn.parallel.DistributedDataParallel(net)
    opt = _sgd(net)
    results = []
    for epoch, accum, nan_rank, nan_batch in ((1, 1, 1, 2), (2, 2, 0, 3)):
        data = _rank_data(info.rank, epoch)
        if info.rank == nan_rank:
            data = _with_nan(data, nan_batch)
        results.append(_train(ddp, data, optimizer=opt, skip_nonfinite=True, accum_steps=accum))
    params = _params(net)
    try:  # without skip_nonfinite: a NaN on rank 1 only stops both ranks at the same logging step
        _train(ddp, _with_nan(_rank_data(info.rank, 3), 1) if info.rank == 1 else _rank_data(info.rank, 3),
               optimizer=opt, log_every=2)
        error = "none"
    except NonFiniteLossError as e:
        error = str(e)
    torch.save({"params": params, "skipped": [r["skipped"] for r in results], "error": error}, Path(out) / f"rank{info.rank}.pt")
    cleanup()


def _joined(parts: list) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@pytest.mark.slow
def test_a_nonfinite_loss_on_one_of_two_gloo_ranks_is_skipped_or_raised_on_both(tmp_path, monkeypatch):
    from engine.distributed import spawn

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spawn(_ddp_rank, 2, args=(str(tmp_path),))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == [1, 1]
    assert _max_diff(ranks[0]["params"], ranks[1]["params"]) == 0.0
    assert ranks[0]["error"] == ranks[1]["error"] == "non-finite loss at step 1 (lr 0.1)"
    # one process on both ranks' batches: DDP averages the equal-sized ranks' gradients
    ref = _net()
    opt = _sgd(ref)
    e1 = [_rank_data(r, 1) for r in (0, 1)]
    _train(ref, [_joined([e1[0][i], e1[1][i]]) for i in (0, 1, 3)], optimizer=opt)  # update 2 dropped
    e2 = [_rank_data(r, 2) for r in (0, 1)]
    _train(ref, [_joined([e2[0][0], e2[0][1], e2[1][0], e2[1][1]])], optimizer=opt)  # 2nd window dropped
    assert _max_diff(_params(ref), ranks[0]["params"]) < 1e-6
