"""scripts/benchmark.py: the quick SimAM run end to end, and the report's rules (busy machines,
failing sections, GPU-only and missing-tool rows) on rows made up for the purpose."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers.cli import ROOT
from scripts import benchmark


@pytest.mark.slow
def test_quick_simam_run(tmp_path):
    """`--quick --only simam` runs, prints each goal with its ratio and status, and writes the JSON."""
    out = tmp_path / "simam.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("SIMAM_IMPL", None)
    proc = subprocess.run([sys.executable, "scripts/benchmark.py", "--quick", "--only", "simam", "--repeats", "2",
                           "--warmup", "1", "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in proc.stdout.splitlines() if line.startswith("| simam")]
    goals = [" | ".join(c) for c in cells if c[1].startswith("goal")]
    assert any("goal CPU 8x64x56x56" in g and "<= 0.15x original" in g for g in goals), proc.stdout
    assert all(any(s in g for s in ("PASS", "FAIL", "MEASURED (busy)", "n/a")) for g in goals)
    payload = json.loads(out.read_text())
    rows = payload["sections"]["simam"]
    names = [r["name"] for r in rows]
    assert "first compiled fwd+bwd in a new process, cache warm" in names
    assert sum(n.startswith("goal CPU") for n in names) == len(benchmark.simam_shapes(True, False))
    assert payload["extra"]["simam"]["compile_failed"] is None
    assert "load_average_at_end" in payload["machine"]


def fail_row(section: str = "s") -> dict:
    return {"section": section, "name": "goal", "value": 2.0, "unit": "x", "ratio": 2.0, "ratio_to": "x",
            "goal": "<= 1x x", "status": "FAIL", "note": ""}


def test_a_missed_goal_on_a_busy_machine_is_a_measurement():
    busy = benchmark.label_busy([fail_row(), {**fail_row(), "status": "PASS"}], 1.2, cpus=2)
    assert [r["status"] for r in busy] == ["MEASURED (busy)", "PASS"]
    assert "other processes used 1.2 of 2 CPUs" in busy[0]["note"]
    assert benchmark.label_busy([fail_row()], 0.4, cpus=2)[0]["status"] == "FAIL"
    assert benchmark.label_busy([fail_row()], None, cpus=2)[0]["status"] == "FAIL"


def test_the_sections_own_work_does_not_make_the_machine_busy():
    """Only other processes' CPU time counts as busy: the CPU time of the programs a section runs
    (here a child process spinning for a second) is the benchmark's own."""
    before = benchmark.cpu_snapshot()
    if before is None:
        pytest.skip("no /proc/stat here")
    code = "import time\nt = time.time()\nwhile time.time() - t < 1.0: pass"
    subprocess.run([sys.executable, "-c", code], check=True)
    after = benchmark.cpu_snapshot()
    assert after[2] - before[2] >= 0.9  # the child's second of CPU is counted as the benchmark's own
    wall = after[0] - before[0]
    other = benchmark.other_cpus(before, after)
    assert other == pytest.approx(max(0.0, (after[1] - before[1] - (after[2] - before[2])) / wall))
    assert benchmark.other_cpus(None, before) is None


def test_a_failing_section_is_an_error_row_and_the_others_run(monkeypatch, capsys):
    def broken(b):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(benchmark.SECTIONS, "broken", broken)
    monkeypatch.setitem(benchmark.SECTIONS, "fine", lambda b: [fail_row("fine")])
    assert benchmark.main(["--only", "broken,fine"]) == 1
    out = capsys.readouterr().out
    assert "ERROR" in out and "illegal memory access" in out and "| fine" in out


def test_gpu_sections_say_they_are_skipped_on_cpu():
    b = benchmark.Bench(device=torch.device("cpu"), quick=True, repeats=1, warmup=0, log=lambda s: None)
    for name in ("resnet50_compile", "gpu_decode"):
        (row,) = benchmark.SECTIONS[name](b)
        assert row["value"] == "skipped" and "GPU only" in row["note"]


def test_timm_row_names_the_command_when_train_py_is_missing(monkeypatch):
    monkeypatch.delenv(benchmark.TIMM_TRAIN_ENV, raising=False)
    b = benchmark.Bench(device=torch.device("cpu"), quick=True, repeats=1, warmup=0, log=lambda s: None)
    (row,) = benchmark.bench_timm_epoch(b)
    assert row["value"] == "skipped"
    for flag in ("--amp-dtype bfloat16", "--channels-last", "--workers 2", "--model resnet18", "--device cpu"):
        assert flag in row["note"]


def test_timm_rate_is_read_from_its_last_progress_line():
    line = "Train: 0 [  15/16 (100%)]  Loss: 1.386 (1.39)  Time: 0.512s,   62.50/s  (0.640s,   50.00/s)  LR: 1.000e-01"
    assert benchmark.TIMM_RATE.findall(line) == ["50.00"]


def test_wrong_option_is_one_line_and_exit_2(capsys):
    assert benchmark.main(["--only", "simam,nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown section nope" in err[0]


def test_cuda_timing_uses_events_around_many_calls(monkeypatch):
    """On CUDA one timing is CUDA events around `inner` calls queued back to back (stand-in events)."""
    calls: list[str] = []

    class Event:
        def __init__(self, enable_timing: bool = False) -> None:
            assert enable_timing

        def record(self) -> None:
            calls.append("record")

        def synchronize(self) -> None:
            calls.append("sync")

        def elapsed_time(self, end) -> float:
            return 40.0  # ms

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("device sync"))
    b = benchmark.Bench(device=torch.device("cuda"), quick=True, repeats=1, warmup=0, log=lambda s: None, inner=20)
    assert b.time_once(lambda: calls.append("call")) == pytest.approx(0.002)
    assert calls == ["device sync", "record"] + ["call"] * 20 + ["record", "sync"]
