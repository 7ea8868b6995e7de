"""The fused SimAM implementations (networks/attention/simam_fused.py) against the plain formula.

Correctness only, no timing: every impl in fp32 (output and input gradient), gradcheck of the
analytic backward in float64, fp16/bf16 and autocast, channels_last, 1x1 and 1xN maps, the bytes
saved for backward, the fallback when torch.compile is unavailable or fails, torch.compile of a
whole SimAM ResNet, and export (torch.export; ONNX where the onnx package is installed).
The compiled impl compiles (Inductor, C++) on first use: the first such test takes seconds.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import networks
from networks.attention import SimAM, simam_fused, simam_native, simam_reference
from networks.attention.simam import simam
from networks.attention.simam_fused import SimAMFunction, resolve_impl, saved_tensor_bytes

pytestmark = pytest.mark.usefixtures("single_thread")

IMPLS = ["reference", "function", "compiled", "native"]  # "native" falls back to "compiled" off fp32 NCHW
# output rounding of the half types (unit roundoff 2**-11, 2**-8); statistics are fp32
DTYPE_RTOL = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def run(impl: str, x: torch.Tensor, g: torch.Tensor, e_lambda: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, input gradient for the output gradient g) of implementation `impl`."""
    x = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    y = simam(x, e_lambda, impl)
    y.backward(g)
    return y.detach(), x.grad


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """Elementwise rtol, with an absolute floor of rtol * max|expected| for entries near zero
    (the input gradient subtracts terms of similar size, so its small entries carry the
    rounding error of the large ones)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    """Tests choose the impl themselves, whatever SIMAM_IMPL says."""
    monkeypatch.setattr(simam_fused, "_OVERRIDE", None)


# ----------------------------------------------------------------------------- fp32 equality
@pytest.mark.parametrize("impl", IMPLS[1:])
@pytest.mark.parametrize("shape, e_lambda", [((2, 8, 14, 14), 1e-4), ((3, 5, 9, 9), 0.1)])
def test_fp32_output_and_gradient_match_the_reference(impl, shape, e_lambda):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 2 + 0.5
    g = torch.randn(*shape)
    y_ref, dx_ref = run("reference", x, g, e_lambda)
    y, dx = run(impl, x, g, e_lambda)
    assert_close_rel(y, y_ref, 1e-5)
    assert_close_rel(dx, dx_ref, 1e-5)


@pytest.mark.parametrize("impl", ["function"])  # "compiled" in float64 works too, but compiling costs seconds
def test_float64_matches_the_reference_exactly(impl):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    g = torch.randn_like(x)
    y_ref, dx_ref = run("reference", x, g)
    y, dx = run(impl, x, g)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-10, atol=1e-12 * dx_ref.abs().max().item())


@pytest.mark.parametrize("e_lambda", [1e-4, 0.1])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 1, 1), (2, 2, 1, 6)])
def test_gradcheck_of_the_analytic_backward(shape, e_lambda):
    """The backward formula against finite differences, including 1x1 and 1xN maps."""
    torch.manual_seed(0)
    x = (torch.randn(*shape, dtype=torch.float64) * 2).requires_grad_()
    fn = lambda t: SimAMFunction.apply(t, e_lambda, False)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)
    assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_double_backward_through_the_compiled_impl():
    """create_graph=True: the compiled impl's backward switches to differentiable eager ops
    (fp32 against autograd's double backward of the reference; float64 gradgradcheck above)."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 14, 14)
    v = torch.randn_like(x)
    grads = {}
    for impl in ("reference", "compiled"):
        xi = x.clone().requires_grad_()
        (dx,) = torch.autograd.grad(simam(xi, 1e-4, impl).sin().sum(), xi, create_graph=True)
        (grads[impl],) = torch.autograd.grad((dx * v).sum(), xi)
    assert_close_rel(grads["compiled"], grads["reference"], 1e-4)


# ----------------------------------------------------------------------------- dtypes, layouts, shapes
# compiled: bf16 only (fp16 runs the same code; each dtype costs seconds of compiling)
@pytest.mark.parametrize("impl, dtype", [("function", torch.bfloat16), ("function", torch.float16), ("compiled", torch.bfloat16)])
def test_half_inputs_use_fp32_statistics(impl, dtype):
    """Scale 100 on 32x32 maps: the squared deviations (~1e7) overflow fp16, not fp32 statistics."""
    torch.manual_seed(0)
    x = (torch.randn(2, 4, 32, 32) * 100).to(dtype)
    g = torch.randn(2, 4, 32, 32).to(dtype)
    y, dx = run(impl, x, g)
    assert y.dtype == dx.dtype == dtype
    assert torch.isfinite(y).all() and torch.isfinite(dx).all()
    # the same values in fp32, rounded once to the half type
    y32, dx32 = run("function", x.float(), g.float())
    assert_close_rel(y.float(), y32, DTYPE_RTOL[dtype])
    assert_close_rel(dx.float(), dx32, 2 * DTYPE_RTOL[dtype])


@pytest.mark.parametrize("impl", IMPLS[1:])
def test_cpu_autocast_keeps_the_input_dtype(impl):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        y = simam(h, 0.1, impl)
        z = simam(x, 0.1, impl)  # fp32 input under autocast: fp32 output
    assert h.dtype == y.dtype == torch.bfloat16 and z.dtype == torch.float32
    assert_close_rel(y.float(), simam_reference(h.float(), 0.1), DTYPE_RTOL[torch.bfloat16])
    assert_close_rel(z, simam_reference(x, 0.1), 1e-5)
    y.float().sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


@pytest.mark.parametrize("impl", IMPLS[1:])
def test_channels_last_values_and_layout(impl):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 9, 11)
    g = torch.randn(2, 16, 9, 11)
    y_ref, dx_ref = run("reference", x, g)
    xc = x.contiguous(memory_format=torch.channels_last)
    y, dx = run(impl, xc, g.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close_rel(y, y_ref, 1e-5)
    assert_close_rel(dx, dx_ref, 1e-5)


@pytest.mark.parametrize("impl, shape", [
    ("function", (4, 8, 1, 1)), ("function", (2, 3, 1, 7)), ("function", (2, 3, 5, 1)),
    ("compiled", (4, 8, 1, 1)),  # a size-1 dim compiles its own kernels: 1x1 only (n = max(.., 1))
])
def test_one_by_one_and_one_by_n_maps(impl, shape):
    """1x1: var has n = max(H*W - 1, 1) = 1, the weight is sigmoid(0.5); 1xN / Nx1 are ordinary."""
    torch.manual_seed(0)
    x = torch.randn(*shape)
    g = torch.randn(*shape)
    y_ref, dx_ref = run("reference", x, g)
    y, dx = run(impl, x, g)
    assert torch.isfinite(y).all() and torch.isfinite(dx).all()
    assert_close_rel(y, y_ref, 1e-5)
    assert_close_rel(dx, dx_ref, 1e-5)
    if shape[2:] == (1, 1):
        torch.testing.assert_close(y, x * torch.sigmoid(torch.tensor(0.5)))


def test_non_4d_input_is_rejected():
    with pytest.raises(ValueError, match="4-d"):
        simam(torch.randn(2, 3, 4), impl="function")


# ----------------------------------------------------------------------------- saved memory
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", IMPLS[1:])
def test_saves_at_most_1_1x_the_input_for_backward(impl, dtype):
    torch.manual_seed(0)
    x = torch.randn(4, 16, 14, 14).to(dtype).requires_grad_()
    size = x.numel() * x.element_size()
    ours = saved_tensor_bytes(simam, x, 1e-4, impl)
    reference = saved_tensor_bytes(simam_reference, x, 1e-4)
    print(f"{impl} {dtype}: saved {ours / size:.3f}x the input, reference {reference / size:.3f}x")
    assert ours <= 1.1 * size
    assert reference >= 3 * size  # what the plain formula leaves to autograd (x - mu, its square, ...)


# ----------------------------------------------------------------------------- selection and fallback
def test_module_keeps_its_signature_and_state():
    m = SimAM(64, e_lambda=0.1)
    assert (m.channels, m.e_lambda, m.impl) == (64, 0.1, "auto")
    assert list(m.state_dict()) == []
    assert SimAM(8, impl="function").impl == "function"
    with pytest.raises(ValueError, match="valid: auto, reference, function, compiled"):
        SimAM(8, impl="fast")
    assert networks.create_attention("simam", 8, impl="reference").impl == "reference"


def test_auto_choice():
    """fp32 / bf16, NCHW / channels_last on the CPU: the C kernel (where it builds); fp16: Inductor."""
    big = torch.empty(1, 1, 1, simam_fused.AUTO_COMPILE_MIN_NUMEL)
    native = "native" if simam_native.available() else "compiled"
    assert resolve_impl("auto", big) == resolve_impl("auto", big.bfloat16()) == native
    assert resolve_impl("auto", torch.empty(8, 16, 32, 32).contiguous(memory_format=torch.channels_last)) == native
    assert resolve_impl("auto", big.half()) == "compiled"
    assert resolve_impl("native", big.half()) == "compiled"  # where the C kernel does not apply
    assert resolve_impl("auto", torch.empty(2, 3, 4, 4)) == "function"  # too small to repay compiling
    assert resolve_impl("auto", big.to("meta")) == "function"
    assert resolve_impl("reference", big) == "reference"


def test_global_override():
    x = torch.empty(2, 3, 4, 4)
    simam_fused.set_impl_override("reference")
    assert resolve_impl("compiled", x) == "reference"
    simam_fused.set_impl_override(None)
    assert resolve_impl("compiled", x) == "compiled"
    with pytest.raises(ValueError, match="valid"):
        simam_fused.set_impl_override("triton")


def test_environment_variable():
    """SIMAM_IMPL, read when the module is imported (so also in spawned DDP workers)."""
    assert simam_fused.override_from_env({"SIMAM_IMPL": "Reference"}) == "reference"
    assert simam_fused.override_from_env({"SIMAM_IMPL": ""}) is None
    assert simam_fused.override_from_env({}) is None
    with pytest.raises(ValueError, match="SIMAM_IMPL"):
        simam_fused.override_from_env({"SIMAM_IMPL": "triton"})


def test_expected_calls_decide_whether_auto_compiles():
    """Few forward passes in the process (evaluation only, a few steps): "auto" runs the eager
    Function; an explicit "compiled" still compiles. (fp16: fp32 and bf16 get the C kernel, whose
    build takes under a second once per machine, whatever the count.)"""
    big = torch.empty(1, 1, 1, simam_fused.AUTO_COMPILE_MIN_NUMEL, dtype=torch.float16)
    try:
        simam_fused.set_expected_calls(simam_fused.AUTO_COMPILE_MIN_CALLS - 1)
        assert simam_fused.expected_calls() == simam_fused.AUTO_COMPILE_MIN_CALLS - 1
        assert resolve_impl("auto", big) == "function"
        assert resolve_impl("compiled", big) == "compiled"
        simam_fused.set_expected_calls(simam_fused.AUTO_COMPILE_MIN_CALLS)
        assert resolve_impl("auto", big) == "compiled"
        simam_fused.set_expected_calls(0)
        assert resolve_impl("auto", big) == "function"
        for bad in (-1, 2.5, True, "10"):
            with pytest.raises((ValueError, TypeError)):
                simam_fused.set_expected_calls(bad)
    finally:
        simam_fused.set_expected_calls(None)
    assert simam_fused.expected_calls() is None
    assert resolve_impl("auto", big) == "compiled"


def test_eager_kernels_block():
    big = torch.empty(1, 1, 1, simam_fused.AUTO_COMPILE_MIN_NUMEL)
    with simam_fused.eager_kernels():
        assert resolve_impl("auto", big) == resolve_impl("compiled", big) == resolve_impl("native", big) == "function"
        assert simam_fused.impl_override() == "function"
    assert simam_fused.impl_override() is None and resolve_impl("compiled", big) == "compiled"
    simam_fused.set_impl_override("reference")
    try:
        with simam_fused.eager_kernels():
            assert resolve_impl("auto", big) == "reference"
        assert simam_fused.impl_override() == "reference"
    finally:
        simam_fused.set_impl_override(None)


def test_compile_cache_dir(tmp_path):
    """A stable folder (not Inductor's /tmp default) unless the user chose one."""
    import getpass
    import os
    import tempfile

    torch_default = os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    stable = str(tmp_path / "xdg" / "torchinductor")
    assert simam_fused.compile_cache_dir({"XDG_CACHE_HOME": str(tmp_path / "xdg")}) == stable
    assert simam_fused.compile_cache_dir({"XDG_CACHE_HOME": str(tmp_path / "xdg"), "TORCHINDUCTOR_CACHE_DIR": torch_default}) == stable
    assert simam_fused.compile_cache_dir({"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "mine")}) == str(tmp_path / "mine")
    assert simam_fused.compile_cache_dir({}).endswith(os.path.join(".cache", "torchinductor"))


@pytest.fixture
def fresh_compile_state(monkeypatch):
    monkeypatch.setattr(simam_fused, "_compiled", {})
    monkeypatch.setattr(simam_fused, "_compile_failed", None)
    monkeypatch.setattr(simam_fused, "_warmed", set())


def recording_compile(calls: list):
    """A stand-in for torch.compile that runs the function eagerly and records (kernel, thread)."""
    import threading

    def fake_compile(fn, **kwargs):
        def call(*args):
            calls.append((fn.__name__, threading.current_thread() is threading.main_thread()))
            return fn(*args)
        return call
    return fake_compile


@pytest.mark.usefixtures("fresh_compile_state")
def test_forward_compiles_the_backward_kernel_on_the_calling_thread(monkeypatch):
    calls: list = []
    monkeypatch.setattr(torch, "compile", recording_compile(calls))
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    y = simam(x, 1e-4, "compiled")
    assert calls == [("_forward_kernel", True), ("_backward_kernel", True)]  # before any backward
    y.sum().backward()
    simam(x, 1e-4, "compiled").sum().backward()  # warmed once per kind of input
    assert [c[0] for c in calls[2:]] == ["_backward_kernel", "_forward_kernel", "_backward_kernel"]
    calls.clear()
    with torch.no_grad():  # inference: no backward kernel
        simam(torch.randn(3, 4, 5, 5), 1e-4, "compiled")
    assert calls == [("_forward_kernel", True)]
    calls.clear()
    x_cl = torch.randn(2, 4, 6, 6).to(memory_format=torch.channels_last).requires_grad_()
    simam(x_cl, 1e-4, "compiled")
    assert [c[0] for c in calls] == ["_forward_kernel", "_backward_kernel"]  # a new layout: warmed again


@pytest.mark.usefixtures("fresh_compile_state")
def test_backward_kernel_gets_the_gradient_in_the_input_layout(monkeypatch):
    """A contiguous incoming gradient for a channels_last input reaches the backward kernel in
    channels_last: the kernel the forward compiled ahead, not a new one inside backward."""
    layouts: list = []

    def fake_compile(fn, **kwargs):
        def call(*args):
            if fn.__name__ == "_backward_kernel":
                layouts.append(args[1].is_contiguous(memory_format=torch.channels_last) and not args[1].is_contiguous())
            return fn(*args)
        return call

    monkeypatch.setattr(torch, "compile", fake_compile)
    x = torch.randn(2, 4, 6, 6).to(memory_format=torch.channels_last).requires_grad_()
    simam(x, 1e-4, "compiled").backward(torch.randn(2, 4, 6, 6))  # a contiguous gradient
    assert layouts == [True, True]  # the warm-up in the forward, then the backward pass


@pytest.mark.usefixtures("fresh_compile_state")
def test_device_errors_are_not_reported_as_compile_failures(monkeypatch):
    """A CUDA error reported late (by the compiled call) or out of memory propagates; compiling stays on."""
    from torch._dynamo.exc import TorchDynamoException

    errors = [RuntimeError("CUDA error: an illegal memory access was encountered"),
              torch.OutOfMemoryError("CUDA out of memory"),
              TorchDynamoException("backend failed")]
    errors[2].__cause__ = RuntimeError("CUDA error: device-side assert triggered")
    for err in errors:
        def broken_compile(fn, err=err, **kwargs):
            def call(*args):
                raise err
            return call
        monkeypatch.setattr(simam_fused, "_compiled", {})
        monkeypatch.setattr(torch, "compile", broken_compile)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(type(err)):
                simam(torch.randn(2, 4, 6, 6), 1e-4, "compiled")
        assert simam_fused.compile_available() and simam_fused.compile_failure() is None


@pytest.mark.usefixtures("fresh_compile_state")
def test_profiling_compiles_nothing(monkeypatch):
    """Params/MACs of a SimAM model at a size where "auto" compiles: eager kernels, and a broken
    compiler does not mark compiling unavailable for the training that follows."""
    from networks.profile import profile_model

    def broken_compile(fn, **kwargs):
        raise AssertionError("profiling compiled a SimAM kernel")

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = networks.create_model("cifar_resnet20", num_classes=10, attention="simam")
    size = (8, 3, 32, 32)  # 8x16x32x32 maps: above AUTO_COMPILE_MIN_NUMEL
    assert 8 * 16 * 32 * 32 >= simam_fused.AUTO_COMPILE_MIN_NUMEL
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        info = profile_model(model, size)
    assert info["macs_attention"] > 0 and info["params"] > 0
    assert simam_fused.compile_available() and simam_fused.impl_override() is None


@pytest.mark.usefixtures("fresh_compile_state")
@pytest.mark.parametrize("failure", ["torch.compile raises", "compiled call raises"])
def test_fallback_when_compile_is_unavailable(monkeypatch, failure):
    from torch._dynamo.exc import TorchDynamoException

    def broken_compile(fn, **kwargs):
        if failure == "torch.compile raises":
            raise RuntimeError("Windows not yet supported for torch.compile")

        def call(*args):  # what Inductor raises without a C++ compiler (an InductorError)
            raise TorchDynamoException("InvalidCxxCompiler: No working C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6)
    g = torch.randn(2, 4, 6, 6)
    y_ref, dx_ref = run("reference", x, g)
    with pytest.warns(RuntimeWarning, match="torch.compile of the forward kernel failed"):
        y, dx = run("compiled", x, g)
    assert_close_rel(y, y_ref, 1e-5)
    assert_close_rel(dx, dx_ref, 1e-5)
    assert not simam_fused.compile_available()
    assert resolve_impl("compiled", x) == "function"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        y2, _ = run("compiled", x, g)
    torch.testing.assert_close(y2, y)


# ----------------------------------------------------------------------------- whole model, export
def small_simam_resnet() -> torch.nn.Module:
    """A CIFAR ResNet with one basic block per stage (ResNet-8) and SimAM after each conv2."""
    from networks.cifar.resnet import BasicBlock, CifarResNet

    return CifarResNet(BasicBlock, [1, 1, 1], num_classes=10, attn_layer=SimAM, attn_position="conv")


def test_torch_compile_traces_the_function_forward_and_backward():
    """dynamo traces SimAMFunction (forward and analytic backward) into one graph (fullgraph: a
    graph break fails), here with AOTAutograd's eager backend; Inductor's code is checked below."""
    torch.manual_seed(0)
    model = small_simam_resnet().train()
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    out.square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    out_c = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    out_c.square().mean().backward()
    assert_close_rel(out_c.detach(), out.detach(), 1e-5)
    for p, g in zip(model.parameters(), grads):
        assert_close_rel(p.grad, g, 1e-4)


@pytest.mark.slow
def test_torch_compile_of_a_whole_model_equals_eager():
    """torch.compile(model) with Inductor gives eager's output (forward: compiling the backward
    too would double the test's ~15-30 s on 2 cores; the traced backward is checked above)."""
    torch.manual_seed(0)
    model = small_simam_resnet().eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        out_c = torch.compile(model, fullgraph=True)(x)
    assert_close_rel(out_c, out, 1e-4)


def test_export_uses_the_plain_formula():
    torch.manual_seed(0)
    model = networks.create_model("cifar_resnet20", num_classes=10, attention="simam").eval()
    x = torch.randn(2, 3, 32, 32)
    ep = torch.export.export(model, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("autograd_function" in t or "simam" in t.lower() for t in targets), targets
    with torch.no_grad():
        assert_close_rel(ep.module()(x), model(x), 1e-5)


@pytest.mark.slow
def test_onnx_export_of_cifar_resnet20():
    onnx = pytest.importorskip("onnx", reason="onnx not installed: export is covered by torch.export above")
    pytest.importorskip("onnxscript", reason="torch.onnx.export needs onnxscript")
    from onnx.reference import ReferenceEvaluator

    torch.manual_seed(0)
    model = networks.create_model("cifar_resnet20", num_classes=10, attention="simam").eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    proto = program.model_proto
    onnx.checker.check_model(proto)
    ops = {n.op_type for n in proto.graph.node}
    assert {"Sigmoid", "ReduceMean"} <= ops  # SimAM as plain ops
    out = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert_close_rel(torch.from_numpy(out), model(x), 1e-4)
