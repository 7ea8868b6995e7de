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
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from networks.attention import simam_fused  # noqa: E402
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

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time_once(self, fn: Callable[[], Any]) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
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


def bench_simam(b: Bench) -> list[Row]:
    sec = "simam"
    shape = (8, 64, 56, 56) if b.quick else (32, 256, 56, 56)
    e_lambda = 1e-4
    torch.manual_seed(0)
    x = torch.randn(*shape, device=b.device).requires_grad_()
    grad = torch.randn(*shape, device=b.device)
    size = x.numel() * x.element_size()
    shape_s = "x".join(map(str, shape))

    impls: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "original (eager)": lambda t: simam_original(t, e_lambda),
        "reference (plain formula, eager)": lambda t: simam_reference(t, e_lambda),
        "ours: function (eager kernels)": lambda t: simam(t, e_lambda, "function"),
    }
    compile_s: Optional[float] = None
    if simam_fused.compile_available():
        t0 = time.perf_counter()
        simam(x, e_lambda, "compiled").backward(grad)  # compiles forward and backward kernels
        b.sync()
        compile_s = time.perf_counter() - t0
        x.grad = None
        if simam_fused.compile_available():
            impls["ours: compiled (torch.compile)"] = lambda t: simam(t, e_lambda, "compiled")
    auto = simam_fused.resolve_impl("auto", x)
    b.log(f"simam: {shape_s} fp32 on {b.device}; 'auto' runs '{auto}'")

    def fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            fn(x).backward(grad)
            x.grad = None
        return run

    bandwidth, bw_bytes, bw_times = streaming_bandwidth(b, size)
    floor_s = 8 * size / bandwidth
    times = b.compare({name: fwd_bwd(fn) for name, fn in impls.items()})
    med = {name: statistics.median(t) for name, t in times.items()}
    original = med["original (eager)"]

    rows: list[Row] = [
        {"section": sec, "name": "streaming bandwidth (torch.add out=)", "value": bandwidth / 1e9, "unit": "GB/s",
         "note": f"3 x {bw_bytes / 2**20:.0f} MiB per add; {spread_note(bw_times)}"},
        {"section": sec, "name": "memory-bound floor fwd+bwd (8 transfers)", "value": 1e3 * floor_s, "unit": "ms",
         "note": f"8 x {size / 2**20:.0f} MiB at the bandwidth above"},
    ]
    for name, t in times.items():
        ours = name.startswith("ours")
        rows.append({"section": sec, "name": f"fwd+bwd {shape_s} fp32: {name}", "value": median_ms(t), "unit": "ms",
                     "ratio": med[name] / original, "ratio_to": "original", "note": f"{med[name] / floor_s:.2f}x floor; {spread_note(t)}"
                     + ("; 'auto' picks this" if ours and name.split(": ")[1].startswith(auto) else "")})
    if compile_s is not None:
        rows.append({"section": sec, "name": "compiled: first call (compiles fwd+bwd)", "value": compile_s, "unit": "s",
                     "note": "once per process, dtype and layout (Inductor's on-disk cache makes later processes faster)"})
    ours_names = [n for n in med if n.startswith("ours")]
    best = min(ours_names, key=med.__getitem__)
    on_gpu = b.device.type == "cuda"
    rows.append(goal_row(sec, f"goal CPU: ours ({best.split(': ')[1]}) / original", med[best] / original, 0.2,
                         "original", applies=not on_gpu))
    rows.append(goal_row(sec, f"goal GPU: ours ({best.split(': ')[1]}) / floor", med[best] / floor_s, 1.5,
                         "floor", applies=on_gpu))

    # bytes saved for backward per SimAM call
    saved = {
        "original (eager)": simam_fused.saved_tensor_bytes(simam_original, x, e_lambda),
        "reference (plain formula, eager)": simam_fused.saved_tensor_bytes(simam_reference, x, e_lambda),
        "ours: function (eager kernels)": simam_fused.saved_tensor_bytes(simam, x, e_lambda, "function"),
    }
    if "ours: compiled (torch.compile)" in impls:
        saved["ours: compiled (torch.compile)"] = simam_fused.saved_tensor_bytes(simam, x, e_lambda, "compiled")
    for name, nbytes in saved.items():
        rows.append({"section": sec, "name": f"saved for backward: {name}", "value": nbytes / 2**20, "unit": "MiB",
                     "ratio": nbytes / size, "ratio_to": "input"})
    worst = max((n for n in saved if n.startswith("ours")), key=saved.__getitem__)
    rows.append(goal_row(sec, "goal: saved bytes (ours, max) / input", saved[worst] / size, 1.1, "input", applies=True))
    b.extra["simam"] = {"shape": list(shape), "dtype": "float32", "auto_impl": auto, "compile_available": simam_fused.compile_available(),
                        "compile_failed": simam_fused.compile_failure()}
    return rows


# ----------------------------------------------------------------------------- sections: data path, trainer
# loading, train_step, cifar_epoch, simam_model: engine/data.py, engine/prefetch.py and engine/loops.py
# against the original SimAM code's pipeline and loop. Heavy sections cap the runs (_heavy).
def _heavy(b: Bench, repeats: int) -> Bench:
    """The same bench with at most `repeats` timed runs and one warm-up run (whole epochs/steps)."""
    from dataclasses import replace

    return replace(b, repeats=min(b.repeats, repeats), warmup=min(b.warmup, 1))


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
    from engine.prefetch import DevicePrefetcher

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
    from engine.prefetch import DevicePrefetcher

    sec, count, batch = "cifar_epoch", 128 if b.quick else 1024, 128
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


def bench_simam_model(b: Bench) -> list[Row]:
    """(d) Training step time (and peak memory on CUDA) of SimAM-ResNets against plain ResNets, through
    our loop at the same settings (bf16 autocast, channels_last)."""
    sec = "simam_model"
    batch, size, steps = (8, 64, 2) if b.quick else (32, 112, 2)
    archs = ["resnet18"] if b.quick else ["resnet18", "resnet50"]
    rows: list[Row] = []
    setting = {"ours": (torch.bfloat16, True, True)}
    for arch in archs:
        b.log(f"simam_model: {arch}, batch {batch} at {size}x{size}, {steps} steps per run")
        candidates = {attention: _train_candidates(b, arch, batch, size, steps, 1000, setting, attention=attention)["ours"]
                      for attention in ("none", "simam")}
        times = _heavy(b, 3 if b.quick else 5).compare(candidates)
        med = {name: statistics.median(t) / steps for name, t in times.items()}
        for attention, t in times.items():
            rows.append({"section": sec, "name": f"{arch} + {attention}: step, batch {batch} at {size}px, bf16, channels_last",
                         "value": 1e3 * med[attention], "unit": "ms/step", "note": f"runs of {steps} steps: {spread_note(t)}"})
        rows.append({"section": sec, "name": f"{arch}: simam / none step time", "value": med["simam"] / med["none"], "unit": "x",
                     "ratio": med["simam"] / med["none"], "ratio_to": "none"})
        if b.device.type == "cuda":
            peak = {}
            for attention, run in candidates.items():
                torch.cuda.synchronize(b.device)
                torch.cuda.reset_peak_memory_stats(b.device)
                run()
                torch.cuda.synchronize(b.device)
                peak[attention] = torch.cuda.max_memory_allocated(b.device)
            for attention, nbytes in peak.items():
                rows.append({"section": sec, "name": f"{arch} + {attention}: peak memory of a run", "value": nbytes / 2**20, "unit": "MiB"})
            rows.append({"section": sec, "name": f"{arch}: simam / none peak memory", "value": peak["simam"] / peak["none"], "unit": "x",
                         "ratio": peak["simam"] / peak["none"], "ratio_to": "none"})
        else:
            rows.append({"section": sec, "name": f"{arch}: peak memory", "value": "skipped", "unit": "",
                         "note": "torch.cuda.max_memory_allocated: CUDA only"})
    return rows


# ----------------------------------------------------------------------------- registry, report
SECTIONS: dict[str, Callable[[Bench], list[Row]]] = {
    "simam": bench_simam,
    "loading": bench_loading,
    "train_step": bench_train_step,
    "cifar_epoch": bench_cifar_epoch,
    "simam_model": bench_simam_model,
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


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(f"benchmark.py: error: {e}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    bench = Bench(device=device, quick=args.quick, repeats=args.repeats, warmup=args.warmup,
                  log=lambda s: print(s, file=sys.stderr, flush=True))
    machine = machine_info(device)
    rows: list[Row] = []
    for name in args.sections:
        rows += SECTIONS[name](bench)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
