"""Parameter and MAC counts against the published numbers in shared/paper/.

- params.csv: every architecture x attention count of the SimAM code, to 4 decimals (millions);
- imagenet.csv: params to 2 decimals; cifar.csv: the AlexNet count 7,524,042;
- thop MACs of ResNet-50 (4.134G with the current thop) and SimAM's extra elementwise work;
- (scripts/model_table.py, which prints both side by side, is tested in tests/test_model_table.py.)
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import networks
from scripts.common import default_paper_dir
from networks.registry import SIMAM_CIFAR_NAMES
from networks.profile import profile_model

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]


def paper_dir() -> Path | None:
    """shared/paper beside the repository, or $SIMAM_PAPER_DIR (as the scripts find it)."""
    paper = default_paper_dir()
    return paper if (paper / "params.csv").is_file() else None


PAPER = paper_dir()
needs_shared = pytest.mark.skipif(
    PAPER is None, reason="shared/paper/params.csv not found beside the repository; set SIMAM_PAPER_DIR=/path/to/shared/paper"
)


def read_csv(name: str) -> list[dict[str, str]]:
    """Rows of shared/paper/<name>, without its '#' comment lines; [] when shared/ is missing."""
    if PAPER is None:
        return []
    with open(PAPER / name, newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


# csv arch name -> registry name (the imagenet names are the registry's)
CIFAR_ARCHS = SIMAM_CIFAR_NAMES
# csv block column -> the `block` option of the CIFAR (pre)ResNets; other blocks have no option
CIFAR_BLOCKS = {"basic": "basic", "prebasic": "basic", "bottleneck": "bottleneck"}
# params.csv column -> (attention, attention_kwargs)
COLUMNS = {
    "none": ("none", {}),
    "se_r16": ("se", {"reduction": 16}),
    "se_r4": ("se", {"reduction": 4}),
    "cbam_r16": ("cbam", {"reduction": 16}),
    "cbam_r4": ("cbam", {"reduction": 4}),
    "simam": ("simam", {}),
}
NUM_CLASSES = {"imagenet": 1000, "cifar100": 100, "cifar10": 10}


def registry_name(dataset: str, arch: str) -> str:
    return arch if dataset == "imagenet" or arch == "alexnet" else CIFAR_ARCHS[arch]


def count_params(name: str, num_classes: int, attention: str, attention_kwargs: dict, **kwargs) -> int:
    """Parameters of the registry model, built on the meta device (shapes only: fast)."""
    with torch.device("meta"):
        model = networks.create_model(
            name, num_classes=num_classes, attention=attention, attention_kwargs=attention_kwargs, **kwargs
        )
    return sum(p.numel() for p in model.parameters())


def params_csv_cases() -> list:
    cases = []
    for row in read_csv("params.csv"):
        for column, (attention, kwargs) in COLUMNS.items():
            if row.get(column):
                cases.append(pytest.param(row, column, id=f"{row['dataset']}-{row['arch']}-{column}"))
    return cases


@needs_shared
def test_params_csv_is_fully_covered():
    rows = read_csv("params.csv")
    assert len(rows) == 13
    header = set(rows[0])
    assert set(COLUMNS) <= header and header - set(COLUMNS) == {"dataset", "arch", "block"}
    for row in rows:
        assert row["dataset"] in NUM_CLASSES
        assert row["dataset"] == "imagenet" or row["arch"] in CIFAR_ARCHS


@needs_shared
@pytest.mark.parametrize("row, column", params_csv_cases())
def test_params_csv(row: dict, column: str):
    name = registry_name(row["dataset"], row["arch"])
    kwargs = {}
    if name.startswith("cifar_") and "resnet" in name:
        kwargs["block"] = CIFAR_BLOCKS[row["block"]]
    attention, attention_kwargs = COLUMNS[column]
    n = count_params(name, NUM_CLASSES[row["dataset"]], attention, attention_kwargs, **kwargs)
    assert f"{n / 1e6:.4f}" == row[column], f"{name} {column}: {n:,} parameters, published {row[column]}M"


@pytest.mark.parametrize("attention", ["none", "simam"])
def test_alexnet_params(attention: str):
    assert count_params("alexnet", 10, attention, {"e_lambda": 1e-5} if attention == "simam" else {}) == 7_524_042


@needs_shared
@pytest.mark.parametrize(
    "row", [pytest.param(r, id=f"{r['arch']}-{r['attention']}") for r in read_csv("imagenet.csv")]
)
def test_imagenet_csv_params(row: dict):
    kwargs = {"e_lambda": float(row["attention_param"])} if row["attention"] == "simam" else {}
    n = count_params(row["arch"], 1000, row["attention"], kwargs)
    assert f"{n / 1e6:.2f}" == row["params_M"]


@needs_shared
@pytest.mark.parametrize("row", [pytest.param(r, id=f"{r['dataset']}-{r['arch']}-{r['attention']}") for r in read_csv("cifar.csv")])
def test_cifar_csv_params(row: dict):
    name = registry_name(row["dataset"], row["arch"])
    kwargs = {"e_lambda": float(row["attention_param"])} if row["attention"] == "simam" else {}
    n = count_params(name, NUM_CLASSES[row["dataset"]], row["attention"], kwargs)
    decimals = len(row["params_M"].split(".")[1])
    assert f"{n / 1e6:.{decimals}f}" == row["params_M"]


# --------------------------------------------------------------------------------------------
# MACs
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet50_profiles() -> dict[str, dict[str, int]]:
    """profile_model of ResNet-50 without attention and with SimAM at 1x3x224x224."""
    torch.manual_seed(0)
    return {
        attention: profile_model(networks.create_model("resnet50", num_classes=1000, attention=attention), (1, 3, 224, 224))
        for attention in ("none", "simam")
    }


def test_resnet50_thop_macs(resnet50_profiles):
    macs = resnet50_profiles["none"]["macs_thop"]
    assert macs == pytest.approx(4.134e9, rel=0.01)
    assert resnet50_profiles["none"]["macs_attention"] == 0
    assert resnet50_profiles["none"]["macs"] == macs
    assert resnet50_profiles["none"]["params"] == 25_557_032


def test_resnet50_simam_macs(resnet50_profiles):
    plain, simam = resnet50_profiles["none"], resnet50_profiles["simam"]
    assert simam["macs_thop"] == plain["macs_thop"]  # thop sees SimAM as zero, as published
    assert simam["macs_attention"] > 0
    assert simam["macs"] == simam["macs_thop"] + simam["macs_attention"]
    # SimAM sits on each bottleneck's 3x3 output (width channels): 8 ops per element there
    widths = {1: 64, 2: 128, 3: 256, 4: 512}
    blocks = {1: 3, 2: 4, 3: 6, 4: 3}
    sides = {1: 56, 2: 28, 3: 14, 4: 7}
    elements = sum(blocks[i] * widths[i] * sides[i] ** 2 for i in blocks)
    assert simam["macs_attention"] == 8 * elements
    assert simam["params"] == plain["params"]


# the table counts on the meta device: the same numbers as a CPU pass
@pytest.mark.parametrize("attention", networks.list_attentions())
@pytest.mark.parametrize("name, size", [("resnet18", 64), ("mobilenet_v2", 64), ("alexnet", 128), ("cifar_resnet20", 32), ("cifar_wrn16_8", 16)])
def test_meta_device_counts_equal_cpu(name: str, size: int, attention: str):
    num_classes = networks.model_info(name).num_classes
    with torch.device("meta"):
        meta = networks.create_model(name, num_classes=num_classes, attention=attention)
    cpu = networks.create_model(name, num_classes=num_classes, attention=attention)
    assert profile_model(meta, (1, 3, size, size)) == profile_model(cpu, (1, 3, size, size))
