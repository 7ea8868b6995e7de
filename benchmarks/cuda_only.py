"""pytest plugin used by scripts/gpu_check.sh: keeps only the tests that are skipped without a GPU
(a `skipif` whose reason or condition mentions CUDA or a GPU, or a `cuda`/`gpu` marker).

    python -m pytest -p benchmarks.cuda_only tests/...     (the repository root on PYTHONPATH)
"""
from __future__ import annotations

import re

NEEDS_GPU = re.compile(r"cuda|gpu", re.IGNORECASE)


def needs_gpu(item) -> bool:
    """True for a test that only runs on a CUDA device."""
    if item.get_closest_marker("cuda") or item.get_closest_marker("gpu"):
        return True
    for mark in item.iter_markers("skipif"):
        text = " ".join([str(mark.kwargs.get("reason", "")), *(str(a) for a in mark.args)])
        if NEEDS_GPU.search(text):
            return True
    return False


def pytest_collection_modifyitems(config, items) -> None:
    keep = [item for item in items if needs_gpu(item)]
    dropped = [item for item in items if not needs_gpu(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
