"""Inference throughput (images/s) of checkpoints or untrained architectures.

    python scripts/throughput.py runs/simam/checkpoints/best.pth runs/none/checkpoints/best.pth --device cuda
    python scripts/throughput.py --arch resnet50 --attention simam --device cuda --amp bf16 --channels-last
    python scripts/throughput.py --arch alexnet --attention none --batch-size 128      # the AlexNet notebook: 986 vs 938 images/s

Each model runs in eval mode under torch.inference_mode on random input of its run's image size
(an architecture's usual size with --arch, or --image-size): `--warmup` batches first (cuDNN
autotuning, torch.compile of the fused SimAM, caches), then `--repeats` timed batches, each
synchronised on the GPU; the result is batch size / the median batch time. Printed with the
device, torch version and settings, one line per model (also as JSON with --json).
"""
from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from typing import Any, Optional

import torch

import networks
from scripts.common import UserError, load_checkpoint_model, make_parser, run_main

_AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def measure(model: torch.nn.Module, batch_size: int, image_size: int, device: torch.device, amp: Optional[torch.dtype],
            channels_last: bool, warmup: int, repeats: int) -> dict:
    """Median images/s over `repeats` timed forward passes after `warmup` untimed ones."""
    model = model.to(device).eval()
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    autocast = torch.autocast(device_type=device.type, dtype=amp) if amp is not None else torch.autocast(device.type, enabled=False)
    times = []
    with torch.inference_mode(), autocast:
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"images_per_s": batch_size / median, "median_batch_s": median, "batches": repeats}


def _models(args: Any) -> list[tuple[str, torch.nn.Module, int]]:
    """(label, model, image size) of each checkpoint, or of --arch."""
    if args.arch:
        try:
            info = networks.model_info(args.arch)
            model = networks.create_model(args.arch, num_classes=args.num_classes or info.num_classes, attention=args.attention)
        except ValueError as e:
            raise UserError(str(e).splitlines()[0]) from None
        return [(f"{args.arch} + {args.attention} (untrained)", model, args.image_size or info.input_size)]
    out = []
    for path in args.checkpoints:
        model, config, spec = load_checkpoint_model(path)
        size = args.image_size or int((config.get("data") or {}).get("image_size") or networks.model_info(spec["arch"]).input_size)
        out.append((f"{spec['arch']} + {spec['attention']} ({path})", model, size))
    return out


def _parse(argv: list[str]) -> Any:
    parser = make_parser("throughput.py", __doc__)
    parser.add_argument("checkpoints", nargs="*", metavar="CKPT", help="checkpoints of this project (or use --arch)")
    parser.add_argument("--arch", help="time an untrained registry architecture instead, e.g. resnet50, cifar_resnet20")
    parser.add_argument("--attention", default="none", help="attention type with --arch (default: none)")
    parser.add_argument("--num-classes", type=int, help="head size with --arch (default: the architecture's usual one)")
    parser.add_argument("--image-size", type=int, help="input size (default: the run's data.image_size, or the architecture's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=sorted(_AMP), default="none", help="autocast dtype (default: none, float32)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format for model and input")
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches first (default 10)")
    parser.add_argument("--repeats", type=int, default=30, help="timed batches (default 30)")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads; default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per model instead of text")
    args = parser.parse_args(argv)
    if bool(args.arch) == bool(args.checkpoints):
        raise UserError("give checkpoints or --arch NAME (not both)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA GPU is visible: use --device cpu")
    if args.amp == "fp16" and args.device == "cpu":
        raise UserError("--amp fp16 needs --device cuda (use bf16 on the CPU)")
    if min(args.batch_size, args.repeats) < 1 or args.warmup < 0:
        raise UserError("--batch-size and --repeats must be >= 1, --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be >= 1")
    return args


def _main(argv: list[str]) -> int:
    args = _parse(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    models = _models(args)
    device = torch.device(args.device)
    settings = f"batch {args.batch_size}, amp {args.amp}" + (", channels_last" if args.channels_last else "")
    for label, model, size in models:
        result = measure(model, args.batch_size, size, device, _AMP[args.amp], args.channels_last, args.warmup, args.repeats)
        if args.json:
            print(json.dumps({"model": label, **result, "image_size": size, "batch_size": args.batch_size, "device": device_name(device),
                              "torch": torch.__version__, "amp": args.amp, "channels_last": args.channels_last}))
        else:
            print(f"{label}: {result['images_per_s']:.1f} images/s ({size}x{size}, {settings}, median of {args.repeats} batches; "
                  f"{device_name(device)}, torch {torch.__version__})")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
