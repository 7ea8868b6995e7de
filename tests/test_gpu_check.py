"""scripts/gpu_check.sh and its parts on a machine without a GPU: the dry run lists every step (the
CUDA-only tests it finds, the GPU checks, the benchmark sections), a run without a GPU refuses in
one line and writes nothing, and the pytest plugin selects the tests that a CPU machine skips."""
from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from benchmarks import cuda_only, gpu_checks
from helpers.cli import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_dry_run_lists_what_it_would_run():
    proc = run("--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "nothing is run" in out
    assert "test: tests/test_data_path.py::test_cuda_prefetcher_matches_cpu" in out  # found by its skipif
    for check in gpu_checks.CHECKS:
        assert f"check: {check}:" in out
    for section in ("simam", "simam_model", "resnet50_compile", "cifar_epoch", "gpu_decode"):
        assert f"--device cuda --only {section} " in out
    assert "gpu_check.json" in out and "stage-wheels.sh" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU refusal needs a machine without CUDA")
def test_without_a_gpu_it_refuses_in_one_line_and_writes_nothing(tmp_path):
    proc = run(str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: error: no CUDA device"), proc.stderr
    assert not (tmp_path / "out" / "gpu_check.json").exists()


@pytest.mark.parametrize("args", [(), ("--dry", ), ("a", "b")])
def test_usage_errors(args):
    proc = run(*args, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: scripts/gpu_check.sh")


def item(*marks) -> SimpleNamespace:
    """A stand-in for a pytest item with the given marks (name, args, kwargs)."""
    ms = [SimpleNamespace(name=n, args=a, kwargs=k) for n, a, k in marks]
    return SimpleNamespace(get_closest_marker=lambda name: next((m for m in ms if m.name == name), None),
                           iter_markers=lambda name: (m for m in ms if m.name == name))


def test_plugin_keeps_only_tests_that_need_a_gpu():
    assert cuda_only.needs_gpu(item(("skipif", (True,), {"reason": "needs a CUDA device"})))
    assert cuda_only.needs_gpu(item(("skipif", ("not torch.cuda.is_available()",), {})))
    assert cuda_only.needs_gpu(item(("cuda", (), {})))
    assert not cuda_only.needs_gpu(item(("skipif", (True,), {"reason": "sigwaitinfo is Linux-only"})))
    assert not cuda_only.needs_gpu(item(("slow", (), {})))


def test_checks_list_without_a_gpu(capsys):
    assert gpu_checks.main(["--list"]) == 0
    listed = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(gpu_checks.CHECKS)
    assert gpu_checks.main(["--only", "nope"]) == 2
