"""The README's quickstart, run offline exactly as written: it must reach >= 95% val acc1."""
from __future__ import annotations

import re
import shlex
import time

import pytest

from helpers.cli import ROOT, check_ok, metrics, run_cli


def _quickstart_command() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    (cmd,) = re.findall(r"```bash\n(python main_cifar\.py [^\n]+)\n```", section)
    return shlex.split(cmd)


@pytest.mark.slow
def test_readme_quickstart_reaches_95(tmp_path):
    argv = _quickstart_command()
    assert argv[:2] == ["python", "main_cifar.py"] and "data=digits" in argv
    t0 = time.perf_counter()
    # as a user runs it: SimAM with its default (compiled) implementation
    check_ok(run_cli(argv[2:] + [f"hydra.run.dir={tmp_path / 'quick'}"], timeout=900, env={"SIMAM_IMPL": "auto"}))
    rows = metrics(tmp_path / "quick")
    best = max(r["val_acc1"] for r in rows)
    print(f"quickstart: best val acc1 {best:.2f} after {len(rows)} epochs in {time.perf_counter() - t0:.0f} s")
    assert best >= 95.0, rows
