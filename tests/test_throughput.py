"""scripts/throughput.py: inference images/s of checkpoints or untrained architectures."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from helpers.sweeps import checkpoint, one_error_line, tiny_sweep
from scripts import throughput

SHORT = ["--warmup", "1", "--repeats", "2", "--threads", "1"]


@pytest.fixture()
def threads():
    """throughput.py sets torch's thread count (--threads): restored afterwards."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_untrained_architecture_as_json(threads, capsys):
    assert throughput.main(["--arch", "cifar_resnet20", "--attention", "se", "--batch-size", "4", *SHORT,
                            "--json", "--amp", "bf16", "--channels-last"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images_per_s"] > 0 and result["amp"] == "bf16" and result["channels_last"] and result["image_size"] == 32
    assert result["batches"] == 2 and result["images_per_s"] == pytest.approx(4 / result["median_batch_s"])
    assert result["model"] == "cifar_resnet20 + se (untrained)" and result["torch"] == torch.__version__


def test_errors_are_one_line(tmp_path, capsys):
    cases = [
        (["--arch", "resnet51"], "unknown architecture 'resnet51'"),
        ([str(tmp_path / "x.pth"), "--arch", "resnet18"], "not both"),
        ([], "not both"),
        ([str(tmp_path / "missing.pth")], "checkpoint not found"),
        (["--arch", "resnet18", "--batch-size", "0"], "--batch-size"),
        (["--arch", "resnet18", "--amp", "fp16", "--device", "cpu"], "fp16"),
        (["--arch", "resnet18", "--threads", "0"], "--threads"),
    ]
    for argv, needle in cases:
        assert throughput.main(argv) == 2, argv
        assert needle in one_error_line(capsys), (argv, needle)


@pytest.mark.slow
def test_checkpoint(tmp_path_factory, threads, capsys):
    sweep: Path = tiny_sweep(tmp_path_factory)
    assert throughput.main([str(checkpoint(sweep, "none")), "--batch-size", "8", *SHORT]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert float(re.search(r": ([0-9.]+) images/s", line).group(1)) > 0
    assert "cifar_resnet20 + none" in line and "32x32" in line and f"torch {torch.__version__}" in line and "cpu" in line
