"""SimAM as one autograd node that saves only its input, and an Inductor-fused version of it.

The plain formula (`simam.simam_reference`) leaves autograd to save its intermediates (x - mu,
its square, the energy, the sigmoid, ...): 4x the input's bytes per SimAM layer in fp32, 8x for
bf16/fp16 inputs, whose intermediates are fp32 (measured with `saved_tensor_bytes`). Here the
forward saves the input plus two per-channel statistics of shape (B, C, 1, 1), the mean `mu`
and `k = 1 / (4 * (var + lambda))`, and the backward recomputes the rest from them.

Backward, per sample and channel over the N = H*W positions, with n = max(N - 1, 1),
d = x - mu, s = sigmoid(k d^2 + 1/2), y = x s and the incoming gradient g = dL/dy:

    t  = g x s (1 - s)                       dL/de for the energy e = k d^2 + 1/2
    A  = sum(t d^2),   B = sum(t d)          the two reductions of the backward
    dL/dx = g s + 2 d (k t - 4 k^2 A / n) - 2 k B / N

The terms come from dL/dk = A with dk/dvar = -4 k^2, dvar/dd_i = 2 d_i / n and d(d_i)/dx_j =
delta_ij - 1/N (the last one also removes sum(d) = 0 from the variance term).

Implementations (`SimAM(impl=...)`, or globally with the environment variable SIMAM_IMPL):
- "reference": the plain formula, differentiated by autograd; used for ONNX / torch.export /
  TorchScript tracing whatever is chosen, because exporters want plain aten ops.
- "function": `SimAMFunction` with eager kernels (in-place where nothing else can see it).
- "compiled": the same Function whose forward and backward kernels are compiled with
  torch.compile (Inductor: C++/OpenMP on CPU, generated Triton on CUDA), one fused loop nest per
  pass. Compiling takes seconds on first use per dtype / memory format (shapes are dynamic).
  If torch.compile is unavailable or fails (no C compiler, unsupported platform, dynamo
  errors), it warns once and uses "function" from then on: training never stops for it.
- "native": the same Function with the C/OpenMP kernels of `simam_native` (float32 or bfloat16,
  contiguous or channels_last, on the CPU; built in under a second once per machine and cached);
  elsewhere it runs as "compiled".
  Faster than Inductor's kernels at every ResNet-50 SimAM shape on the 2-core CPU (benchmark
  section simam), and no compiling per process.
- "auto" (default): "native" where it applies (float32 / bfloat16 CPU inputs of at least
  AUTO_COMPILE_MIN_NUMEL elements, whatever `set_expected_calls` says); else
  "compiled" on CPU and CUDA for inputs of at least AUTO_COMPILE_MIN_NUMEL
  elements; "function" for smaller ones (there compiling saves a fraction of a millisecond per
  call, which takes thousands of calls to repay its seconds: tests, toy inputs), on other
  devices (meta, mps, ...), and in processes that expect fewer than AUTO_COMPILE_MIN_CALLS
  forward passes (`set_expected_calls`: evaluation-only runs, runs of a few steps), where the
  seconds of compiling cost more than they save. `eager_kernels()` forces "function" for a block
  (profiling: no CPU kernel is compiled for an input used once).

Compiled kernels are cached on disk by Inductor (FX graph and AOTAutograd caches, on by default);
`enable_compile_cache` points that cache at a stable folder (TORCHINDUCTOR_CACHE_DIR when set,
else ~/.cache/torchinductor instead of a /tmp folder that is wiped), so that a second process
loads the kernels instead of compiling them: measured on the 2-core CPU machine, the first
SimAM call of a process took ~28 s with an empty cache and ~3 s with a warm one. A kernel read
from the cache is the code a fresh compile generates, so results match bit for bit across
processes. The forward call that first needs a backward kernel also compiles it (on the calling,
main thread, not inside autograd's device thread), and only compile-time errors (dynamo /
Inductor) switch to the eager kernels: an error of the device (a CUDA error reported late by an
asynchronous kernel, an out-of-memory) propagates as it is.
Inside `torch.compile(model)` the Function is traced by dynamo with its eager kernels (Inductor
then fuses them with the rest of the graph), so no compiled code is nested in compiled code.
No hand-written Triton kernel: there was no GPU to write and measure one against Inductor's.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings
from typing import Callable, Mapping, Optional

import torch

from . import simam_native

__all__ = [
    "AUTO_COMPILE_MIN_CALLS", "AUTO_COMPILE_MIN_NUMEL", "IMPLS", "SimAMFunction", "check_impl", "compile_available",
    "compile_cache_dir", "compile_failure", "eager_kernels", "enable_compile_cache", "expected_calls",
    "impl_override", "override_from_env", "resolve_impl", "saved_tensor_bytes", "set_expected_calls",
    "set_impl_override", "simam_compiled", "simam_function", "simam_native_kernel",
]

IMPLS = ("auto", "reference", "function", "compiled", "native")
AUTO_COMPILE_MIN_NUMEL = 2**17  # e.g. 32x16x16x16: "auto" compiles from this input size on
# "auto" compiles only in processes that expect at least this many forward passes (when told):
# compiling costs ~3 s (warm cache) to ~30 s (cold) on the 2-core CPU; at batch 16 it saves 5-46 ms
# per SimAM layer and fwd+bwd at ResNet-50's shapes, less at CIFAR's 32x32 maps and in
# evaluation (forward only): some tens to hundreds of steps repay it (benchmarks/README.md)
AUTO_COMPILE_MIN_CALLS = 200
ENV_VAR = "SIMAM_IMPL"
_log = logging.getLogger(__name__)


def check_impl(impl: str, source: str) -> str:
    """`impl` lower-cased, or ValueError naming `source` and the valid names."""
    impl = str(impl).lower()
    if impl not in IMPLS:
        raise ValueError(f"unknown SimAM impl {impl!r} ({source}); valid: {', '.join(IMPLS)}")
    return impl


def override_from_env(environ: Mapping[str, str]) -> Optional[str]:
    """The impl that SIMAM_IMPL names in `environ` (None when unset or empty)."""
    value = environ.get(ENV_VAR, "").strip()
    return check_impl(value, f"environment variable {ENV_VAR}") if value else None


# read once at import (so that it also holds in spawned DDP workers and inside torch.compile,
# which guards on module globals); `set_impl_override` changes it at run time
_OVERRIDE: Optional[str] = override_from_env(os.environ)


def set_impl_override(impl: Optional[str]) -> None:
    """Force one implementation for every SimAM module (None: each module's own `impl`)."""
    global _OVERRIDE
    _OVERRIDE = None if impl is None else check_impl(impl, "set_impl_override")


def impl_override() -> Optional[str]:
    """The global override (from SIMAM_IMPL or `set_impl_override`), or None."""
    return _OVERRIDE


_EXPECTED_CALLS: Optional[int] = None  # None: unknown, "auto" compiles (large inputs)


def set_expected_calls(calls: Optional[int]) -> None:
    """Tell "auto" how many forward passes of the model this process expects (training steps plus
    evaluation batches, e.g. 0 training steps + 40 batches for an evaluation-only run); below
    AUTO_COMPILE_MIN_CALLS "auto" runs the eager Function instead of compiling. None: unknown
    (the default: "auto" compiles for large inputs).

    The compiled and eager kernels may differ in the last bit: for a bit-exact resume, give a count
    that a straight run and a resumed one share (the whole run's planned steps and evaluation
    batches, not what is left), so both processes make the same choice."""
    global _EXPECTED_CALLS
    if calls is not None and (isinstance(calls, bool) or int(calls) != calls or calls < 0):
        raise ValueError(f"set_expected_calls: expected a count >= 0 or None, got {calls!r}")
    _EXPECTED_CALLS = None if calls is None else int(calls)


def expected_calls() -> Optional[int]:
    """The count given to `set_expected_calls`, or None."""
    return _EXPECTED_CALLS


@contextlib.contextmanager
def eager_kernels():
    """Within the block, "auto" and "compiled" run the eager Function: nothing is compiled (and a
    failing compiler cannot mark compiling unavailable). "reference" stays "reference"."""
    global _OVERRIDE
    before = _OVERRIDE
    if before != "reference":
        _OVERRIDE = "function"
    try:
        yield
    finally:
        _OVERRIDE = before


# --------------------------------------------------------------------------------- the formulas
def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Statistics and arithmetic in float32 for fp16/bf16/fp32 inputs, float64 for float64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _stats(xf: torch.Tensor, e_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """mu and k = 1 / (4 (var + lambda)), shape (B, C, 1, 1); var divides by max(H*W - 1, 1)."""
    npos = xf.shape[2] * xf.shape[3]
    var0, mu = torch.var_mean(xf, dim=(2, 3), correction=0, keepdim=True)  # one pass (Welford)
    var = var0 * (npos / max(npos - 1, 1))
    return mu, 1.0 / (4.0 * (var + e_lambda))


def _forward_kernel(x: torch.Tensor, e_lambda: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mu, k), out of place: the version that torch.compile and autograd see. The statistics
    are two plain sums (mean, then the centred sum of squares): Inductor vectorises those, while
    its Welford `var_mean` loop ran 1.3-2x slower on CPU (measured at ResNet-50's SimAM shapes)."""
    xf = x.to(_compute_dtype(x))
    npos = xf.shape[2] * xf.shape[3]
    mu = xf.sum(dim=(2, 3), keepdim=True) * (1.0 / npos)
    d = xf - mu
    var = (d * d).sum(dim=(2, 3), keepdim=True) * (1.0 / max(npos - 1, 1))
    k = 1.0 / (4.0 * (var + e_lambda))
    return (xf * torch.sigmoid(d * d * k + 0.5)).to(x.dtype), mu, k


def _backward_kernel(x: torch.Tensor, g: torch.Tensor, mu: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """dL/dx from the input, dL/dy and the saved statistics (formula in the module docstring)."""
    ct = _compute_dtype(x)
    xf, gf = x.to(ct), g.to(ct)
    npos = x.shape[2] * x.shape[3]
    n = max(npos - 1, 1)
    d = xf - mu
    s = torch.sigmoid(d * d * k + 0.5)
    gs = gf * s
    t = gs * xf * (1.0 - s)
    td = t * d
    a = (td * d).sum(dim=(2, 3), keepdim=True)
    b = td.sum(dim=(2, 3), keepdim=True)
    dx = gs + 2.0 * d * (k * t - (4.0 / n) * k * k * a) - (2.0 / npos) * k * b
    return dx.to(x.dtype)


def _forward_eager(x: torch.Tensor, e_lambda: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_forward_kernel` with in-place steps on buffers of its own (fewer allocations)."""
    xf = x.to(_compute_dtype(x))
    mu, k = _stats(xf, e_lambda)
    w = xf - mu
    w.mul_(w).mul_(k).add_(0.5).sigmoid_().mul_(xf)
    return w.to(x.dtype), mu, k


def _backward_eager(x: torch.Tensor, g: torch.Tensor, mu: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """`_backward_kernel` with in-place steps on buffers of its own (not differentiable)."""
    ct = _compute_dtype(x)
    xf, gf = x.to(ct), g.to(ct)
    npos = x.shape[2] * x.shape[3]
    n = max(npos - 1, 1)
    d = xf - mu
    s = d * d
    s.mul_(k).add_(0.5).sigmoid_()
    gs = gf * s
    t = s.neg_().add_(1.0).mul_(gs).mul_(xf)  # reuses s's buffer
    td = t * d
    b = td.sum(dim=(2, 3), keepdim=True)
    a = td.mul_(d).sum(dim=(2, 3), keepdim=True)
    dx = t.mul_(k).sub_((4.0 / n) * k * k * a).mul_(d).mul_(2.0).add_(gs).sub_((2.0 / npos) * k * b)
    return dx.to(x.dtype)


# --------------------------------------------------------------------------------- compilation
_lock = threading.Lock()
_compiled: dict[str, Callable] = {}
_compile_failed: Optional[str] = None  # the first error, once torch.compile has failed
_warmed: set[tuple] = set()  # input kinds whose backward kernel the forward has compiled
_cache_dir: Optional[str] = None
CACHE_ENV_VAR = "TORCHINDUCTOR_CACHE_DIR"


def _torch_default_cache_dir() -> str:
    """Inductor's own default, a folder in /tmp (set in the environment by the first compile, or
    by an import of torchvision/timm: then it is not a choice of the user's)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        return os.path.abspath(default_cache_dir())
    except Exception:
        import getpass
        import tempfile

        return os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")


def compile_cache_dir(environ: Mapping[str, str] = os.environ) -> str:
    """The folder of Inductor's on-disk caches: TORCHINDUCTOR_CACHE_DIR when the user set it, else
    $XDG_CACHE_HOME/torchinductor (~/.cache/torchinductor), which outlives /tmp clean-ups."""
    chosen = environ.get(CACHE_ENV_VAR)
    if chosen and os.path.abspath(chosen) != _torch_default_cache_dir():
        return os.path.abspath(chosen)
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "torchinductor")


def enable_compile_cache() -> Optional[str]:
    """Make Inductor cache compiled kernels across processes in `compile_cache_dir()` (sets
    TORCHINDUCTOR_CACHE_DIR; an unwritable folder leaves Inductor's default) with the FX graph
    cache on, unless TORCHINDUCTOR_FX_GRAPH_CACHE=0 turned it off. Returns the folder in use."""
    global _cache_dir
    if _cache_dir is None:
        path = compile_cache_dir()
        try:
            os.makedirs(path, exist_ok=True)
            os.environ[CACHE_ENV_VAR] = path
        except OSError:
            pass
        try:
            from torch._inductor import config as inductor_config

            if os.environ.get("TORCHINDUCTOR_FX_GRAPH_CACHE", "") != "0":
                inductor_config.fx_graph_cache = True
        except Exception:  # no Inductor: compiling fails later and reports it
            pass
        _cache_dir = os.environ.get(CACHE_ENV_VAR)
    return _cache_dir


def _device_error(err: BaseException) -> bool:
    """True for errors of the device, seen anywhere in the exception chain: out of memory, CUDA
    errors (an asynchronous kernel's failure is reported by a later call, a compile's too)."""
    seen: set[int] = set()
    accelerator_error = getattr(torch, "AcceleratorError", None)
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, torch.OutOfMemoryError) or (accelerator_error and isinstance(err, accelerator_error)):
            return True
        text = str(err)
        if "CUDA error" in text or "device-side assert" in text or "CUBLAS_STATUS" in text or "cudaError" in text:
            return True
        err = getattr(err, "inner_exception", None) or err.__cause__ or err.__context__
    return False


def _compile_time_error(err: BaseException) -> bool:
    """An error of dynamo / Inductor (no C++ compiler, no Triton, an unsupported op), not of the device."""
    from torch._dynamo.exc import TorchDynamoException

    return isinstance(err, TorchDynamoException) and not _device_error(err)


def _compile_error(where: str, err: BaseException) -> None:
    """Remember that compiling failed and warn once; the eager kernels are used from now on."""
    global _compile_failed
    with _lock:
        first = _compile_failed is None
        _compile_failed = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    if first:
        warnings.warn(
            f"SimAM: torch.compile of the {where} kernel failed ({_compile_failed}); "
            "using the eager SimAM function from now on (same results, slower)", RuntimeWarning, stacklevel=3,
        )
        _log.debug("SimAM torch.compile failure", exc_info=err)


def compile_available() -> bool:
    """False once torch.compile has failed in this process (or does not exist)."""
    return _compile_failed is None and hasattr(torch, "compile")


def compile_failure() -> Optional[str]:
    """The error that made compiling unavailable in this process, or None."""
    return _compile_failed


def _get_compiled(name: str, fn: Callable) -> Optional[Callable]:
    if _compile_failed is not None:
        return None
    cfn = _compiled.get(name)
    if cfn is None:
        enable_compile_cache()
        try:
            # dynamic shapes from the start: one kernel for every map size of a network
            # (measured: as fast as a shape-specialised one on CPU)
            cfn = torch.compile(fn, dynamic=True)
        except Exception as e:  # torch.compile missing, unsupported Python / platform (nothing ran)
            _compile_error(name, e)
            return None
        with _lock:
            cfn = _compiled.setdefault(name, cfn)
    return cfn


def _run_compiled(name: str, fn: Callable, eager: Callable, *args):
    """fn compiled (compiled on first use), or `eager` if compiling is unavailable or fails."""
    cfn = _get_compiled(name, fn)
    if cfn is not None:
        # detached: dynamo guards on requires_grad, which differs between training and inference
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        try:
            return cfn(*args)
        except Exception as e:
            if not _compile_time_error(e):
                raise  # a device error (CUDA, out of memory) or a bug: not a reason to stop compiling
            _compile_error(name, e)
    return eager(*args)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def _like_input(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The incoming gradient in the input's layout (a copy only when they differ): one compiled
    backward kernel per input layout, the one the forward compiled ahead."""
    return grad.contiguous(memory_format=_memory_format(x))


def _warm_key(x: torch.Tensor) -> tuple:
    """What a compiled kernel of dynamic shape is specialised on: device, dtype, layout, size-1 dims."""
    return (x.device.type, x.device.index, x.dtype, _memory_format(x), tuple(s == 1 for s in x.shape))


def _warm_backward(x: torch.Tensor, y: torch.Tensor, mu: torch.Tensor, k: torch.Tensor) -> None:
    """Compile (or load) the backward kernel for inputs like x now, on the calling thread and under
    the global state that backward runs with (no grad, autocast off): else it first compiles inside
    autograd's device thread, in the middle of the first backward pass."""
    key = _warm_key(x)
    if key in _warmed or _compile_failed is not None:
        return
    with torch.no_grad():
        _run_compiled("backward", _backward_kernel, _backward_eager, x, _like_input(torch.zeros_like(y), x), mu, k)
    with _lock:
        _warmed.add(key)


# --------------------------------------------------------------------------------- autograd
def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast disabled inside SimAM: its dtypes are explicit (fp32 statistics), and compiled
    kernels then see one global state (no recompilation for autocast on/off)."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


_KERNELS = ("eager", "compiled", "native")


class SimAMFunction(torch.autograd.Function):
    """SimAM with an analytic backward; saves x, mu and k only. apply(x, e_lambda, kernels) with
    kernels "eager", "compiled" (torch.compile) or "native" (simam_native, which the caller checked
    applies and is available); True / False mean "compiled" / "eager"."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, e_lambda: float, kernels) -> torch.Tensor:
        if isinstance(kernels, bool):
            kernels = "compiled" if kernels else "eager"
        if kernels not in _KERNELS:
            raise ValueError(f"SimAMFunction: unknown kernels {kernels!r}; valid: {', '.join(_KERNELS)}")
        with _autocast_off(x.device.type):
            if kernels == "native":
                y, mu, k = simam_native.forward(x, e_lambda)
            elif kernels == "compiled":
                y, mu, k = _run_compiled("forward", _forward_kernel, _forward_eager, x, e_lambda)
                if ctx.needs_input_grad[0]:
                    _warm_backward(x, y, mu, k)
            else:
                y, mu, k = _forward_eager(x, e_lambda)
        ctx.save_for_backward(x, mu, k)
        ctx.e_lambda = e_lambda
        ctx.kernels = kernels
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, mu, k = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (double backward): differentiable ops, and statistics recomputed
            # from x so that their dependence on x is part of the graph
            mu, k = _stats(x.to(_compute_dtype(x)), ctx.e_lambda)
            dx = _backward_kernel(x, grad, mu, k)
        elif ctx.kernels == "native":
            dx = simam_native.backward(x, grad, mu, k)
        elif ctx.kernels == "compiled":
            with _autocast_off(x.device.type):  # the state the kernel was compiled under
                dx = _run_compiled("backward", _backward_kernel, _backward_eager, x, _like_input(grad, x), mu, k)
        else:
            dx = _backward_eager(x, grad, mu, k)
        return dx, None, None


def _check_input(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"SimAM expects a 4-d (B, C, H, W) tensor, got shape {tuple(x.shape)}")


def simam_function(x: torch.Tensor, e_lambda: float = 1e-4) -> torch.Tensor:
    """SimAM through `SimAMFunction` with eager kernels."""
    _check_input(x)
    return SimAMFunction.apply(x, float(e_lambda), "eager")


def simam_compiled(x: torch.Tensor, e_lambda: float = 1e-4) -> torch.Tensor:
    """SimAM through `SimAMFunction` with torch.compile'd kernels (eager ones if compiling fails)."""
    _check_input(x)
    return SimAMFunction.apply(x, float(e_lambda), "compiled")


def simam_native_kernel(x: torch.Tensor, e_lambda: float = 1e-4) -> torch.Tensor:
    """SimAM through `SimAMFunction` with the C/OpenMP kernel of `simam_native` where it applies
    (float32 or bfloat16, NCHW or channels_last, on the CPU; kernel available), else as `simam_compiled`."""
    _check_input(x)
    if simam_native.applies(x) and simam_native.available():
        return SimAMFunction.apply(x, float(e_lambda), "native")
    return simam_compiled(x, e_lambda)


# --------------------------------------------------------------------------------- selection
def _exporting() -> bool:
    """ONNX export, torch.export or TorchScript tracing: these get the plain formula."""
    if torch.compiler.is_compiling():
        is_exporting = getattr(torch.compiler, "is_exporting", None)
        return bool(is_exporting is not None and is_exporting())
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    onnx = sys.modules.get("torch.onnx")  # not imported: no export in progress
    if onnx is not None and onnx.is_in_onnx_export():
        return True
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting is not None and is_exporting())


def _compiling_pays() -> bool:
    return _EXPECTED_CALLS is None or _EXPECTED_CALLS >= AUTO_COMPILE_MIN_CALLS


def _native_runs(impl: str, x: torch.Tensor) -> bool:
    """The C kernel runs for "native", and for "auto" on inputs where "auto" would compile."""
    if impl not in ("auto", "native") or not simam_native.applies(x):
        return False
    return (impl == "native" or x.numel() >= AUTO_COMPILE_MIN_NUMEL) and simam_native.available()


def resolve_impl(impl: str, x: torch.Tensor) -> str:
    """The implementation that runs for `impl` ("auto", ...) on this input, after the global
    override: "reference" while exporting, "function" inside torch.compile (traced by dynamo),
    on devices other than CPU/CUDA and once compiling has failed. "auto" runs "native" (the C
    kernel, built in under a second once per machine) where it applies: float32 / bfloat16 CPU
    inputs of at least AUTO_COMPILE_MIN_NUMEL elements; else "compiled" for such inputs, and "function"
    for small inputs and when `set_expected_calls` said that compiling would not pay. "native"
    where the C kernel does not apply (another dtype, layout or device; no compiler) runs as
    "compiled"."""
    impl = _OVERRIDE or impl
    if impl == "reference" or _exporting():
        return "reference"
    if torch.compiler.is_compiling():
        return "function"
    if _native_runs(impl, x):
        return "native"
    impl = "compiled" if impl == "native" else impl
    if impl == "auto" and (x.numel() < AUTO_COMPILE_MIN_NUMEL or not _compiling_pays()):
        return "function"
    if impl in ("auto", "compiled") and not (x.device.type in ("cpu", "cuda") and compile_available()):
        return "function"
    return "compiled" if impl == "auto" else impl


# --------------------------------------------------------------------------------- measurement
def saved_tensor_bytes(fn: Callable[..., torch.Tensor], *args, **kwargs) -> int:
    """Bytes that autograd saves for backward while running `fn(*args, **kwargs)`.

    Counted with `torch.autograd.graph.saved_tensors_hooks`, once per storage (a tensor saved
    by several ops, or views of one buffer, count once), whole storages.
    """
    packed: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args, **kwargs)
    storages = {}
    for t in packed:
        st = t.untyped_storage()
        storages[(t.device, st.data_ptr())] = st.nbytes()
    del out
    return int(sum(storages.values()))
