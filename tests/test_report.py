"""scripts/report.py and what it reads (scripts/runs.py, the published numbers of scripts/common.py):
a synthetic sweep with malformed lines, failed and unreadable runs (fast), and a real 2x2 sweep (slow)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers.cli import assert_user_error, metrics, run_cli
from helpers.sweeps import one_error_line, tiny_sweep
from scripts import report
from scripts.common import lookup_published, lookup_published_params, paper_arch_name, paper_block, read_published, read_published_params
from scripts.runs import find_run_dirs, load_run, read_metrics

CIFAR_CSV = """dataset,arch,block,attention,attention_param,params_M,top1,runs,source
cifar100,resnet20,basic,simam,1e-4,0.2783,69.83,1 (seed 0),original SimAM repository training log
cifar100,resnet164,bottleneck,simam,1e-4,1.7273,75.00,1,made up for the test
cifar10,alexnet,,none,,7.524042,84.29,1 (best of 50 epochs),AlexNet notebook
"""
IMAGENET_CSV = """arch,attention,attention_param,params_M,flops_G,top1,top5,source
resnet50,simam,0.1,25.56,4.11,77.45,93.66,original SimAM repository README
resnext50_32x4d,none,,25.03,4.26,77.47,93.52,original SimAM repository evaluation log
"""
PARAMS_CSV = """# comment line
dataset,arch,block,none,se_r16,se_r4,cbam_r16,cbam_r4,simam
imagenet,resnet50,bottleneck,25.5570,28.0720,,28.0896,,25.5570
cifar100,resnet20,basic,0.2783,0.2803,0.2864,0.2816,0.2877,0.2783
cifar100,resnet164,bottleneck,1.7273,1.9208,2.5014,1.9348,2.5169,1.7273
"""


@pytest.fixture(scope="module")
def paper_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("paper")
    (d / "cifar.csv").write_text(CIFAR_CSV)
    (d / "imagenet.csv").write_text(IMAGENET_CSV)
    (d / "params.csv").write_text(PARAMS_CSV)
    return d


# ------------------------------------------------------------------------------ published numbers
def test_published_lookup(paper_dir):
    table = read_published(paper_dir)
    pub = lookup_published(table, "cifar100", "cifar_resnet20", "simam")
    assert pub.top1 == 69.83 and pub.top5 is None and pub.attention_param == "1e-4" and pub.file == "cifar.csv"
    assert pub.params_M == "0.2783" and pub.block == "basic"
    assert lookup_published(table, "cifar10", "alexnet", "none").top1 == 84.29
    pub = lookup_published(table, "imagenet", "resnet50", "simam")
    assert (pub.top1, pub.top5, pub.flops_G) == (77.45, 93.66, "4.11")
    assert lookup_published(table, "imagenet", "resnext50_32x4d", "none").top1 == 77.47
    assert lookup_published(table, "cifar100", "cifar_resnet20", "se") is None
    assert lookup_published(table, "cifar10", "cifar_resnet20", "simam") is None
    assert paper_arch_name("cifar100", "cifar_wrn16_8") == "wideresnet16x8" and paper_arch_name("imagenet", "resnet50") == "resnet50"
    assert read_published(paper_dir / "missing") == {}


def test_published_lookup_takes_the_block_into_account(paper_dir):
    """ResNet-164 is published with bottleneck blocks: a basic-block ResNet-164 (or ResNet-20 with bottlenecks) is another network."""
    table, params = read_published(paper_dir), read_published_params(paper_dir)
    assert paper_block("cifar_resnet164") == "bottleneck" and paper_block("cifar_resnet20") == "basic"
    assert paper_block("cifar_preresnet56") == "prebasic" and paper_block("cifar_wrn16_8") == "widebasic"
    assert paper_block("resnet18") == "basic" and paper_block("resnet50") == "bottleneck" and paper_block("alexnet") == ""
    assert lookup_published(table, "cifar100", "cifar_resnet164", "simam").top1 == 75.00
    assert lookup_published(table, "cifar100", "cifar_resnet164", "simam", block="bottleneck").top1 == 75.00
    assert lookup_published(table, "cifar100", "cifar_resnet164", "simam", block="basic") is None
    assert lookup_published(table, "cifar100", "cifar_resnet20", "simam", block="bottleneck") is None
    assert lookup_published_params(params, "cifar100", "cifar_resnet164", "none") == "1.7273"
    assert lookup_published_params(params, "cifar100", "cifar_resnet164", "none", block="basic") is None
    assert lookup_published_params(params, "cifar100", "cifar_resnet20", "se", {"reduction": 4}) == "0.2864"
    assert lookup_published_params(params, "cifar100", "cifar_resnet20", "se") == "0.2803"  # reduction 16
    assert lookup_published_params(params, "imagenet", "resnet50", "simam", {"e_lambda": 0.1}) == "25.5570"  # params.csv's 4 decimals
    assert lookup_published_params(params, "cifar100", "cifar_resnet20", "eca") is None


# ------------------------------------------------------------------------------ a synthetic sweep
def _config(arch="cifar_resnet20", attention=None, seed=1, epochs=2, dataset="cifar100", block=None, image_size=32) -> dict:
    return {
        "data": {"name": dataset, "root": "nowhere", "image_size": image_size, "augment": "cifar", "num_classes": None, "batch_size": 128},
        "model": {"arch": arch, "block": block, "kwargs": {}},
        "attention": attention or {"name": "simam", "e_lambda": 1e-4},
        "optim": {"name": "sgd", "lr": 0.1, "weight_decay": 5e-4}, "sched": {"name": "step", "milestones": [82, 123], "gamma": 0.1},
        "trainer": {"epochs": epochs, "devices": 1, "accelerator": "cpu"}, "seed": seed,
    }


def _record(epoch: int, acc1: float, acc5: float) -> str:
    return json.dumps({"epoch": epoch, "train_loss": 1.0, "val_loss": 1.0, "train_acc1": acc1, "val_acc1": acc1, "val_acc5": acc5,
                       "throughput": 100.0}) + "\n"


def _run(root: Path, name: str, config: dict, lines: list, status: dict | None = None) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), run / ".hydra" / "config.yaml")
    (run / "metrics.jsonl").write_bytes(b"".join(l.encode() if isinstance(l, str) else l for l in lines))
    if status is not None:
        status = {"epoch": None, "error": None, "exit_code": None, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), **status}
        (run / "status.json").write_text(json.dumps(status))
    return run


@pytest.fixture()
def synthetic(tmp_path) -> Path:
    """Two complete seeds (one with malformed lines), failed, preempted, stale and unreadable runs."""
    root = tmp_path / "sweep"
    malformed = ["42\n", '{"epoch": "abc", "val_acc1": 99.0}\n', b"\xff\xfe\x00 not utf-8\n", "[1, 2]\n", '{"val_acc1": 98.0}\n',
                 '{"epoch": 2, "val_acc1": 9']
    _run(root, "seed1", _config(seed=1), [_record(1, 50.0, 80.0), *malformed[:5], _record(2, 60.0, 85.0), malformed[5]], {"state": "done", "epoch": 2})
    _run(root, "seed2", _config(seed=2), [_record(1, 55.0, 82.0), _record(2, 58.0, 84.0)])  # no status.json: today's rules
    _run(root, "failed", _config(seed=3), [_record(1, 40.0, 70.0)],
         {"state": "failed", "epoch": 1, "error": "RuntimeError: CUDA out of memory", "exit_code": 1})
    _run(root, "failed_early", _config(seed=4), [], {"state": "failed", "error": "error: data.root nowhere does not exist", "exit_code": 2})
    _run(root, "preempted", _config(seed=5), [_record(1, 41.0, 71.0)], {"state": "preempted", "epoch": 1, "exit_code": 3})
    stale = _run(root, "stale", _config(seed=6), [_record(1, 42.0, 72.0)], {"state": "running", "epoch": 1, "updated": "2001-01-01T00:00:00"})
    for p in stale.rglob("*"):  # a run killed long ago: nothing written since
        os.utime(p, (978307200, 978307200))
    _run(root, "running", _config(seed=7), [_record(1, 43.0, 73.0)], {"state": "running", "epoch": 1})
    bad = _run(root, "bad_yaml", _config(seed=8), [_record(1, 1.0, 2.0)])
    (bad / ".hydra" / "config.yaml").write_text("model: [unclosed\n  - {")
    junk = _run(root, "junk_status", _config(seed=9), [_record(1, 44.0, 74.0)])
    (junk / "status.json").write_text("{not json")
    return root


def test_read_metrics_skips_unreadable_lines_naming_the_file(synthetic):
    path = synthetic / "seed1" / "metrics.jsonl"
    records, repeated, warnings = read_metrics(path)
    assert [r["epoch"] for r in records] == [1, 2] and [r["val_acc1"] for r in records] == [50.0, 60.0] and not repeated
    assert len(warnings) == 6 and all(w.startswith(f"{path}:") for w in warnings)
    assert [int(w.split(":")[1]) for w in warnings] == [2, 3, 4, 5, 6, 8]  # line numbers
    assert "not UTF-8" in warnings[2] and "not an object" in warnings[0] and "not JSON" in warnings[5]


def test_status_comes_from_status_json(synthetic):
    runs = {p.name: load_run(p) for p in find_run_dirs([synthetic]) if p.name != "bad_yaml"}
    assert runs["seed1"].status == "complete" and runs["seed1"].state["state"] == "done" and runs["seed2"].status == "complete"
    assert runs["failed"].status == "failed" and "CUDA out of memory" in runs["failed"].note and "exit code 1" in runs["failed"].note
    assert runs["failed_early"].status == "failed" and "before its first epoch" in runs["failed_early"].note  # was "in progress"
    assert runs["preempted"].status == "interrupted" and "auto_resume" in runs["preempted"].note
    assert runs["stale"].status == "stopped" and "killed" in runs["stale"].note
    assert runs["running"].status == "in progress"
    junk = runs["junk_status"]
    assert junk.status == "in progress" and any(str(synthetic / "junk_status" / "status.json") in w for w in junk.warnings)
    with pytest.raises(Exception, match="config.yaml"):
        load_run(synthetic / "bad_yaml")


def test_report_of_a_sweep_with_malformed_lines(synthetic, paper_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert report.main([str(synthetic), "--out", str(out), "--paper", str(paper_dir), "--no-plots"]) == 0
    captured = capsys.readouterr()
    warnings = [l for l in captured.err.splitlines() if l.startswith("warning:")]
    assert sum(str(synthetic / "seed1" / "metrics.jsonl") in w for w in warnings) == 6
    assert any(str(synthetic / "bad_yaml" / ".hydra" / "config.yaml") in w and "skipped" in w for w in warnings)
    assert "Traceback" not in captured.err

    with open(out / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["n"] == "2" and rows[0]["seeds"] == "1,2"
    row = rows[0]
    assert float(row["best_top1_mean"]) == pytest.approx(59.0) and float(row["best_top5_mean"]) == pytest.approx(84.5)
    assert float(row["published_top1"]) == 69.83 and float(row["diff_top1"]) == pytest.approx(59.0 - 69.83)
    assert row["published_top5"] == "" and row["diff_top5"] == ""  # cifar.csv has no top-5
    assert row["published_params_M"] == "0.2783" and float(row["params_M"]) == pytest.approx(0.2783, abs=1e-4)
    md = (out / "report.md").read_text()
    others = md.split("## Runs not averaged")[1]
    assert f"`{(synthetic / 'failed').resolve()}` | failed | 1/2 |" in others and "CUDA out of memory" in others
    assert f"`{(synthetic / 'failed_early').resolve()}` | failed | 0/2 |" in others
    assert f"`{(synthetic / 'preempted').resolve()}` | interrupted |" in others
    assert "## Skipped (unreadable)" in md and "bad_yaml" in md.split("## Skipped (unreadable)")[1]


def test_report_shows_top5_deltas_and_published_params_flops(tmp_path, paper_dir, capsys):
    root = tmp_path / "runs"
    att = {"name": "simam", "e_lambda": 0.1}
    _run(root, "r50", _config("resnet50", att, dataset="imagenet", epochs=1, image_size=224), [_record(1, 70.0, 90.0)], {"state": "done"})
    _run(root, "r50_64px", _config("resnet50", att, dataset="imagenet", epochs=1, image_size=64), [_record(1, 60.0, 80.0)], {"state": "done"})
    _run(root, "r164", _config("cifar_resnet164", epochs=1, block="basic"), [_record(1, 70.0, 90.0)], {"state": "done"})
    _run(root, "r20_cifar10", _config(dataset="cifar10", epochs=1), [_record(1, 70.0, 90.0)], {"state": "done"})
    out = tmp_path / "out"
    assert report.main([str(root), "--out", str(out), "--paper", str(paper_dir), "--no-plots", "--dataset-alias", "cifar10=cifar100"]) == 0
    with open(out / "report.csv", newline="") as f:
        rows = {Path(r["run_dirs"]).name: r for r in csv.DictReader(f)}
    r50 = rows["r50"]
    assert float(r50["diff_top1"]) == pytest.approx(70.0 - 77.45) and float(r50["diff_top5"]) == pytest.approx(90.0 - 93.66)
    assert r50["published_params_M"] == "25.5570" and r50["published_flops_G"] == "4.11"
    assert float(r50["macs_thop_G"]) == pytest.approx(4.13, abs=0.01)  # thop's count at 224 px, beside the published 4.11
    assert rows["r50_64px"]["published_flops_G"] == "" and "FLOPs published at 224 px" in rows["r50_64px"]["published_source"]
    r164 = rows["r164"]  # trained with basic blocks: the published bottleneck numbers are another network's
    assert r164["block"] == "basic" and r164["published_top1"] == "" and r164["published_params_M"] == ""
    r20 = rows["r20_cifar10"]  # looked up as cifar100 (alias), but a 10-class head: not the published 100-class count
    assert float(r20["published_top1"]) == 69.83 and r20["published_params_M"] == ""
    md = (out / "report.md").read_text()
    assert "| Δ top-5 |" in md and "| -3.66 |" in md and "| 25.5570 |" in md and "| 4.11 |" in md


def test_report_errors_are_one_line(tmp_path, synthetic, capsys):
    (tmp_path / "empty").mkdir()
    cases = [
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(tmp_path / "empty")], "no run directories"),
        ([str(synthetic), "--paper", str(tmp_path / "nope")], "--paper"),
        ([str(synthetic), "--dataset-alias", "fake"], "OURS=PAPER"),
        ([str(synthetic), "--bogus"], "--bogus"),
    ]
    for argv, needle in cases:
        assert report.main(argv) == 2, argv
        assert needle in one_error_line(capsys), (argv, needle)


@pytest.mark.slow
def test_report_runs_as_a_file(tmp_path):
    """`python scripts/report.py` (needs `pip install -e .`, which makes the packages importable) and `python -m scripts.report`."""
    proc = run_cli([str(tmp_path / "missing")], script="scripts/report.py")
    assert "No module named" not in proc.stderr, "the packages are not installed: run `pip install -e .` in the repository"
    assert_user_error(proc, "does not exist")
    proc = run_cli(["scripts.report", "--help"], script="-m")
    assert proc.returncode == 0 and "python scripts/report.py multirun/" in proc.stdout


# ------------------------------------------------------------------------------ a real sweep and its report
@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return tiny_sweep(tmp_path_factory)


def _in_progress_run(sweep: Path, root: Path) -> Path:
    """A copy of one run that says 3 epochs but logged 1, without summary.json: still training."""
    run = root / "running" / "fake-cifar_resnet20-none-seed7"
    shutil.copytree(sweep / "fake-cifar_resnet20-none-seed1", run)
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    cfg.trainer.epochs, cfg.seed = 3, 7
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    (run / "summary.json").unlink()
    for name in ("status.json",):
        if (run / name).exists():
            (run / name).write_text(json.dumps({"state": "running", "epoch": 1, "error": None, "exit_code": None,
                                                "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    return run


def _failed_run(sweep: Path, root: Path) -> Path:
    """A run that failed before its first epoch, without status.json: the log says why."""
    run = root / "failed" / "run"
    (run / ".hydra").mkdir(parents=True)
    shutil.copy(sweep / "fake-cifar_resnet20-simam-seed1" / ".hydra" / "config.yaml", run / ".hydra" / "config.yaml")
    (run / "main_cifar.log").write_text("[12:00:00][simam][INFO] - starting\nRuntimeError: CUDA error: out of memory\n")
    return run


@pytest.mark.slow
def test_report(sweep, tmp_path, paper_dir, capsys):
    running, failed = _in_progress_run(sweep, tmp_path), _failed_run(sweep, tmp_path)
    out = tmp_path / "report"
    assert report.main([str(sweep), str(running.parent), str(failed.parent), "--out", str(out), "--paper", str(paper_dir),
                        "--dataset-alias", "fake=cifar100"]) == 0
    assert "published 69.83" in capsys.readouterr().out

    with open(out / "report.csv", newline="") as f:
        rows = {r["attention"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"none", "simam"}
    for attention, row in rows.items():
        assert row["n"] == "2" and row["seeds"] == "1,2" and row["arch"] == "cifar_resnet20"  # the in-progress seed 7 is not averaged
        best = [max(m["val_acc1"] for m in metrics(sweep / f"fake-cifar_resnet20-{attention}-seed{s}")) for s in (1, 2)]
        assert float(row["best_top1_mean"]) == pytest.approx(statistics.fmean(best), abs=1e-3)
        assert float(row["best_top1_std"]) == pytest.approx(statistics.stdev(best), abs=1e-3)
        assert float(row["params_M"]) == pytest.approx(0.2725, abs=1e-4) and float(row["macs_G"]) > 0
        assert float(row["train_images_per_s"]) > 0
        assert (row["optimizer"], row["lr"], row["epochs"], row["batch_size"]) == ("sgd", "0.1", "1", "32")
        assert row["schedule"] == "step x0.1 at [82, 123]" and row["dataset"] == "fake (as cifar100)"
        assert row["command"].startswith("python main_cifar.py -m data=fake") and "seed=1,2" in row["command"]
    assert float(rows["simam"]["published_top1"]) == 69.83 and rows["simam"]["attention_params"] == "e_lambda=0.0001"
    assert float(rows["simam"]["diff_top1"]) == pytest.approx(float(rows["simam"]["best_top1_mean"]) - 69.83, abs=1e-3)
    assert rows["none"]["published_top1"] == "" and rows["none"]["diff_top1"] == ""

    md = (out / "report.md").read_text()
    assert "| fake (as cifar100) | cifar_resnet20 | simam (e_lambda=0.0001) | 2 |" in md and "| 69.83 |" in md
    others = md.split("## Runs not averaged")[1]
    assert f"`{running.resolve()}` | in progress | 1/3 |" in others
    assert f"`{failed.resolve()}` | failed | 0/1 |" in others and "out of memory" in others
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(["compare_fake_cifar_resnet20.png", "curves_fake_cifar_resnet20_none.png",
                           "curves_fake_cifar_resnet20_simam_e_lambda_0.0001.png", "predictions_fake_cifar_resnet20_none.png",
                           "predictions_fake_cifar_resnet20_simam_e_lambda_0.0001.png"])
    for name in pngs:
        assert (out / name).stat().st_size > 10_000 and f"({name})" in md  # non-empty, and shown in report.md


@pytest.mark.slow
def test_load_run_statuses(sweep, tmp_path):
    running = _in_progress_run(sweep, tmp_path)
    assert load_run(running).status == "in progress"
    assert load_run(sweep / "fake-cifar_resnet20-none-seed1").status == "complete"
    assert load_run(running, now=time.time() + 10 * 3600).status == "stopped"  # no news for 10 hours
    assert find_run_dirs([tmp_path]) == [running.resolve()]
    with open(running / "metrics.jsonl", "a") as f:  # the same epoch again (a restart without resume)
        f.write((running / "metrics.jsonl").read_text())
    run = load_run(running)
    assert run.epochs_done == 1 and run.repeated_epochs and "repeats epochs" in run.note
