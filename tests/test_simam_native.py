"""The C/OpenMP SimAM kernel (networks/attention/simam_native.py) against the plain formula.

Correctness only: output and input gradient at ResNet stage sizes and odd ones (1x1, 1xN, a
constant channel, NaN), the same bits whatever the thread count, which inputs it takes, the
self-check, the on-disk cache, and the fallback (no compiler, SIMAM_NATIVE=0, a failing self-check)
to the other kernels without an error.
"""
from __future__ import annotations

import pytest
import torch

from networks.attention import simam_fused, simam_native, simam_reference
from networks.attention.simam import simam
from networks.attention.simam_fused import SimAMFunction, resolve_impl

needs_native = pytest.mark.skipif(not simam_native.available(), reason=f"C kernel unavailable: {simam_native.failure()}")


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.setattr(simam_fused, "_OVERRIDE", None)


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache and no loaded kernel; the process's kernel again afterwards."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    simam_native.reset()
    yield tmp_path / "cache" / "simam_native"
    monkeypatch.undo()
    simam_native.reset()


def native_and_reference(x: torch.Tensor, g: torch.Tensor, e_lambda: float = 1e-4):
    """(y, dx) of the C kernel on x (its dtype and layout), and of the formula in float64 on the
    same values, as float32."""
    xn = x.clone(memory_format=torch.preserve_format).requires_grad_()
    yn = SimAMFunction.apply(xn, e_lambda, "native")
    yn.backward(g)
    assert yn.dtype == x.dtype and yn.stride() == x.stride() and xn.grad.stride() == x.stride()
    xr = x.double().requires_grad_()
    yr = simam_reference(xr, e_lambda)
    yr.backward(g.double())
    return yn.detach().float(), xn.grad.float(), yr.detach().float(), xr.grad.float()


SHAPES = [((4, 16, 7, 7), 1e-4), ((2, 8, 14, 14), 1e-4), ((2, 4, 28, 28), 0.1), ((1, 2, 56, 56), 1e-4),
          ((3, 5, 9, 11), 1e-4), ((4, 8, 1, 1), 1e-4), ((3, 5, 1, 7), 0.1), ((2, 3, 33, 1), 1e-4),
          ((2, 70, 5, 6), 1e-4), ((2, 130, 3, 3), 0.1)]  # channel blocks of 64 with a remainder
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


@needs_native
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape, e_lambda", SHAPES)
def test_float32_matches_the_formula_in_float64(shape, e_lambda, layout):
    torch.manual_seed(0)
    x = (torch.randn(*shape) * 3 + 1).contiguous(memory_format=LAYOUTS[layout])
    g = torch.randn(*shape).contiguous(memory_format=LAYOUTS[layout])
    y, dx, y_ref, dx_ref = native_and_reference(x, g, e_lambda)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-4, atol=1e-4 * dx_ref.abs().max().item())


@needs_native
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape, e_lambda", SHAPES[:4] + SHAPES[8:])
def test_bfloat16_matches_the_formula_to_bfloat16_rounding(shape, e_lambda, layout):
    """bf16 in and out, float32 inside: the outputs are the float64 formula's values of the same bf16
    inputs, rounded once to bf16 (relative error 2**-8), plus float32 noise."""
    torch.manual_seed(0)
    x = (torch.randn(*shape) * 3 + 1).bfloat16().contiguous(memory_format=LAYOUTS[layout])
    g = torch.randn(*shape).bfloat16().contiguous(memory_format=LAYOUTS[layout])
    y, dx, y_ref, dx_ref = native_and_reference(x, g, e_lambda)
    torch.testing.assert_close(y, y_ref, rtol=2.0**-8, atol=1e-3)
    torch.testing.assert_close(dx, dx_ref, rtol=2.0**-7, atol=2.0**-7 * dx_ref.abs().max().item())
    assert torch.equal(y.bfloat16().float(), y)  # representable: rounded, not truncated somewhere else


@needs_native
def test_bfloat16_rounds_to_nearest_even_as_torch_does():
    """A bf16 output is torch's rounding of the kernel's float32 value: compare against the float32
    kernel on the same (bf16-representable) inputs, rounded by torch. (The two kernels may sum in
    another order, so a value next to a rounding boundary may land one bf16 step away.)"""
    torch.manual_seed(0)
    x = (torch.randn(8, 64, 14, 14) * 3).bfloat16()
    x[0, 0, 0, 0] = float("nan")
    y16 = SimAMFunction.apply(x, 1e-4, "native")
    y32 = SimAMFunction.apply(x.float(), 1e-4, "native").bfloat16()
    assert torch.isnan(y16[0, 0]).all() and torch.isnan(y32[0, 0]).all()
    y16, y32 = y16[1:].float(), y32[1:].float()
    assert (y16 == y32).float().mean() > 0.999
    assert ((y16 - y32).abs() <= y32.abs() * 2.0**-7 + 1e-30).all()


@needs_native
def test_constant_channel_large_offset_and_nan():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, 7)
    x[0, 1] = 3.0  # zero variance: k = 1 / (4 lambda), weights sigmoid(1/2)
    x[1, 2] += 1000.0  # statistics of a large mean (two passes, no cancellation)
    x[1, 3, 2, 2] = float("nan")
    g = torch.randn(2, 4, 7, 7)
    y, dx, y_ref, dx_ref = native_and_reference(x, g)
    assert torch.isnan(y[1, 3]).all() and torch.isnan(dx[1, 3]).all()
    ok = torch.ones(2, 4, dtype=torch.bool)
    ok[1, 3] = False
    torch.testing.assert_close(y[ok], y_ref[ok], rtol=1e-5, atol=1e-5)
    # the +1000 channel: fp32 rounding of x ~ 1000 (ulp 6e-5) in t = g s x (1 - s), relative to the largest entry
    torch.testing.assert_close(dx[ok], dx_ref[ok], rtol=1e-4, atol=2e-4 * dx_ref[ok].abs().max().item())


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_same_bits_whatever_the_thread_count(layout, dtype):
    torch.manual_seed(0)
    x = torch.randn(8, 96, 14, 14).to(dtype).contiguous(memory_format=LAYOUTS[layout])
    g = torch.randn(8, 96, 14, 14).to(dtype).contiguous(memory_format=LAYOUTS[layout])
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            xx = x.clone(memory_format=torch.preserve_format).requires_grad_()
            SimAMFunction.apply(xx, 1e-4, "native").backward(g)
            results.append((SimAMFunction.apply(x, 1e-4, "native"), xx.grad))
    finally:
        torch.set_num_threads(before)
    for y, dx in results[1:]:
        assert torch.equal(y, results[0][0]) and torch.equal(dx, results[0][1])


def test_which_inputs_it_takes():
    x = torch.randn(2, 3, 4, 4)
    assert simam_native.applies(x) is True
    assert simam_native.applies(x.bfloat16())
    assert simam_native.applies(torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last))
    assert not simam_native.applies(x.double())
    assert not simam_native.applies(x.half())
    assert not simam_native.applies(x.permute(0, 1, 3, 2))  # neither NCHW nor channels_last
    assert not simam_native.applies(x[:, :, :, :2])  # a strided view
    assert not simam_native.applies(x.to("meta"))
    assert not simam_native.applies(torch.empty(0, 3, 4, 4))


@needs_native
def test_explicit_native_impl_and_non_contiguous_gradient():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    assert resolve_impl("native", x) == "native"
    g = torch.randn(2, 3, 5, 6).transpose(2, 3)  # not contiguous
    simam(x, 1e-4, "native").backward(g)
    xr = x.detach().clone().requires_grad_()
    simam_reference(xr).backward(g)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-5)


def test_unknown_kernels_name():
    with pytest.raises(ValueError, match="valid: eager, compiled, native"):
        SimAMFunction.apply(torch.randn(1, 2, 3, 3), 1e-4, "triton")


@needs_native
def test_built_once_then_loaded_from_the_cache(fresh):
    assert simam_native.available()
    built = simam_native.loaded_from()
    assert built is not None and built.startswith(str(fresh)) and len(list(fresh.glob("*.so"))) == 1
    simam_native.reset()
    assert simam_native.available() and simam_native.loaded_from() == built
    assert [p.name for p in fresh.iterdir()] == [built.rsplit("/", 1)[1]]  # no leftover temporary files


def test_no_compiler_falls_back_without_error(fresh, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    big = torch.randn(1, 1, 1, simam_fused.AUTO_COMPILE_MIN_NUMEL)
    assert not simam_native.available()
    assert "no C compiler" in simam_native.failure()
    assert resolve_impl("auto", big) != "native"
    assert resolve_impl("native", big) in ("compiled", "function")
    assert not fresh.exists() or not any(fresh.iterdir())


def test_turned_off_by_the_environment(fresh, monkeypatch):
    monkeypatch.setenv("SIMAM_NATIVE", "0")
    x = torch.randn(1, 1, 1, simam_fused.AUTO_COMPILE_MIN_NUMEL)
    assert not simam_native.applies(x) and not simam_native.available() and simam_native.failure() is None
    assert resolve_impl("auto", x) == "compiled"


@needs_native
def test_failing_self_check_disables_it(fresh, monkeypatch):
    def wrong(lib):
        raise RuntimeError("self-check failed: y differs")
    monkeypatch.setattr(simam_native, "_self_check", wrong)
    assert not simam_native.available()
    assert "self-check failed" in simam_native.failure()
    assert resolve_impl("native", torch.randn(2, 3, 4, 4)) != "native"


@needs_native
def test_unwritable_cache_folder_builds_into_a_temporary_one(monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(blocker / "cache"))
    simam_native.reset()
    try:
        assert simam_native.available(), simam_native.failure()
        assert not simam_native.loaded_from().startswith(str(blocker))
    finally:
        monkeypatch.undo()
        simam_native.reset()
