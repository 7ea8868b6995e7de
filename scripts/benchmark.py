"""Micro-benchmarks, each section's rows measured side by side in one process.

    python scripts/benchmark.py                          # every section, full sizes, CPU
    python scripts/benchmark.py --quick                  # small sizes (CI smoke run)
    python scripts/benchmark.py --only simam --device cuda --json benchmarks/cuda_simam.json

Timings are medians over `--repeats` runs after `--warmup` runs (compilation happens in the
warm-up), with the candidates of a section interleaved run by run so that a change of machine
load hits all of them alike; CUDA timings synchronize before reading the clock. Results print as
a table and, with --json, are written with the machine's description (platform, CPU count,
threads, device name, torch version, load average). Goals are printed beside the measured
ratios as PASS/FAIL text; nothing here asserts.

Sections are entries of SECTIONS: a function `(Bench) -> list of row dicts`. A row has
`section`, `name`, `value`, `unit`, and optionally `ratio` (a float) with `ratio_to` (what it
is relative to), `goal` (text), `status` ("PASS"/"FAIL"/"") and `note`. New sections (data
loading, trainer steps) add a function and one SECTIONS entry.

Section `simam`: SimAM forward+backward of a 32x256x56x56 fp32 tensor (--quick: 8x64x56x56)
for the SimAM code's original formula (eager), our plain formula, the custom autograd Function
(eager) and the same Function with torch.compile'd kernels; the memory-bound floor of 8
tensor-sized transfers (forward: read for the statistics, read + write; backward: read x and
dL/dy for the reductions, read both again and write dL/dx) at the streaming bandwidth of a large
`torch.add(a, b, out=c)` (3 transfers); and the bytes each saves for backward.

Sections `loading`, `train_step`, `cifar_epoch`, `simam_model` (the data path and the trainer,
against the original SimAM code's pipeline and loop): (a) ImageFolder training images/s of one
loader process (workers=0, 1 thread) on generated 500x375 JPEGs, decode_jpeg + v2 on uint8 vs
PIL + RandomResizedCrop + flip + ToTensor + Normalize, goal >= 1.7x; (b) ResNet-18 training
images/s, our loop (bf16 autocast, channels_last, uint8 batches normalised by the prefetcher) vs
the original loop (fp32, NCHW, float32 batches), goal >= 2x; (c) CIFAR ResNet-56 epoch time with
the data on the device vs PIL + ToTensor per sample in a 2-worker DataLoader (scaled to 50,000
images; the 5x goal applies on a GPU only); (d) SimAM-ResNet-18/50 vs ResNet-18/50 step time,
and peak memory on CUDA. These cap their runs at 3-5 with one warm-up (whole steps and epochs).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from networks.attention import simam_fused, simam_native  # noqa: E402
from networks.attention.simam import simam, simam_reference  # noqa: E402

Row = dict[str, Any]


# ----------------------------------------------------------------------------- measurement
@dataclass
class Bench:
    """What every section gets: the device, the sizes to use and the timing helpers."""

    device: torch.device
    quick: bool
    repeats: int
    warmup: int
    log: Callable[[str], None] = print
    extra: dict[str, Any] = field(default_factory=dict)  # anything a section wants in the JSON
    inner: int = 1  # CUDA: calls per timing between two events (a ~10 us op needs many)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time_once(self, fn: Callable[[], Any]) -> float:
        """Seconds per call of fn: host clock on CPU; on CUDA, CUDA events around `inner` calls
        queued back to back (no sync between them), divided by `inner`."""
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.sync()
            start.record()
            for _ in range(self.inner):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / self.inner
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def compare(self, candidates: dict[str, Callable[[], Any]]) -> dict[str, list[float]]:
        """Seconds per run of each candidate: `warmup` runs each, then `repeats` interleaved rounds."""
        for name, fn in candidates.items():
            for _ in range(self.warmup):
                self.time_once(fn)
            self.log(f"  warmed up {name}")
        times: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(self.repeats):
            for name, fn in candidates.items():
                times[name].append(self.time_once(fn))
        return times


def median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def spread_note(samples: list[float]) -> str:
    """min-max of the runs, for a feel of the noise."""
    return f"n={len(samples)}, min {1e3 * min(samples):.2f} / max {1e3 * max(samples):.2f} ms"


def goal_row(section: str, name: str, ratio: float, limit: float, ratio_to: str, applies: bool, note: str = "") -> Row:
    status = ("PASS" if ratio <= limit else "FAIL") if applies else "n/a"
    return {"section": section, "name": name, "value": ratio, "unit": "x", "ratio": ratio, "ratio_to": ratio_to,
            "goal": f"<= {limit:g}x {ratio_to}", "status": status, "note": note}


# ----------------------------------------------------------------------------- section: simam
def simam_original(x: torch.Tensor, e_lambda: float) -> torch.Tensor:
    """SimAM as the paper's code computes it: in the input dtype, n = H*W - 1, no fp32 casts."""
    n = x.shape[2] * x.shape[3] - 1
    d2 = (x - x.mean(dim=[2, 3], keepdim=True)).pow(2)
    y = d2 / (4 * (d2.sum(dim=[2, 3], keepdim=True) / n + e_lambda)) + 0.5
    return x * torch.sigmoid(y)


def streaming_bandwidth(b: Bench, min_bytes: int) -> tuple[float, int, list[float]]:
    """Bytes/s of `torch.add(a, b, out=c)` on preallocated fp32 tensors of >= max(min_bytes, 256 MiB)
    each (3 transfers per add): (median bytes/s, bytes per tensor, seconds of each run)."""
    numel = max(min_bytes, 256 * 2**20) // 4
    a = torch.rand(numel, device=b.device)
    bb = torch.rand(numel, device=b.device)
    c = torch.empty(numel, device=b.device)
    times = b.compare({"add": lambda: torch.add(a, bb, out=c)})["add"]
    return 3 * numel * 4 / statistics.median(times), numel * 4, times


# SimAM sits after conv2 of each bottleneck in SimAM-ResNet-50: 64/128/256/512 channels at 56/28/14/7 px
RESNET50_SIMAM_SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]


def simam_shapes(quick: bool, on_gpu: bool) -> list[tuple[int, int, int, int]]:
    """The issue's 16x256x56x56 and ResNet-50's four stage shapes at batch 16 (GPU: 64; --quick: smaller)."""
    batch = 64 if on_gpu else 16
    if quick:
        return [(8, 64, 56, 56)] + [(4, c, s, s) for c, s in RESNET50_SIMAM_SHAPES[2:]]
    return [(batch, 256, 56, 56)] + [(batch, c, s, s) for c, s in RESNET50_SIMAM_SHAPES]


def first_call_in_new_process(b: Bench, shape: tuple[int, ...], impl: str = "compiled", cache_dir: str | None = None) -> float:
    """Seconds of the first SimAM forward+backward of `impl` ("compiled", "native") in a fresh Python
    process (the on-disk cache, `cache_dir` when given, decides whether it compiles or loads)."""
    code = (
        "import sys, time, torch; sys.path.insert(0, sys.argv[1])\n"
        "from networks.attention.simam import simam\n"
        "from networks.attention import simam_fused\n"
        "x = torch.randn(*map(int, sys.argv[3].split('x')), device=sys.argv[2], requires_grad=True)\n"
        "t = time.perf_counter(); simam(x, 1e-4, sys.argv[4]).sum().backward()\n"
        "torch.cuda.synchronize() if x.is_cuda else None\n"
        "assert simam_fused.compile_failure() is None, simam_fused.compile_failure()\n"
        "print(time.perf_counter() - t)\n")
    env = {k: v for k, v in os.environ.items() if k != "SIMAM_IMPL"}
    if cache_dir is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    proc = subprocess.run([sys.executable, "-c", code, str(REPO), b.device.type, "x".join(map(str, shape)), impl],
                          capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"first {impl} SimAM call in a new process failed: {proc.stderr.strip()[-500:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def _simam_candidates(x: torch.Tensor, grad: torch.Tensor, e_lambda: float, reference: bool) -> dict[str, Callable[[], None]]:
    impls: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"original (eager)": lambda t: simam_original(t, e_lambda)}
    if reference:
        impls["reference (plain formula, eager)"] = lambda t: simam_reference(t, e_lambda)
    impls["ours: function (eager kernels)"] = lambda t: simam(t, e_lambda, "function")
    if simam_fused.compile_available():
        impls["ours: compiled (torch.compile)"] = lambda t: simam(t, e_lambda, "compiled")
    if simam_native.applies(x) and simam_native.available():
        impls["ours: native (C/OpenMP kernel)"] = lambda t: simam(t, e_lambda, "native")

    def fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            fn(x).backward(grad)
            x.grad = None
        return run
    return {name: fwd_bwd(fn) for name, fn in impls.items()}


def _simam_shape_rows(b: Bench, shape: tuple[int, ...], bandwidth: float, main: bool,
                      dtype: torch.dtype = torch.float32, channels_last: bool = False) -> list[Row]:
    """fwd+bwd rows of one input shape: each candidate's time, ratio to the original and to the floor;
    goal rows for float32 NCHW only (the issue's goals), the others are reported."""
    sec, e_lambda = "simam", 1e-4
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(*shape, device=b.device).to(dtype).contiguous(memory_format=fmt).requires_grad_()
    grad = torch.randn(*shape, device=b.device).to(dtype).contiguous(memory_format=fmt)
    size = x.numel() * x.element_size()
    floor_s = 8 * size / bandwidth
    kind = "fp32" if dtype == torch.float32 else str(dtype).replace("torch.", "")
    kind += " channels_last" if channels_last else ""
    shape_s = "x".join(map(str, shape))
    for impl in ("compiled", "native"):  # compiles (or loads) the kernels outside the timing
        simam(x, e_lambda, impl).backward(grad)
        x.grad = None
    times = b.compare(_simam_candidates(x, grad, e_lambda, reference=main))
    med = {name: statistics.median(t) for name, t in times.items()}
    auto = simam_fused.resolve_impl("auto", x)
    floor_name = f"{shape_s}: memory-bound floor fwd+bwd (8 transfers)" if kind == "fp32" else f"{shape_s} {kind}: memory-bound floor"
    rows: list[Row] = [{"section": sec, "name": floor_name,
                        "value": 1e3 * floor_s, "unit": "ms", "note": f"8 x {size / 2**20:.1f} MiB at the bandwidth above"}]
    for name, t in times.items():
        note = f"{med[name] / floor_s:.2f}x floor; {spread_note(t)}"
        if name.startswith("ours") and name.split(": ")[1].startswith(auto):
            note += "; 'auto' picks this"
        rows.append({"section": sec, "name": f"{shape_s} {kind} fwd+bwd: {name}", "value": median_ms(t), "unit": "ms",
                     "ratio": med[name] / med["original (eager)"], "ratio_to": "original", "note": note})
    if kind != "fp32":
        return rows
    best = min((n for n in med if n.startswith("ours")), key=med.__getitem__)
    on_gpu = b.device.type == "cuda"
    rows.append(goal_row(sec, f"goal CPU {shape_s}: ours ({best.split(': ')[1]}) / original", med[best] / med["original (eager)"],
                         0.15, "original", applies=not on_gpu, note=f"{med[best] / floor_s:.2f}x the memory-bound floor"))
    rows.append(goal_row(sec, f"goal GPU {shape_s}: ours ({best.split(': ')[1]}) / floor", med[best] / floor_s, 1.5,
                         "floor", applies=on_gpu))
    return rows


def _saved_bytes_rows(b: Bench, shape: tuple[int, ...]) -> list[Row]:
    sec, e_lambda = "simam", 1e-4
    x = torch.randn(*shape, device=b.device).requires_grad_()
    size = x.numel() * x.element_size()
    saved = {
        "original (eager)": simam_fused.saved_tensor_bytes(simam_original, x, e_lambda),
        "reference (plain formula, eager)": simam_fused.saved_tensor_bytes(simam_reference, x, e_lambda),
        "ours: function (eager kernels)": simam_fused.saved_tensor_bytes(simam, x, e_lambda, "function"),
    }
    if simam_fused.compile_available():
        saved["ours: compiled (torch.compile)"] = simam_fused.saved_tensor_bytes(simam, x, e_lambda, "compiled")
    if simam_native.applies(x) and simam_native.available():
        saved["ours: native (C/OpenMP kernel)"] = simam_fused.saved_tensor_bytes(simam, x, e_lambda, "native")
    rows: list[Row] = [{"section": sec, "name": f"saved for backward: {name}", "value": n / 2**20, "unit": "MiB",
                        "ratio": n / size, "ratio_to": "input"} for name, n in saved.items()]
    worst = max((n for n in saved if n.startswith("ours")), key=saved.__getitem__)
    rows.append(goal_row(sec, "goal: saved bytes (ours, max) / input", saved[worst] / size, 1.1, "input", applies=True))
    return rows


def bench_simam(b: Bench) -> list[Row]:
    """SimAM fwd+bwd at the issue's shape and ResNet-50's stage shapes against the original formula and
    the memory-bound floor; bytes saved for backward; the first compiled call in a new process."""
    sec = "simam"
    shapes = simam_shapes(b.quick, b.device.type == "cuda")
    if b.device.type == "cuda":
        from dataclasses import replace

        b = replace(b, inner=20)
    main_size = 4 * shapes[0][0] * shapes[0][1] * shapes[0][2] * shapes[0][3]
    bandwidth, bw_bytes, bw_times = streaming_bandwidth(b, main_size)
    rows: list[Row] = [{"section": sec, "name": "streaming bandwidth (torch.add out=)", "value": bandwidth / 1e9, "unit": "GB/s",
                        "note": f"3 x {bw_bytes / 2**20:.0f} MiB per add; {spread_note(bw_times)}"}]
    if simam_fused.compile_available():
        cold_or_warm = first_call_in_new_process(b, shapes[0])
        warm = first_call_in_new_process(b, shapes[0])
        rows.append({"section": sec, "name": "first compiled fwd+bwd in a new process, cache warm", "value": warm, "unit": "s",
                     "note": f"Inductor's on-disk cache in {simam_fused.compile_cache_dir()}; the process before it: "
                             f"{cold_or_warm:.1f} s (compiles if the cache was empty)"})
    if b.device.type == "cpu" and simam_native.available():
        import tempfile

        with tempfile.TemporaryDirectory() as empty:
            cold = first_call_in_new_process(b, shapes[0], "native", empty)
            warm = first_call_in_new_process(b, shapes[0], "native", empty)
        rows.append({"section": sec, "name": "first native fwd+bwd in a new process, cache warm", "value": warm, "unit": "s",
                     "note": f"with an empty cache (builds the C kernel): {cold:.2f} s"})
    for i, shape in enumerate(shapes):
        b.log(f"simam: {'x'.join(map(str, shape))} fp32 on {b.device}")
        rows += _simam_shape_rows(b, shape, bandwidth, main=i == 0)
    for shape in ([] if b.quick else shapes[1:]):  # the training recipe's inputs: bf16 (autocast), channels_last
        b.log(f"simam: {'x'.join(map(str, shape))} bf16 channels_last on {b.device}")
        rows += _simam_shape_rows(b, shape, bandwidth, main=False, dtype=torch.bfloat16, channels_last=True)
    rows += _saved_bytes_rows(b, shapes[0])
    b.extra["simam"] = {"shapes": [list(s) for s in shapes], "dtype": "float32", "compile_available": simam_fused.compile_available(),
                        "native_available": simam_native.available(), "native_failure": simam_native.failure(),
                        "compile_failed": simam_fused.compile_failure(), "cache_dir": simam_fused.compile_cache_dir()}
    return rows


# ----------------------------------------------------------------------------- sections: data path, trainer
# loading, train_step, cifar_epoch, simam_model: engine/data.py, engine/prefetch.py and engine/loops.py
# against the original SimAM code's pipeline and loop. Heavy sections cap the runs (_heavy).
def _heavy(b: Bench, repeats: int) -> Bench:
    """The same bench with at most `repeats` timed runs and one warm-up run (whole epochs/steps)."""
    from dataclasses import replace

    return replace(b, repeats=min(b.repeats, repeats), warmup=min(b.warmup, 1), inner=1)


def _at_least(section: str, name: str, ratio: float, limit: float, ratio_to: str, applies: bool, note: str = "") -> Row:
    status = ("PASS" if ratio >= limit else "FAIL") if applies else "n/a"
    return {"section": section, "name": name, "value": ratio, "unit": "x", "ratio": ratio, "ratio_to": ratio_to,
            "goal": f">= {limit:g}x {ratio_to}", "status": status, "note": note}


def _rate_row(section: str, name: str, items: int, times: list[float], unit: str = "images/s", note: str = "") -> Row:
    return {"section": section, "name": name, "value": items / statistics.median(times), "unit": unit,
            "note": "; ".join(filter(None, [note, spread_note(times)]))}


class _Batches:
    """Fixed batches with a loader's len(): what train_one_epoch iterates in the step benchmarks."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class _Transformed(torch.utils.data.Dataset):
    """(transform(image), label) of a data set of (PIL image, label), as the original scripts load CIFAR."""

    def __init__(self, source: Any, transform: Callable[[Any], Any]) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.source[index]
        return self.transform(image), label


def _photo_jpegs(root: Path, count: int, size: tuple[int, int] = (500, 375)) -> None:
    """`count` photo-like JPEGs (smooth colour waves + noise, quality 90, ImageNet's typical 500x375)
    as ROOT/train/cK/*.jpg, and one per class in ROOT/val/."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    for i in range(count + 4):
        split, cls = ("train", i % 4) if i < count else ("val", i - count)
        phase, freq = rng.uniform(0, 6, 3), rng.uniform(2, 8, 2)
        base = np.stack([np.sin(freq[0] * xx + p) * np.cos(freq[1] * yy - p) for p in phase], -1)
        folder = root / split / f"c{cls}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(128 + 90 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


def device_prefetcher() -> type:
    """engine.data.DevicePrefetcher (engine.prefetch before the data package existed)."""
    try:
        from engine.data import DevicePrefetcher
    except ImportError:
        from engine.prefetch import DevicePrefetcher  # type: ignore[no-redef]
    return DevicePrefetcher


def bench_loading(b: Bench) -> list[Row]:
    """(a) ImageFolder training images/s of one loader process (workers=0, 1 thread, as a worker runs)."""
    import tempfile

    import torchvision
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    from engine import data

    sec, count, batch = "loading", 64 if b.quick else 200, 32
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a DataLoader worker gets
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            _photo_jpegs(root, count)
            original = torchvision.datasets.ImageFolder(str(root / "train"), T.Compose([
                T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                T.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)]))
            original_loader = DataLoader(original, batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
            ours = data.build_datasets("imagefolder", str(root), augment="imagenet", image_size=224, normalize=False)[0]
            ours_loader = data.build_loader(ours, batch_size=batch, train=True, workers=0)
            images = count // batch * batch
            b.log(f"loading: {count} JPEGs 500x375 q90, batches of {batch}, 1 thread")
            times = b.compare({
                "original": lambda: [x.shape for x, _ in original_loader],
                "ours": lambda: [x.shape for x, _ in ours_loader],
            })
    finally:
        torch.set_num_threads(threads)
    rate = {name: images / statistics.median(t) for name, t in times.items()}
    note = f"passes over {images} images"
    return [
        _rate_row(sec, "original: PIL + RandomResizedCrop(224) + flip + ToTensor + Normalize (float32)", images, times["original"], note=note),
        _rate_row(sec, "ours: decode_jpeg + v2 RandomResizedCrop + flip on uint8 (normalised on the device)", images, times["ours"], note=note),
        _at_least(sec, "goal: ours / original images/s per worker", rate["ours"] / rate["original"], 1.7, "original", applies=True),
    ]


def _train_candidates(b: Bench, arch: str, batch: int, size: int, steps: int, num_classes: int,
                      variants: dict[str, tuple[Optional[torch.dtype], bool, bool]],
                      attention: str = "none") -> dict[str, Callable[[], Any]]:
    """One closure per variant name -> (amp dtype, channels_last, ours): `steps` training steps of a
    fresh copy of the same model, through train_one_epoch + DevicePrefetcher (uint8 batches) when
    `ours`, else the original loop (float32 batches, loss.backward(); optimizer.step())."""
    import copy

    import networks
    from engine.loops import train_one_epoch
    DevicePrefetcher = device_prefetcher()

    torch.manual_seed(0)
    base = networks.create_model(arch, num_classes=num_classes, attention=attention)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    generator = torch.Generator().manual_seed(0)
    uint8 = [(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator),
              torch.randint(0, num_classes, (batch,), generator=generator)) for _ in range(steps)]
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    floats = [((x.float() / 255 - m) / s, y) for x, y in uint8]  # what the original loader delivers
    criterion = torch.nn.CrossEntropyLoss()
    out: dict[str, Callable[[], Any]] = {}
    for name, (amp, channels_last, ours) in variants.items():
        model = copy.deepcopy(base).to(b.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        if ours:
            loader = DevicePrefetcher(_Batches(uint8), device=b.device, mean=mean, std=std, channels_last=channels_last)
            out[name] = (lambda model=model, optimizer=optimizer, loader=loader, amp=amp, cl=channels_last: train_one_epoch(
                model, loader, optimizer, criterion, device=b.device, amp_dtype=amp, channels_last=cl, log_every=0))
        else:
            def original(model: torch.nn.Module = model, optimizer: torch.optim.Optimizer = optimizer) -> None:
                model.train()
                for images, targets in floats:
                    images, targets = images.to(b.device), targets.to(b.device)
                    loss = criterion(model(images), targets)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            out[name] = original
    return out


def bench_train_step(b: Bench) -> list[Row]:
    """(b) ResNet-18 training steps: our loop (bf16 autocast, channels_last, uint8 + device normalisation)
    against the original loop (fp32, NCHW, float32 batches)."""
    sec = "train_step"
    batch, size, steps = (8, 112, 2) if b.quick else (32, 224, 2)
    variants = {"original loop: fp32, NCHW, float32 batch": (None, False, False),
                "ours: train_one_epoch, bf16 autocast, channels_last, uint8 batch": (torch.bfloat16, True, True)}
    if not b.quick:
        variants["ours, fp32 NCHW (loop and prefetcher only)"] = (None, False, True)
    b.log(f"train_step: resnet18, batch {batch} at {size}x{size}, {steps} steps per run")
    times = _heavy(b, 3 if b.quick else 5).compare(_train_candidates(b, "resnet18", batch, size, steps, 1000, variants))
    rows = [_rate_row(sec, f"resnet18 {batch}x{size}px: {name}", batch * steps, t, note=f"runs of {steps} steps") for name, t in times.items()]
    original, ours = (statistics.median(times[n]) for n in list(variants)[:2])
    rows.append(_at_least(sec, "goal: ours / original training images/s", original / ours, 2.0, "original", applies=True))
    return rows


def bench_cifar_epoch(b: Bench) -> list[Row]:
    """(c) CIFAR ResNet-56 epoch: data on the device (DeviceLoader, batched crop/flip) + our loop against
    the original (PIL + RandomCrop + flip + ToTensor + Normalize per sample, DataLoader with 2 workers,
    fp32 loop). The 5x goal is for a GPU; on a CPU the network dominates and the ratio is reported."""
    import copy

    import numpy as np
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    import networks
    from engine import data
    from engine.loops import train_one_epoch
    DevicePrefetcher = device_prefetcher()

    # on a GPU more images, so that starting the original loader's workers is not scaled up 50x
    sec, count, batch = "cifar_epoch", 10240 if b.device.type == "cuda" else 128 if b.quick else 1024, 128
    rng = np.random.default_rng(0)
    pixels, labels = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, count)
    source = data.ArrayImages(pixels, labels, [str(c) for c in range(10)])  # (PIL image, label) like torchvision's CIFAR10
    original_set = _Transformed(source, T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                                                  T.Normalize(data.CIFAR_MEAN, data.CIFAR_STD)]))
    original_loader = DataLoader(original_set, batch_size=batch, shuffle=True, num_workers=2, drop_last=True,
                                 pin_memory=b.device.type == "cuda")
    mean, std = data.normalization("cifar")
    ours_loader = DevicePrefetcher(
        data.build_device_loader(data.SeededDataset(source, None), device=b.device, augment="cifar", image_size=32,
                                 batch_size=batch, train=True),
        device=b.device, mean=mean, std=std, channels_last=True)
    torch.manual_seed(0)
    base = networks.create_model("cifar_resnet56", num_classes=10)
    criterion = torch.nn.CrossEntropyLoss()
    original_model = copy.deepcopy(base).to(b.device)
    original_opt = torch.optim.SGD(original_model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    ours_model = copy.deepcopy(base).to(b.device, memory_format=torch.channels_last)
    ours_opt = torch.optim.SGD(ours_model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    epoch = [0]

    def original() -> None:
        original_model.train()
        for images, targets in original_loader:
            images, targets = images.to(b.device, non_blocking=True), targets.to(b.device, non_blocking=True)
            loss = criterion(original_model(images), targets)
            original_opt.zero_grad()
            loss.backward()
            original_opt.step()

    def ours() -> None:
        epoch[0] += 1
        data.set_epoch(ours_loader, epoch[0])
        train_one_epoch(ours_model, ours_loader, ours_opt, criterion, device=b.device, amp_dtype=torch.bfloat16,
                        channels_last=True, log_every=0)

    b.log(f"cifar_epoch: cifar_resnet56, {count} images (of 50,000), batch {batch}")
    times = _heavy(b, 2 if b.quick else 3).compare({"original": original, "ours": ours})
    images = count // batch * batch
    per_50k = {name: statistics.median(t) * 50000 / images for name, t in times.items()}
    on_gpu = b.device.type == "cuda"
    return [
        {"section": sec, "name": "original: PIL + ToTensor per sample, DataLoader(2 workers), fp32 NCHW loop",
         "value": per_50k["original"], "unit": "s/epoch", "note": f"{images} images timed, scaled to 50,000; {spread_note(times['original'])}"},
        {"section": sec, "name": "ours: uint8 on the device, batched crop+flip, bf16 + channels_last loop",
         "value": per_50k["ours"], "unit": "s/epoch", "note": f"{images} images timed, scaled to 50,000; {spread_note(times['ours'])}"},
        _at_least(sec, "goal (GPU): original / ours epoch time", per_50k["original"] / per_50k["ours"], 5.0, "original",
                  applies=on_gpu, note="" if on_gpu else "reported only: the 5x goal is for a GPU"),
    ]


def _peak_memory(b: Bench, arch: str, attention: str, batch: int, size: int, steps: int, setting: dict) -> int:
    """Peak CUDA memory of `steps` training steps with only this candidate's model and optimizer alive
    (built, run once so that the optimizer state exists, then measured; freed afterwards)."""
    import gc

    run = _train_candidates(b, arch, batch, size, steps, 1000, setting, attention=attention)["ours"]
    run()
    torch.cuda.synchronize(b.device)
    torch.cuda.reset_peak_memory_stats(b.device)
    run()
    torch.cuda.synchronize(b.device)
    peak = torch.cuda.max_memory_allocated(b.device)
    del run
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def bench_simam_model(b: Bench) -> list[Row]:
    """(d) Training step time (and peak memory on CUDA) of SimAM-ResNets against plain ResNets, through
    our loop at the same settings (bf16 autocast, channels_last)."""
    import gc

    sec = "simam_model"
    on_gpu = b.device.type == "cuda"
    batch, size, steps = (64, 224, 5) if on_gpu else (8, 64, 2) if b.quick else (32, 112, 2)
    archs = ["resnet18"] if b.quick and not on_gpu else ["resnet18", "resnet50"]
    rows: list[Row] = []
    setting = {"ours": (torch.bfloat16, True, True)}
    for arch in archs:
        b.log(f"simam_model: {arch}, batch {batch} at {size}x{size}, {steps} steps per run")
        candidates = {attention: _train_candidates(b, arch, batch, size, steps, 1000, setting, attention=attention)["ours"]
                      for attention in ("none", "simam")}
        times = _heavy(b, 3 if b.quick else 5).compare(candidates)
        del candidates
        gc.collect()
        med = {name: statistics.median(t) / steps for name, t in times.items()}
        for attention, t in times.items():
            rows.append({"section": sec, "name": f"{arch} + {attention}: step, batch {batch} at {size}px, bf16, channels_last",
                         "value": 1e3 * med[attention], "unit": "ms/step", "note": f"runs of {steps} steps: {spread_note(t)}"})
        rows.append(goal_row(sec, f"{arch}: simam / none step time", med["simam"] / med["none"], 1.05, "none", applies=on_gpu,
                             note="" if on_gpu else "the 1.05x goal is for a GPU"))
        if on_gpu:
            torch.cuda.empty_cache()
            peak = {attention: _peak_memory(b, arch, attention, batch, size, steps, setting) for attention in ("none", "simam")}
            for attention, nbytes in peak.items():
                rows.append({"section": sec, "name": f"{arch} + {attention}: peak memory of {steps} steps (alone)",
                             "value": nbytes / 2**20, "unit": "MiB"})
            rows.append(goal_row(sec, f"{arch}: simam / none peak memory", peak["simam"] / peak["none"], 1.05, "none", applies=True,
                                 note="each measured with only its own model and optimizer alive"))
        else:
            rows.append({"section": sec, "name": f"{arch}: peak memory", "value": "skipped", "unit": "",
                         "note": "torch.cuda.max_memory_allocated: CUDA only"})
    return rows


# ----------------------------------------------------------------------------- sections: whole processes
# startup, devices, timm_epoch: the entry points run as a user runs them, timed from outside.
QUICKSTART = ["data=digits", "model.arch=cifar_resnet20", "attention=simam"]  # the README's quickstart model


def run_timed(cmd: list[str], *, env: Optional[dict[str, str]] = None, drop: tuple[str, ...] = (), expect: int = 0,
              timeout: float = 1800) -> tuple[float, subprocess.CompletedProcess]:
    """(wall seconds, completed process) of `cmd` from the repository root; RuntimeError when the exit
    code is not `expect`. `drop`: environment variables removed first (e.g. OMP_NUM_THREADS)."""
    full = {k: v for k, v in os.environ.items() if k not in drop}
    full.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=full, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != expect:
        raise RuntimeError(f"{' '.join(cmd[:6])} ...: exit {proc.returncode} (expected {expect}): {proc.stderr.strip()[-800:]}")
    return wall, proc


def _medians(b: Bench, cmds: dict[str, tuple[list[str], dict]], runs: int) -> dict[str, list[float]]:
    """Wall seconds of each command, `runs` rounds interleaved."""
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, (cmd, kw) in cmds.items():
            times[name].append(run_timed(cmd, **kw)[0])
    b.log(f"  {', '.join(f'{n}: {statistics.median(t):.2f} s' for n, t in times.items())}")
    return times


def bench_startup(b: Bench) -> list[Row]:
    """--help and a config error (goal < 1.5 s, no torch import), and a quickstart process that trains one
    step and evaluates one batch, and one that only evaluates, against the import time of the libraries
    (goal: import + 2 s). The processes are timed whole (start to exit: an upper bound of the time to the
    first step / first evaluated batch); SimAM on its automatic choice, Inductor's cache as it is."""
    import tempfile

    sec, py, runs = "startup", sys.executable, 2 if b.quick else 3
    fast = _medians(b, {
        "import torch, torchvision, timm, hydra": ([py, "-c", "import torch, torchvision, timm, hydra"], {}),
        "main_cifar.py --help": ([py, "main_cifar.py", "--help"], {}),
        "main_cifar.py model.arch=no_such_net (config error)": ([py, "main_cifar.py", "model.arch=no_such_net"], {"expect": 2}),
    }, runs)
    imports = statistics.median(fast["import torch, torchvision, timm, hydra"])
    rows = [{"section": sec, "name": f"wall: {name}", "value": statistics.median(t), "unit": "s", "note": spread_note(t)}
            for name, t in fast.items()]
    for name in list(fast)[1:]:
        rows.append(goal_row(sec, f"goal: {name.split(' (')[0]} < 1.5 s", statistics.median(fast[name]) / 1.5, 1.0, "1.5 s", True,
                             note=f"{statistics.median(fast[name]):.2f} s"))
    env = {"SIMAM_IMPL": os.environ.get("SIMAM_IMPL", "auto")}
    with tempfile.TemporaryDirectory() as tmp:
        one_step = [py, "main_cifar.py", *QUICKSTART, "trainer.epochs=1", "trainer.max_steps_per_epoch=1",
                    "data.eval_batch_size=400", "trainer.progress=none"]
        train = [run_timed(one_step + [f"hydra.run.dir={tmp}/r{i}"], env=env)[0] for i in range(runs)]
        evaluate = [run_timed([py, "main_cifar.py", *QUICKSTART, "evaluate=true", "data.eval_batch_size=400",
                               f"resume={tmp}/r0/checkpoints/last.pth"], env=env)[0] for _ in range(runs)]
    for name, t in {"1 training step + 1 evaluated batch (whole process)": train,
                    "evaluation only, 1 batch (-e --resume, whole process)": evaluate}.items():
        rows.append({"section": sec, "name": f"wall: {name}", "value": statistics.median(t), "unit": "s",
                     "note": f"first run {t[0]:.2f} s; {spread_note(t)}"})
        rows.append(goal_row(sec, f"goal: {name.split(' (')[0]} <= import + 2 s", statistics.median(t) / (imports + 2), 1.0,
                             "import + 2 s", True, note=f"import {imports:.2f} s"))
    return rows


def _epoch_times(run_dir: Path) -> list[float]:
    return [json.loads(line)["epoch_time"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def bench_devices(b: Bench) -> list[Row]:
    """trainer.devices=2 against torchrun --nproc_per_node=2 on the same small CPU job (goal: within 5%),
    OMP_NUM_THREADS unset so that the trainer's own thread split is what is measured."""
    import shutil
    import tempfile

    sec = "devices"
    num_train, epochs = (256, 2) if b.quick else (1024, 3)
    job = ["main_cifar.py", "data=fake", f"data.num_train={num_train}", "data.num_val=64", "data.batch_size=64",
           "model.arch=cifar_resnet20", "attention=simam", f"trainer.epochs={epochs}", "trainer.accelerator=cpu",
           "trainer.progress=none"]
    torchrun = shutil.which("torchrun")
    launchers = {"trainer.devices=2": [sys.executable, *job, "trainer.devices=2"],
                 "torchrun --nproc_per_node=2": ([torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"])
                 + ["--standalone", "--nproc_per_node=2", *job]}
    kw = {"env": {"SIMAM_IMPL": "function"}, "drop": ("OMP_NUM_THREADS",)}
    epoch: dict[str, list[float]] = {n: [] for n in launchers}
    wall: dict[str, list[float]] = {n: [] for n in launchers}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(1 if b.quick else 2):
            for name, cmd in launchers.items():
                run_dir = Path(tmp) / f"launcher{list(launchers).index(name)}_{i}"
                wall[name].append(run_timed(cmd + [f"hydra.run.dir={run_dir}"], **kw)[0])
                epoch[name] += _epoch_times(run_dir)[1:]  # the first epoch holds one-off costs
    rows: list[Row] = []
    for name in launchers:
        rows.append({"section": sec, "name": f"{name}: epoch after the first ({num_train} images)", "value": statistics.median(epoch[name]),
                     "unit": "s", "note": f"median of {len(epoch[name])}; whole process {statistics.median(wall[name]):.1f} s"})
    ratio = statistics.median(epoch["trainer.devices=2"]) / statistics.median(epoch["torchrun --nproc_per_node=2"])
    rows.append(goal_row(sec, "goal: trainer.devices=2 / torchrun epoch time", ratio, 1.05, "torchrun", True))
    return rows


TIMM_TRAIN_ENV = "TIMM_TRAIN_PY"
TIMM_RATE = re.compile(r"\(\s*[\d.]+s,\s*([\d.]+)/s\)")


def timm_command(script: str, root: Path, out: Path, batch: int, epochs: int, image_size: int) -> list[str]:
    """timm's train.py with the flags of our run: ResNet-18 from scratch, SGD, bf16 autocast,
    channels_last, 2 loader workers, RandomResizedCrop + flip only (no colour jitter), bilinear."""
    return [sys.executable, script, str(root), "--model", "resnet18", "--num-classes", "4", "--device", "cpu",
            "--amp", "--amp-dtype", "bfloat16", "--channels-last", "--workers", "2", "-b", str(batch),
            "--validation-batch-size", str(batch), "--epochs", str(epochs), "--img-size", str(image_size),
            "--opt", "sgd", "--lr", "0.1", "--momentum", "0.9", "--weight-decay", "1e-4", "--sched", "step",
            "--warmup-epochs", "0", "--color-jitter", "0", "--train-interpolation", "bilinear", "--log-interval", "1000",
            "--output", str(out), "--train-split", "train", "--val-split", "val", "--seed", "0"]


def ours_command(root: Path, run_dir: Path, batch: int, epochs: int, image_size: int) -> list[str]:
    return [sys.executable, "main_imagenet.py", "data=imagefolder", f"data.root={root}", "model.arch=resnet18",
            "attention=none", "trainer.amp=bf16", "trainer.channels_last=true", "data.workers=2", f"data.batch_size={batch}",
            f"data.eval_batch_size={batch}", f"data.image_size={image_size}", f"trainer.epochs={epochs}",
            "trainer.accelerator=cpu", "trainer.progress=none", f"hydra.run.dir={run_dir}"]


def bench_timm_epoch(b: Bench) -> list[Row]:
    """Our CPU training epoch against timm's train.py on the same JPEG folder, model and flags: whole-epoch
    training images/s including the first steps (ours: metrics.jsonl; timm: the running average its last
    progress line prints). timm's pip package does not ship train.py: point TIMM_TRAIN_PY at a copy of
    the timm release's train.py (github.com/huggingface/pytorch-image-models)."""
    import tempfile

    sec = "timm_epoch"
    script = os.environ.get(TIMM_TRAIN_ENV, "")
    count, batch, image_size = (128, 32, 112) if b.quick else (512, 32, 224)
    if not script or not Path(script).is_file():
        cmd = " ".join(timm_command("train.py", Path("DATA"), Path("OUT"), batch, 1, image_size)[1:])
        return [{"section": sec, "name": "timm train.py vs ours", "value": "skipped", "unit": "",
                 "note": f"set {TIMM_TRAIN_ENV}=/path/to/timm/train.py; the command run: python {cmd}"}]
    rates: dict[str, list[float]] = {"ours": [], "timm train.py": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "jpegs"
        _photo_jpegs(root, count)
        for i in range(1 if b.quick else 2):
            run_dir = Path(tmp) / f"ours{i}"
            run_timed(ours_command(root, run_dir, batch, 1, image_size), env={"SIMAM_IMPL": "function"})
            rates["ours"].append(json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["throughput"])
            _, proc = run_timed(timm_command(script, root, Path(tmp) / f"timm{i}", batch, 1, image_size))
            found = TIMM_RATE.findall("\n".join(l for l in (proc.stdout + proc.stderr).splitlines() if "Train:" in l))
            if not found:
                raise RuntimeError(f"no training rate in timm's output: {(proc.stdout + proc.stderr)[-800:]}")
            rates["timm train.py"].append(float(found[-1]))
    rows = [{"section": sec, "name": f"{name}: resnet18 {image_size}px epoch of {count} JPEGs, bf16, channels_last, 2 workers",
             "value": statistics.median(r), "unit": "images/s", "note": f"runs: {', '.join(f'{v:.1f}' for v in r)}"}
            for name, r in rates.items()]
    ratio = statistics.median(rates["ours"]) / statistics.median(rates["timm train.py"])
    rows.append(_at_least(sec, "goal: ours / timm train.py whole-epoch images/s", ratio, 1.15, "timm", True))
    return rows


# ----------------------------------------------------------------------------- sections: GPU only
def _gpu_only(b: Bench, section: str, what: str) -> Optional[list[Row]]:
    if b.device.type == "cuda":
        return None
    return [{"section": section, "name": what, "value": "skipped", "unit": "", "note": "GPU only: run with --device cuda"}]


def bench_resnet50_compile(b: Bench) -> list[Row]:
    """ResNet-50 training images/s on synthetic data with torch.compile, bf16 autocast, channels_last
    (goal on one H100/H200-class GPU: >= 3,000 images/s); the eager step beside it."""
    sec = "resnet50_compile"
    skipped = _gpu_only(b, sec, "ResNet-50 images/s with torch.compile")
    if skipped:
        return skipped
    import networks

    batch, steps = 256, 10
    torch.manual_seed(0)
    criterion = torch.nn.CrossEntropyLoss()
    x = torch.randn(batch, 3, 224, 224, device=b.device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=b.device)
    rows: list[Row] = []
    for name, compiled in (("eager", False), ("torch.compile", True)):
        model = networks.create_model("resnet50", num_classes=1000).to(b.device, memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        fwd = torch.compile(model) if compiled else model

        def run(fwd: Any = fwd, optimizer: Any = optimizer) -> None:
            for _ in range(steps):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = criterion(fwd(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        t0 = time.perf_counter()
        run()  # compiles
        b.sync()
        first = time.perf_counter() - t0
        times = _heavy(b, 5).compare({name: run})[name]
        rows.append(_rate_row(sec, f"resnet50 {name}: batch {batch} at 224px, bf16, channels_last", batch * steps, times,
                              note=f"first run (compiling) {first:.1f} s"))
        del model, optimizer, fwd, run
        torch.cuda.empty_cache()
    rate = rows[-1]["value"]
    rows.append(_at_least(sec, "goal: resnet50 torch.compile images/s / 3000", rate / 3000, 1.0, "3000 images/s", True))
    return rows


def bench_gpu_decode(b: Bench) -> list[Row]:
    """JPEG decoding of the same folder: nvJPEG batched on the GPU (engine.data's DeviceDecoder path:
    read bytes on the host, decode on the device) against decode_jpeg on one CPU thread."""
    sec = "gpu_decode"
    skipped = _gpu_only(b, sec, "GPU JPEG decoding vs CPU")
    if skipped:
        return skipped
    import tempfile

    from torchvision.io import ImageReadMode, decode_jpeg

    from engine.data import load_encoded

    count, batch = 256, 64
    with tempfile.TemporaryDirectory() as tmp:
        _photo_jpegs(Path(tmp), count)
        files = sorted(str(p) for p in Path(tmp, "train").rglob("*.jpg"))
        encoded = [load_encoded(f) for f in files]
    batches = [encoded[i:i + batch] for i in range(0, count // batch * batch, batch)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = _heavy(b, 5).compare({
            "cpu": lambda: [decode_jpeg(e, mode=ImageReadMode.RGB) for e in batches],
            "gpu": lambda: [decode_jpeg(e, mode=ImageReadMode.RGB, device=b.device) for e in batches],
        })
    finally:
        torch.set_num_threads(threads)
    images = len(batches) * batch
    rows = [_rate_row(sec, "decode_jpeg on the CPU (1 thread), 500x375 q90", images, times["cpu"]),
            _rate_row(sec, f"decode_jpeg on the GPU (nvJPEG, batches of {batch})", images, times["gpu"])]
    ratio = statistics.median(times["cpu"]) / statistics.median(times["gpu"])
    rows.append({"section": sec, "name": "gpu / cpu decoding images/s", "value": ratio, "unit": "x", "ratio": ratio,
                 "ratio_to": "cpu (1 thread)"})
    return rows


# ----------------------------------------------------------------------------- registry, report
SECTIONS: dict[str, Callable[[Bench], list[Row]]] = {
    "simam": bench_simam,
    "loading": bench_loading,
    "train_step": bench_train_step,
    "cifar_epoch": bench_cifar_epoch,
    "simam_model": bench_simam_model,
    "startup": bench_startup,
    "devices": bench_devices,
    "timm_epoch": bench_timm_epoch,
    "resnet50_compile": bench_resnet50_compile,
    "gpu_decode": bench_gpu_decode,
}


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1_5_15min"] = [round(v, 2) for v in os.getloadavg()]
    return info


def format_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def format_table(rows: list[Row]) -> str:
    headers = ["section", "name", "value", "unit", "ratio", "goal", "status", "note"]
    cells = []
    for r in rows:
        ratio = f"{r['ratio']:.3f}x {r.get('ratio_to', '')}".strip() if isinstance(r.get("ratio"), float) else ""
        cells.append([r["section"], r["name"], format_value(r["value"]), r["unit"], ratio,
                      r.get("goal", ""), r.get("status", ""), r.get("note", "")])
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda c: "| " + " | ".join(s.ljust(w) for s, w in zip(c, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


class UsageError(Exception):
    """A wrong option: one line on stderr, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes and fewer runs (CI)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--only", default="", help=f"comma-separated sections; valid: {', '.join(SECTIONS)}")
    p.add_argument("--json", type=Path, help="write rows and machine info to this file")
    p.add_argument("--repeats", type=int, help="timed runs per candidate (default 7, --quick 5)")
    p.add_argument("--warmup", type=int, help="untimed runs per candidate first (default 2)")
    args = p.parse_args(argv)
    names = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here")
    args.sections = names
    args.repeats = args.repeats or (5 if args.quick else 7)
    args.warmup = 2 if args.warmup is None else args.warmup
    return args


BUSY_OTHER_PER_CPU = 0.25  # other processes using more than this share of the CPUs: the machine counts as busy


def load_average() -> Optional[float]:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def cpu_snapshot() -> Optional[tuple[float, float, float]]:
    """(wall seconds, busy CPU-seconds of the whole machine from /proc/stat, CPU-seconds of this
    process and of its finished children); None where /proc/stat is not there."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 8:
        return None
    v = [int(x) for x in fields[1:9]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)  # user nice system irq softirq steal
    t = os.times()
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + t.children_system


def other_cpus(before: Optional[tuple[float, float, float]], after: Optional[tuple[float, float, float]]) -> Optional[float]:
    """CPUs that processes other than this benchmark (and the programs it ran) kept busy between two
    snapshots, on average: the section's own work is not counted, unlike in the load average."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return max(0.0, ((after[1] - before[1]) - (after[2] - before[2])) / (after[0] - before[0]))


def label_busy(rows: list[Row], other: Optional[float], cpus: int) -> list[Row]:
    """A goal missed while other processes kept more than BUSY_OTHER_PER_CPU of the CPUs busy during
    the section is labelled a measurement, not a failure."""
    if other is None or other <= BUSY_OTHER_PER_CPU * cpus:
        return rows
    note = f"machine busy (other processes used {other:.1f} of {cpus} CPUs during the section): a measurement, not a verdict"
    for r in rows:
        if r.get("status") == "FAIL":
            r["status"] = "MEASURED (busy)"
            r["note"] = "; ".join(filter(None, [r.get("note", ""), note]))
    return rows


def training_settings(device: torch.device) -> None:
    """On CUDA, what the trainer sets by default (engine/build.py): cuDNN autotuning, TF32."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def run_sections(bench: Bench, names: list[str]) -> list[Row]:
    """Every section's rows; a section that raises gives one ERROR row and the others still run."""
    rows: list[Row] = []
    cpus = os.cpu_count() or 1
    for name in names:
        before = cpu_snapshot()
        try:
            section_rows = SECTIONS[name](bench)
        except Exception as e:  # noqa: BLE001 - reported as a row, the run goes on
            section_rows = [{"section": name, "name": "section failed", "value": "error", "unit": "", "status": "ERROR",
                             "note": f"{type(e).__name__}: {str(e).strip()[-600:]}"}]
        other = other_cpus(before, cpu_snapshot())
        for r in section_rows:
            if other is not None and r.get("goal"):
                r["other_cpus"] = round(other, 2)
        rows += label_busy(section_rows, other, cpus)
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(f"benchmark.py: error: {e}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    training_settings(device)
    bench = Bench(device=device, quick=args.quick, repeats=args.repeats, warmup=args.warmup,
                  log=lambda s: print(s, file=sys.stderr, flush=True))
    machine = machine_info(device)
    rows = run_sections(bench, args.sections)
    if hasattr(os, "getloadavg"):
        machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print(format_table(rows))
    print(f"\n{machine['device_name']}, {machine['cpu_count']} CPUs, {machine['torch_threads']} torch threads, "
          f"torch {machine['torch']}, load average {machine.get('load_average_1_5_15min')} -> {machine.get('load_average_at_end')}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"command": "python scripts/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv),
                   "machine": machine, "quick": args.quick, "repeats": args.repeats, "warmup": args.warmup,
                   "sections": {s: [r for r in rows if r["section"] == s] for s in args.sections}, "extra": bench.extra}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 1 if any(r.get("status") == "ERROR" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
