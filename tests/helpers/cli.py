"""Helpers for tests that run the real entry points in a subprocess, as a user would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import torch

ROOT = Path(__file__).resolve().parents[2]

# SimAM's eager autograd Function in the runs tests start: the compiled kernels (the default,
# tested in test_simam_fused.py and by the README quickstart test) cost seconds of compiling in
# every new process, and recompiling for a new shape may change the last bit of a result, which
# the bit-exact resume tests would see.
SUBPROCESS_ENV = {"SIMAM_IMPL": "function"}

# a fast run on synthetic CIFAR-shaped data: 4 steps of 32 images, 40 validation images
FAKE = ["data=fake", "data.num_train=128", "data.num_val=40", "data.batch_size=32", "data.eval_batch_size=20", "trainer.log_every=2"]


def run_cli(args: Sequence[str], script: str = "main_cifar.py", timeout: int = 600, env: dict | None = None,
            launcher: Sequence[str] | None = None) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS` from the repository root; returns the completed process (text output)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **SUBPROCESS_ENV, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    cmd = list(launcher or [sys.executable]) + [script, *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def check_ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def model_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2, one line on stderr starting with 'error:', no traceback; returns the line."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def write_jpeg_folder(root: Path, classes: int = 3, train_per_class: int = 4, val_per_class: int = 2, size: int = 40) -> Path:
    """A tiny ImageFolder dataset (`train/`, `val/`) of class-coloured JPEGs."""
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.zeros((size, size, 3), np.float32)
                base[..., c % 3] = 200
                img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.jpg", quality=90)
    return root
