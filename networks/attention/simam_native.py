"""SimAM's forward and backward as a small C/OpenMP kernel for CPU tensors: float32 or bfloat16,
contiguous (NCHW) or channels_last.

Why: at ResNet-50's later stage shapes (28x28, 14x14, 7x7 maps) Inductor's generated loops cost
more per element than this kernel, and compiling them takes ~3 s (warm cache) to ~20 s (cold) per
process, against ~0.5 s once per machine here (scripts/benchmark.py, section simam, measures both).

How: `simam_native.c` (next to this file) is compiled at first use with the C compiler (CC, else
gcc or cc) for this CPU (-O3 -march=native, no -ffast-math), linked against the OpenMP runtime
that torch itself loaded (so that one thread pool serves both), and cached in
`<compile cache>/simam_native/` under a name made of the source, compiler, flags, runtime and
CPU, so that other processes load it in milliseconds. A self-check against the plain formula runs
once per process before the kernel is used. Anything that fails (not Linux, no compiler, no
OpenMP runtime found, a failing build or self-check) makes `available()` False with the reason in
`failure()`, logged once; callers then use the Inductor or eager kernels. SIMAM_NATIVE=0 in the
environment turns it off.

The kernel gives the same numbers whatever the thread count (each row, or block of channels, is
summed by one thread in a fixed order); they may differ from the Inductor and eager kernels in the
last bits (bfloat16 outputs: by one unit of bfloat16 rounding where the float32 values differ).
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Optional

import torch

__all__ = ["ENV_VAR", "applies", "available", "backward", "failure", "forward", "library_path", "loaded_from", "reset"]

ENV_VAR = "SIMAM_NATIVE"
SOURCE = Path(__file__).with_name("simam_native.c")
CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-fopenmp")
_OPENMP_NAMES = ("libgomp", "libiomp5", "libomp")
_log = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict = {}  # "lib" (ctypes.CDLL) once loaded, "failure" (str) once failed, "path"


def _enabled() -> bool:
    return os.environ.get(ENV_VAR, "").strip() != "0"


_DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16"}


def _channels_last(x: torch.Tensor) -> bool:
    """True for a channels_last tensor that is not also contiguous (NCHW is preferred when both)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def applies(x: torch.Tensor) -> bool:
    """True when the kernel handles x: a 4-d, non-empty CPU tensor of float32 or bfloat16, contiguous
    or channels_last, on Linux (and SIMAM_NATIVE is not 0)."""
    return (x.device.type == "cpu" and x.dtype in _DTYPES and x.dim() == 4 and x.numel() > 0
            and (x.is_contiguous() or _channels_last(x)) and sys.platform.startswith("linux") and _enabled())


def _openmp_runtime() -> Optional[str]:
    """The file of the OpenMP runtime this process has loaded, from /proc/self/maps: torch's own
    (in torch's folder) when several are loaded."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    found = []
    for line in maps:
        fields = line.split(maxsplit=5)
        path = fields[5] if len(fields) == 6 else ""
        if os.path.basename(path).startswith(_OPENMP_NAMES) and ".so" in path and path not in found and os.path.isfile(path):
            found.append(path)
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    found.sort(key=lambda p: not os.path.abspath(p).startswith(torch_dir))
    return found[0] if found else None


def _compiler() -> Optional[str]:
    chosen = os.environ.get("CC", "").strip()
    return shutil.which(chosen) if chosen else (shutil.which("gcc") or shutil.which("cc"))


def _cpu_signature() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    keep = [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
    return platform.machine() + "\n" + "\n".join(keep)


def _cache_folder() -> Path:
    from .simam_fused import compile_cache_dir  # lazy: simam_fused imports this module

    return Path(compile_cache_dir()) / "simam_native"


def library_path(cc: str, runtime: str) -> Path:
    """Where the library built by `cc` against the OpenMP `runtime` is cached."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, version, " ".join(CFLAGS), runtime,
                                    _cpu_signature()]).encode()).hexdigest()[:20]
    return _cache_folder() / f"simam_native_{key}.so"


def _build(cc: str, runtime: str, target: Path) -> None:
    """Compile and link into a temporary file of target's folder, then rename (atomic: processes
    building at once each write their own file, and a reader never sees a partial one)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = os.path.join(tmp, "simam_native.o"), os.path.join(tmp, "simam_native.so")
        steps = [[cc, *CFLAGS, "-c", str(SOURCE), "-o", obj],
                 [cc, "-shared", obj, runtime, f"-Wl,-rpath,{os.path.dirname(runtime)}", "-lm", "-o", lib]]
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd[:2])} ... failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
        os.replace(lib, target)


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    p, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    for dtype in _DTYPES.values():
        for name, args in ((f"simam_forward_{dtype}", [p, p, p, p, i64, i64, f32, i32]),
                           (f"simam_backward_{dtype}", [p, p, p, p, p, i64, i64, i32]),
                           (f"simam_forward_nhwc_{dtype}", [p, p, p, p, i64, i64, i64, f32, i32]),
                           (f"simam_backward_nhwc_{dtype}", [p, p, p, p, p, i64, i64, i64, i32])):
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, None
    return lib


def _self_check(lib: ctypes.CDLL) -> None:
    """The kernel against the eager formulas on small inputs (odd sizes, a 1x1 map, a constant
    channel) in every dtype and layout it takes."""
    from .simam_fused import _backward_eager, _forward_eager

    gen = torch.Generator().manual_seed(0)
    for shape in ((2, 3, 5, 7), (2, 3, 1, 1), (1, 70, 6, 5)):
        for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
            for fmt in (torch.contiguous_format, torch.channels_last):
                x = (torch.randn(shape, generator=gen) * 3 + 1).to(dtype).contiguous(memory_format=fmt)
                x[0, 0] = 0.5
                g = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
                y, mu, k = _run_forward(lib, x, 1e-4)
                ye, mue, ke = _forward_eager(x, 1e-4)
                dx, dxe = _run_backward(lib, x, g, mu, k), _backward_eager(x, g, mue, ke)
                for name, got, want in (("y", y, ye), ("mu", mu, mue), ("k", k, ke), ("dx", dx, dxe)):
                    scale = want.float().abs().max().item()
                    if not torch.allclose(got.float(), want.float(), rtol=tol, atol=tol * max(scale, 1e-3)):
                        raise RuntimeError(f"self-check failed: {name} differs from the eager kernel by "
                                           f"{(got.float() - want.float()).abs().max().item():.3g} at shape {shape}, {dtype}, {fmt}")


def _setup() -> ctypes.CDLL:
    if not sys.platform.startswith("linux"):
        raise RuntimeError(f"not built on {sys.platform} (Linux only)")
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (set CC, or install gcc)")
    runtime = _openmp_runtime()
    if runtime is None:
        raise RuntimeError("torch's OpenMP runtime (libgomp / libiomp5 / libomp) was not found among the loaded libraries")
    path = library_path(cc, runtime)
    if not path.is_file():
        _log.info("SimAM: building the native CPU kernel into %s", path)
        try:
            _build(cc, runtime, path)
        except OSError:  # the cache folder is not writable: a folder of this process's own
            path = Path(tempfile.mkdtemp(prefix="simam_native_")) / path.name
            _build(cc, runtime, path)
    lib = _load(path)
    _self_check(lib)
    _state["path"] = str(path)
    return lib


def available() -> bool:
    """True when the kernel is built (or loaded from the cache) and passed its self-check; builds it
    on the first call. False, with the reason in `failure()`, when anything failed."""
    if "lib" in _state:
        return True
    if "failure" in _state or not _enabled():
        return False
    with _lock:
        if "lib" not in _state and "failure" not in _state:
            try:
                _state["lib"] = _setup()
            except Exception as e:  # any failure: the callers fall back to the other kernels
                _state["failure"] = f"{type(e).__name__}: {str(e).strip()[:500]}"
                _log.info("SimAM: native CPU kernel unavailable (%s); using the compiled/eager kernels", _state["failure"])
    return "lib" in _state


def failure() -> Optional[str]:
    """Why the kernel is unavailable in this process (None: available, or not tried yet, or turned off)."""
    return _state.get("failure")


def loaded_from() -> Optional[str]:
    """The file of the loaded kernel library (None: not loaded)."""
    return _state.get("path") if "lib" in _state else None


def reset() -> None:
    """Forget the loaded kernel and any failure: the next `available()` builds or loads it again
    (after a change of CC, SIMAM_NATIVE or the cache folder; tests)."""
    with _lock:
        _state.clear()


def _kernel(lib: ctypes.CDLL, which: str, x: torch.Tensor) -> tuple[Callable, tuple[int, ...], torch.memory_format]:
    """The C function for x's dtype and layout, its size arguments and the layout of its outputs."""
    b, c, h, w = x.shape
    if _channels_last(x):
        return getattr(lib, f"simam_{which}_nhwc_{_DTYPES[x.dtype]}"), (b, c, h * w), torch.channels_last
    return getattr(lib, f"simam_{which}_{_DTYPES[x.dtype]}"), (b * c, h * w), torch.contiguous_format


def _run_forward(lib: ctypes.CDLL, x: torch.Tensor, e_lambda: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    fn, sizes, layout = _kernel(lib, "forward", x)
    y = torch.empty_like(x, memory_format=layout)
    mu, k = (torch.empty(x.shape[0], x.shape[1], 1, 1, dtype=torch.float32) for _ in range(2))
    fn(x.data_ptr(), y.data_ptr(), mu.data_ptr(), k.data_ptr(), *sizes, float(e_lambda), torch.get_num_threads())
    return y, mu, k


def _run_backward(lib: ctypes.CDLL, x: torch.Tensor, g: torch.Tensor, mu: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    fn, sizes, layout = _kernel(lib, "backward", x)
    g = g.to(x.dtype).contiguous(memory_format=layout)
    mu, k = mu.float().contiguous(), k.float().contiguous()
    dx = torch.empty_like(x, memory_format=layout)
    fn(x.data_ptr(), g.data_ptr(), mu.data_ptr(), k.data_ptr(), dx.data_ptr(), *sizes, torch.get_num_threads())
    return dx


def forward(x: torch.Tensor, e_lambda: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mu, k) as `simam_fused._forward_kernel` returns them; x must satisfy `applies` and
    `available()` must be True."""
    return _run_forward(_state["lib"], x.detach(), e_lambda)


def backward(x: torch.Tensor, g: torch.Tensor, mu: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """dL/dx from the input, dL/dy and the statistics of `forward`."""
    return _run_backward(_state["lib"], x.detach(), g.detach(), mu.detach(), k.detach())
