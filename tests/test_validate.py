"""scripts/validate.py: many checkpoints, each evaluated as the network it describes, into one table.

Fast tests build checkpoints in this project's format (networks.create_model + torch.save with
model_spec and config, as the trainer writes them) and in the original SimAM code's; the slow one
validates a real sweep and reproduces the val top-1 its runs recorded."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import networks
from helpers.cli import metrics
from engine.data import build_datasets
from helpers.sweeps import RUNS, one_error_line, tiny_sweep
from scripts import validate

pytestmark = pytest.mark.usefixtures("single_thread")

DATA = {"name": "fake", "root": None, "image_size": 32, "augment": "cifar", "num_classes": 10, "num_train": 16, "num_val": 24}
FAST = ["--workers", "0", "--batch-size", "10", "--device", "cpu"]


def _model(attention: str = "simam", seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = networks.create_model("cifar_resnet20", num_classes=10, attention=attention,
                                  attention_kwargs={"e_lambda": 1e-4} if attention == "simam" else {}, **kwargs)
    with torch.no_grad():  # BN statistics away from their defaults, so that a wrong load shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _save_ours(path: Path, model: torch.nn.Module, ema: torch.nn.Module | None = None, epoch: int = 3) -> Path:
    config = {"data": dict(DATA), "model": {"arch": "cifar_resnet20", "block": None, "kwargs": {}},
              "attention": {"name": model.model_spec["attention"], **model.model_spec["attention_kwargs"]}, "seed": 0}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "model_spec": model.model_spec, "config": config, "epoch": epoch,
                "ema": ema.state_dict() if ema is not None else None}, path)
    return path


def _accuracy(model: torch.nn.Module, data: dict = DATA, seed: int = 0) -> tuple[float, float]:
    """(top-1 in %, mean cross-entropy) of `model` over the validation set, computed here sample by sample."""
    _, val, _ = build_datasets(data["name"], data["root"], augment=data["augment"], image_size=data["image_size"],
                               num_classes=data["num_classes"], num_train=data["num_train"], num_val=data["num_val"], seed=seed)
    right, loss = 0, 0.0
    with torch.no_grad():
        for i in range(len(val)):
            logits = model(val[i][0][None])
            right += int(logits.argmax(1)) == val[i][1]
            loss += float(torch.nn.functional.cross_entropy(logits, torch.tensor([val[i][1]])))
    return 100.0 * right / len(val), loss / len(val)


def _check(row: dict, expected: tuple[float, float]) -> None:
    assert (float(row["acc1"]), float(row["loss"])) == pytest.approx(expected, rel=1e-5), row


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ckpts")
    simam, plain, ema = _model("simam", 0), _model("none", 1), _model("simam", 2)
    out = {
        "simam": _save_ours(root / "run_a" / "checkpoints" / "best.pth", simam, ema=ema),
        "plain": _save_ours(root / "run_b" / "checkpoints" / "last.pth", plain),
        "original": root / "foreign" / "simam_original.pth.tar",
        "truncated": root / "broken" / "last.pth",
        "acc": {"simam": _accuracy(simam), "plain": _accuracy(plain), "ema": _accuracy(ema)},
    }
    out["original"].parent.mkdir()
    torch.save({"state_dict": {f"module.{k}": v for k, v in simam.state_dict().items()}, "epoch": 7}, out["original"])
    out["truncated"].parent.mkdir()
    out["truncated"].write_bytes(out["simam"].read_bytes()[:1000])
    (root / "run_a" / "checkpoints" / ".last.pth.x1y2.tmp").write_bytes(b"half")  # the writer's temp file: not a checkpoint
    return out


def test_checkpoints_evaluate_as_the_network_they_describe(checkpoints, tmp_path, capsys):
    out = tmp_path / "table.csv"
    code = validate.main([str(checkpoints["simam"].parents[2]), str(checkpoints["plain"]), str(checkpoints["truncated"]),
                          *FAST, "--out", str(out)])
    assert code == 1  # one bad file: its row says why, the others are evaluated
    root = checkpoints["simam"].parents[2]
    rows = {Path(r["checkpoint"]).relative_to(root).parts[0]: r for r in _rows(out)}
    assert set(rows) == {"run_a", "run_b", "broken", "foreign"}
    a, b = rows["run_a"], rows["run_b"]
    assert (a["arch"], a["attention"], a["data"], a["epoch"], a["weights"]) == ("cifar_resnet20", "simam (e_lambda=0.0001)", "fake", "3", "model")
    _check(a, checkpoints["acc"]["simam"])
    assert a["num_samples"] == "24" and a["error"] == ""
    _check(b, checkpoints["acc"]["plain"])
    assert b["attention"] == "none"
    assert int(a["params"]) == sum(p.numel() for p in _model().parameters())
    assert 0 <= float(a["acc5"]) <= 100 and float(a["acc5"]) >= float(a["acc1"]) and float(a["loss"]) > 0
    assert "corrupt or truncated" in rows["broken"]["error"] and rows["broken"]["acc1"] == ""
    assert "no model_spec" in rows["foreign"]["error"] and "--arch" in rows["foreign"]["error"]  # found below the folder given
    md = out.with_suffix(".md").read_text()
    assert md.startswith("| checkpoint | epoch | weights | arch | attention | data | acc1 | acc5 | loss | num_samples | params | error |")
    assert f"| {float(a['acc1']):.3f} |" in md and md == capsys.readouterr().out
    assert checkpoints["acc"]["simam"][1] != pytest.approx(checkpoints["acc"]["plain"][1], rel=1e-3)  # the networks differ


def test_foreign_checkpoint_with_arch_and_attention(checkpoints, tmp_path, capsys):
    out = tmp_path / "t.csv"
    argv = [str(checkpoints["original"]), *FAST, "--out", str(out), "--data", "fake", "--arch", "cifar_resnet20"]
    assert validate.main([*argv, "--attention", "simam", "--attention-kwargs", "e_lambda=1e-4"]) == 0
    row = _rows(out)[0]
    data = {**DATA, "num_val": 128}  # the fake set's defaults: 128 images, seed 0
    assert row["attention"] == "simam (e_lambda=0.0001)" and row["epoch"] == "7" and row["num_samples"] == "128"
    _check(row, _accuracy(_model("simam", 0), data))  # 10 classes read from its fc weight
    assert validate.main([*argv, "--attention", "se"]) == 1  # SE's parameters are not in these weights
    assert "unexpected" in _rows(out)[0]["error"] or "missing" in _rows(out)[0]["error"]


def test_ema_weights(checkpoints, tmp_path):
    out = tmp_path / "t.csv"
    assert validate.main([str(checkpoints["simam"]), str(checkpoints["plain"]), *FAST, "--ema", "--out", str(out)]) == 1
    ema, plain = _rows(out)
    assert ema["weights"] == "ema"
    _check(ema, checkpoints["acc"]["ema"])
    assert "holds no EMA weights" in plain["error"]


def test_flags_that_contradict_the_checkpoint_are_refused(checkpoints, tmp_path):
    out = tmp_path / "t.csv"
    assert validate.main([str(checkpoints["simam"]), *FAST, "--arch", "cifar_resnet56", "--attention", "simam", "--out", str(out)]) == 1
    error = _rows(out)[0]["error"]
    assert "--arch cifar_resnet56" in error and "arch=cifar_resnet20" in error


def test_inputs_expand_folders_and_globs(checkpoints, tmp_path):
    root = checkpoints["simam"].parents[2]
    found = validate.expand_inputs([str(root / "run_*" / "checkpoints" / "*.pth"), str(root / "run_a"), str(root / "nope*.pth"),
                                    str(root / "missing.pth")])
    assert [(p.parent.parent.name, p.name, why) for p, why in found[:2]] == [("run_a", "best.pth", ""), ("run_b", "last.pth", "")]
    assert found[2] == (root / "nope*.pth", "no checkpoint matches this pattern")  # run_a's best.pth is not listed twice
    assert found[3] == (root / "missing.pth", "")  # its row will say "not found"
    assert validate.parse_kwargs('{"e_lambda": 0.1}') == {"e_lambda": 0.1} == validate.parse_kwargs("e_lambda=0.1")
    assert validate.parse_kwargs("reduction=16,impl=reference") == {"reduction": 16, "impl": "reference"}


def test_command_line_errors_are_one_line(checkpoints, tmp_path, capsys):
    ckpt = str(checkpoints["simam"])
    cases = [
        ([ckpt, "--device", "cuda"] if not torch.cuda.is_available() else [ckpt, "--batch-size", "0"], "--"),
        ([ckpt, "--batch-size", "0"], "--batch-size"),
        ([ckpt, "--attention-kwargs", "e_lambda"], "KEY=VALUE"),
        ([ckpt, "--attention-kwargs", "{bad"], "JSON"),
        ([ckpt, "--arch", "resnet51", "--attention", "none"], "resnet51"),
        ([ckpt, "--out", str(tmp_path / "no" / "t.csv")], "does not exist"),
        ([ckpt, "--amp", "fp16", "--device", "cpu"], "fp16"),
        ([], "CKPT_OR_DIR_OR_GLOB"),
    ]
    for argv, needle in cases:
        assert validate.main(argv) == 2, argv
        assert needle in one_error_line(capsys), (argv, needle)
    assert not (tmp_path / "no").exists() and not Path("validate.csv").exists()


@pytest.mark.slow
def test_validate_a_sweep_reproduces_the_recorded_accuracy(tmp_path_factory, tmp_path, capsys):
    sweep = tiny_sweep(tmp_path_factory)
    out = tmp_path / "sweep.csv"
    assert validate.main([str(sweep), "--workers", "0", "--out", str(out)]) == 0
    rows = _rows(out)
    assert len(rows) == 2 * len(RUNS)  # best.pth and last.pth of each run
    for row in rows:
        run = Path(row["checkpoint"]).parents[1]
        record = metrics(run)[-1]
        assert float(row["acc1"]) == pytest.approx(record["val_acc1"], abs=1e-6), row
        assert float(row["acc5"]) == pytest.approx(record["val_acc5"], abs=1e-6) and int(row["num_samples"]) == 32
        assert float(row["loss"]) == pytest.approx(record["val_loss"], rel=1e-4)
        assert row["attention"].split()[0] == run.name.split("-")[2]
