"""scripts/model_table.py: our parameter and MAC counts beside the published ones of shared/paper/."""
from __future__ import annotations

import csv

import pytest
import torch

import networks
from helpers.cli import run_cli
from scripts import model_table
from scripts.common import find_paper_dir

pytestmark = pytest.mark.usefixtures("single_thread")

PAPER = find_paper_dir()
needs_shared = pytest.mark.skipif(PAPER is None or not (PAPER / "params.csv").is_file(),
                                  reason="shared/paper/params.csv not found beside the repository; set SIMAM_PAPER_DIR")


def count_params(name: str, attention: str, attention_kwargs: dict) -> int:
    with torch.device("meta"):
        model = networks.create_model(name, num_classes=networks.model_info(name).num_classes, attention=attention,
                                      attention_kwargs=attention_kwargs)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.slow
@needs_shared
def test_cifar_resnet20_beside_the_published_counts():
    proc = run_cli(["scripts.model_table", "--dataset", "cifar", "--archs", "cifar_resnet20", "--attentions", "none,simam,se"], script="-m")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "0.2783" in out  # published, params.csv
    assert "0.2803" in out  # published SE (r=16)
    for attention in ("none", "simam", "se"):
        n = count_params("cifar_resnet20", attention, {})
        line = next(l for l in out.splitlines() if "cifar_resnet20" in l and f" {attention} " in f" {l} ")
        assert f"{n / 1e6:.4f}" in line
    assert "thop" in out.lower()


@needs_shared
def test_published_rows_of_the_same_block(tmp_path, capsys):
    """cifar_resnet164 builds bottleneck blocks, as params.csv's resnet164 row; ImageNet FLOPs come from imagenet.csv."""
    out_csv = tmp_path / "t.csv"
    assert model_table.main(["--dataset", "cifar", "--archs", "cifar_resnet164", "--attentions", "none,cbam_r4", "--csv", str(out_csv)]) == 0
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["paper_params_M"], r["d_params_M"]) for r in rows] == [("1.7273", "+0.0000"), ("2.5169", "+0.0000")]
    assert model_table.main(["--dataset", "imagenet", "--archs", "resnet50", "--attentions", "simam,se", "--csv", str(out_csv)]) == 0
    with open(out_csv, newline="") as f:
        simam, se = csv.DictReader(f)
    assert (simam["paper_params_M"], simam["paper_flops_G"], simam["d_macs_G"]) == ("25.5570", "4.11", "+0.02")
    assert (se["paper_params_M"], se["paper_flops_G"]) == ("28.0720", "-")


def test_csv_and_markdown(tmp_path, capsys):
    out_csv = tmp_path / "table.csv"
    code = model_table.main(["--dataset", "cifar", "--archs", "cifar_resnet20", "--attentions", "simam,se_r4", "--csv", str(out_csv), "--markdown"])
    assert code == 0
    assert capsys.readouterr().out.lstrip().startswith("| arch")
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["arch"], r["attention"]) for r in rows] == [("cifar_resnet20", "simam"), ("cifar_resnet20", "se_r4")]
    assert rows[0]["params_M"] == f"{count_params('cifar_resnet20', 'simam', {}) / 1e6:.4f}"
    assert rows[1]["params_M"] == f"{count_params('cifar_resnet20', 'se', {'reduction': 4}) / 1e6:.4f}"
    if PAPER is not None:
        assert rows[1]["paper_params_M"] == "0.2864" and rows[1]["d_params_M"] == "+0.0000"
    assert int(rows[0]["macs"]) > int(rows[0]["macs_thop"])  # SimAM's elementwise work


@pytest.mark.slow
def test_unknown_name_in_a_subprocess():
    """Exit code 2 and one line on stderr, no traceback, from a real command line."""
    proc = run_cli(["scripts.model_table", "--dataset", "cifar", "--archs", "cifar_resnet21"], script="-m")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "cifar_resnet21" in lines[0] and "cifar_resnet20" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize(
    "args, wrong",
    [
        (["--dataset", "cifar", "--archs", "cifar_resnet20", "--attentions", "simam,sea"], "sea"),
        (["--dataset", "cifar", "--archs", "resnet50"], "resnet50"),
        (["--dataset", "cifar", "--archs", "cifar_resnet20", "--attentions", "simam_r4"], "reduction"),
        (["--dataset", "svhn"], "svhn"),
        (["--dataset", "cifar", "--bogus"], "--bogus"),
    ],
)
def test_unknown_names(args: list, wrong: str, capsys):
    assert model_table.main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and wrong in lines[0], captured.err
    assert captured.out == ""
