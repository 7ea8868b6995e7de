"""The GPU-only checks of the GPU-readiness issue, run by scripts/gpu_check.sh on a lent GPU.

    python benchmarks/gpu_checks.py --json OUT.json [--only name,...]
    python benchmarks/gpu_checks.py --list          # names and what each checks (no GPU needed)

Each check returns {"ok": True/False/None, ...details}; None means informational (a measurement
or an upstream behaviour, not a verdict on our code). A check that raises is recorded with its
error and the others still run; the exit code is 1 when any check failed or raised.
Written without a GPU to try it on: each check is short, defensive, and reports what it saw.
`--device cpu` runs the checks that do not need CUDA streams on the CPU: a dry test of the checks'
own code (their CUDA semantics are only tested on a GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

Result = dict[str, Any]
DEVICE = torch.device("cuda")  # --device changes it (cpu: dry test of the checks' code)
NEEDS_CUDA = ("cuda_rng", "nvjpeg_race")  # skipped by --device cpu


# ----------------------------------------------------------------------------- Triton SimAM
def check_triton_simam() -> Result:
    """The compiled SimAM (Inductor's Triton kernels) against the plain formula in fp32/fp16/bf16,
    contiguous and channels_last, output and input gradient; layout kept; nothing fell back; no
    kernel compiled during a backward pass (autograd's device thread)."""
    from networks.attention import simam_fused
    from networks.attention.simam import simam, simam_reference

    from torch._dynamo.utils import counters

    rtol = {torch.float32: 1e-4, torch.float16: 2.0**-9, torch.bfloat16: 2.0**-6}
    cases: list[dict] = []
    compiled_in_backward = 0  # dynamo graphs compiled during a backward pass (the forward warms them)
    for dtype in rtol:
        for channels_last in (False, True):
            for shape in ((8, 64, 28, 28), (4, 32, 7, 7), (2, 8, 1, 1)):
                torch.manual_seed(0)
                x = (torch.randn(*shape, device=DEVICE) * 2 + 0.5).to(dtype)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                g = torch.randn(*shape, device=DEVICE).to(dtype)
                out = {}
                for impl in ("compiled", "reference"):
                    xi = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
                    y = simam(xi, 1e-4, impl) if impl == "compiled" else simam_reference(xi, 1e-4)
                    graphs = counters["stats"].get("unique_graphs", 0)
                    y.backward(g)  # on CUDA in autograd's device thread: must not compile there
                    compiled_in_backward += counters["stats"].get("unique_graphs", 0) - graphs
                    out[impl] = (y.detach().float(), xi.grad.float(), y.is_contiguous(memory_format=torch.channels_last))
                (y, dx, y_cl), (y_ref, dx_ref, _) = out["compiled"], out["reference"]
                err_y = ((y - y_ref).abs().max() / y_ref.abs().max().clamp_min(1e-12)).item()
                err_dx = ((dx - dx_ref).abs().max() / dx_ref.abs().max().clamp_min(1e-12)).item()
                ok = err_y <= rtol[dtype] and err_dx <= 8 * rtol[dtype] and (y_cl or not channels_last or shape[2] == 1)
                cases.append({"dtype": str(dtype), "channels_last": channels_last, "shape": list(shape), "ok": bool(ok),
                              "rel_err_y": err_y, "rel_err_dx": err_dx})
    failed = simam_fused.compile_failure()
    return {"ok": failed is None and compiled_in_backward == 0 and all(c["ok"] for c in cases), "compile_failure": failed,
            "graphs_compiled_during_backward": compiled_in_backward,
            "auto_on_8x64x28x28": simam_fused.resolve_impl("auto", torch.empty(8, 64, 28, 28, device=DEVICE)), "cases": cases}


# ----------------------------------------------------------------------------- CUDA RNG
def check_cuda_rng() -> Result:
    """engine.checkpoint's capture_rng/restore_rng round trip restores the CUDA generator (dropout
    masks and torch.randn on the GPU repeat exactly)."""
    from engine.checkpoint import capture_rng, restore_rng

    torch.manual_seed(123)
    torch.randn(3, device=DEVICE)  # initialises CUDA and moves its generator
    state = capture_rng()
    first = (torch.randn(1000, device=DEVICE), torch.nn.functional.dropout(torch.ones(1000, device=DEVICE), 0.5))
    torch.randn(77, device=DEVICE)
    exact = restore_rng(state)
    second = (torch.randn(1000, device=DEVICE), torch.nn.functional.dropout(torch.ones(1000, device=DEVICE), 0.5))
    same = all(torch.equal(a, b) for a, b in zip(first, second))
    return {"ok": bool(same and exact and "cuda" in state), "captured_cuda": "cuda" in state, "restore_exact": exact,
            "same_draws": same}


# ----------------------------------------------------------------------------- host syncs per step
def _count_syncs(steps: int) -> int:
    """Synchronizing CUDA calls seen by torch.cuda.set_sync_debug_mode("warn") during one
    train_one_epoch of `steps` steps (uint8 batches through DevicePrefetcher) and one evaluate."""
    import networks
    from engine.data import DevicePrefetcher
    from engine.loops import evaluate, train_one_epoch

    torch.manual_seed(0)
    model = networks.create_model("cifar_resnet20", num_classes=10, attention="simam").to(DEVICE, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pin = (lambda t: t.pin_memory()) if DEVICE.type == "cuda" else (lambda t: t)
    batches = [(pin(torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)), pin(torch.randint(0, 10, (64,))))
               for _ in range(steps)]
    kw = dict(device=DEVICE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), channels_last=True)
    criterion = torch.nn.CrossEntropyLoss()
    train_one_epoch(model, DevicePrefetcher(batches, **kw), optimizer, criterion, device=DEVICE,
                    amp_dtype=torch.bfloat16, channels_last=True, log_every=0)  # warm-up: cuDNN, kernels, allocations
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        if DEVICE.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            train_one_epoch(model, DevicePrefetcher(batches, **kw), optimizer, criterion, device=DEVICE,
                            amp_dtype=torch.bfloat16, channels_last=True, log_every=0)
            evaluate(model, DevicePrefetcher(batches, **kw), criterion, device=DEVICE, amp_dtype=torch.bfloat16, channels_last=True)
        finally:
            if DEVICE.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message).lower() for w in seen)


def check_sync_per_step() -> Result:
    """torch.cuda.set_sync_debug_mode around one epoch + one evaluation: the number of host syncs must
    not grow with the number of steps (a few per epoch for its result are fine, none per step)."""
    few, many = _count_syncs(4), _count_syncs(12)
    per_step = (many - few) / 8
    return {"ok": per_step == 0, "syncs_4_steps": few, "syncs_12_steps": many, "syncs_per_extra_step": per_step}


# ----------------------------------------------------------------------------- nvJPEG race
def _jpeg_batch(count: int) -> list[torch.Tensor]:
    import numpy as np
    from PIL import Image

    from engine.data import load_encoded

    rng = np.random.default_rng(0)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            pixels = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
            pixels[::8] = i  # a different image each
            Image.fromarray(pixels).save(f"{tmp}/{i}.jpg", quality=90)
            out.append(load_encoded(f"{tmp}/{i}.jpg"))
    return out


def _hazard(stream: torch.cuda.Stream, nbytes: list[int]) -> None:
    """On `stream`: a long sleep, then kernels that write buffers (of the decoded images' sizes, so
    that the allocator hands their blocks to the decoder's outputs) freed right away: their memory
    returns to the stream's pool while the writes are still queued (the pattern of pytorch/vision#9606)."""
    with torch.cuda.stream(stream):
        bufs = [torch.empty(n, dtype=torch.uint8, device=DEVICE) for n in nbytes]
        torch.cuda._sleep(50_000_000)  # ~25 ms of GPU time ahead of the writes
        for buf in bufs:
            buf.fill_(7)
        del bufs, buf


def check_nvjpeg_race() -> Result:
    """Decoding right after a queued write to freed memory, on a side stream: torchvision's decode_jpeg
    called there directly (the upstream race: informational) and engine.data's DeviceDecoder (our
    protocol: must match a synchronised reference decode exactly)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from engine.data import DeviceDecoder

    encoded = _jpeg_batch(16)
    torch.cuda.synchronize()
    reference = torch.stack(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=DEVICE))
    torch.cuda.synchronize()
    side = torch.cuda.Stream(device=DEVICE)
    nbytes = [image.numel() for image in reference]
    raw_bad = ours_bad = 0
    decoder = DeviceDecoder(lambda image: image, DEVICE)
    seeds = torch.zeros(len(encoded), dtype=torch.int64)
    for _ in range(10):
        _hazard(side, nbytes)
        with torch.cuda.stream(side):
            raw = torch.stack(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=DEVICE))
        side.synchronize()
        raw_bad += int(not torch.equal(raw, reference))
        _hazard(side, nbytes)
        with torch.cuda.stream(side):
            ours = decoder((encoded, seeds))
        side.synchronize()
        ours_bad += int(not torch.equal(ours, reference))
    return {"ok": ours_bad == 0, "rounds": 10, "device_decoder_corrupted_rounds": ours_bad,
            "raw_decode_jpeg_corrupted_rounds (upstream race, informational)": raw_bad}


# ----------------------------------------------------------------------------- bit-exact resume
def _cli(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "main_cifar.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"main_cifar.py {' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()[-1500:]}")
    return proc


def check_deterministic_resume() -> Result:
    """trainer.deterministic=true on the GPU: 2 epochs straight = 1 epoch, stop, auto-resume, 1 more,
    bit for bit (model weights of last.pth); SimAM on its automatic choice, bf16 autocast."""
    job = ["data=fake", "data.num_train=512", "data.num_val=128", "data.batch_size=64", "model.arch=cifar_resnet20",
           "attention=simam", f"trainer.accelerator={DEVICE.type}", "trainer.deterministic=true", "trainer.amp=bf16",
           "trainer.channels_last=true", "trainer.epochs=2", "trainer.progress=none"]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        _cli(job + [f"hydra.run.dir={tmp}/straight"])
        _cli(job + [f"hydra.run.dir={tmp}/resumed", "trainer.stop_after_epochs=1"])
        _cli(job + [f"hydra.run.dir={tmp}/resumed", "trainer.auto_resume=true"])
        states = [torch.load(f"{tmp}/{run}/checkpoints/last.pth", map_location="cpu", weights_only=False)["model"]
                  for run in ("straight", "resumed")]
    different = [k for k in states[0] if not torch.equal(states[0][k], states[1][k])]
    return {"ok": not different and states[0].keys() == states[1].keys(), "different_tensors": different[:10],
            "seconds": round(time.perf_counter() - t0, 1)}


CHECKS: dict[str, Callable[[], Result]] = {
    "triton_simam": check_triton_simam,
    "cuda_rng": check_cuda_rng,
    "sync_per_step": check_sync_per_step,
    "nvjpeg_race": check_nvjpeg_race,
    "deterministic_resume": check_deterministic_resume,
}


def run_checks(names: list[str], write: Callable[[dict[str, Result]], None] = lambda results: None) -> dict[str, Result]:
    """Every check's result; `write` gets the results so far after each check (a time limit that
    stops the run keeps what was done)."""
    results: dict[str, Result] = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            results[name] = CHECKS[name]()
        except Exception as e:  # noqa: BLE001 - recorded, the other checks still run
            results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[-2000:],
                             "traceback": traceback.format_exc()[-3000:]}
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"gpu_checks: {name}: {'ok' if results[name]['ok'] else 'FAILED' if results[name]['ok'] is False else 'info'} "
              f"({results[name]['seconds']} s)", file=sys.stderr, flush=True)
        write(results)
    return results


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--only", default="", help=f"comma-separated checks; valid: {', '.join(CHECKS)}")
    p.add_argument("--list", action="store_true", help="print the checks and exit (no GPU needed)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help=f"cpu: dry test of the checks' code, without {', '.join(NEEDS_CUDA)}")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        print(f"gpu_checks.py: error: unknown check {', '.join(unknown)}; valid: {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    if args.list:
        for n in names:
            print(f"{n}: {' '.join((CHECKS[n].__doc__ or '').split())}")
        return 0
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        print("gpu_checks.py: error: CUDA is not available here", file=sys.stderr)
        return 2
    if DEVICE.type == "cpu":
        names = [n for n in names if n not in NEEDS_CUDA]
    device = torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "cpu (dry test)"

    def write(results: dict[str, Result]) -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            payload = {"torch": torch.__version__, "device": device, "checks": results,
                       "not_run": [n for n in names if n not in results]}
            args.json.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    results = run_checks(names, write)
    if not args.json:
        print(json.dumps({"torch": torch.__version__, "device": device, "checks": results}, indent=1, default=str))
    return 0 if all(r["ok"] is not False for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
