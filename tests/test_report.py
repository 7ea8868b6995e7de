"""Reproduction tooling on CPU: the paper's experiment configs, sweeps (Hydra multirun and scripts/sweep.py),
scripts/report.py, scripts/gradcam.py and scripts/throughput.py."""
from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

import pytest
import torch

from clihelpers import ROOT, assert_user_error, check_ok, metrics, run_cli

EXPERIMENTS = ROOT / "configs" / "experiment" / "paper"
TINY = ["data=fake", "data.num_train=64", "data.num_val=32", "data.batch_size=32", "trainer.epochs=1"]
ENV = {"OMP_NUM_THREADS": "1"}  # (run_cli adds clihelpers.SUBPROCESS_ENV: SimAM without torch.compile start-up)
ATTENTIONS = ["none", "se", "cbam", "eca", "srm", "gc", "simam"]

CIFAR_CSV = """dataset,arch,block,attention,attention_param,params_M,top1,runs,source
cifar100,resnet20,basic,simam,1e-4,0.2783,69.83,1 (seed 0),original SimAM repository training log
cifar10,alexnet,,none,,7.524042,84.29,1 (best of 50 epochs),AlexNet notebook
"""
IMAGENET_CSV = """arch,attention,attention_param,params_M,flops_G,top1,top5,source
resnet50,simam,0.1,25.56,4.11,77.45,93.66,original SimAM repository README
resnext50_32x4d,none,,25.03,4.26,77.47,93.52,original SimAM repository evaluation log
"""


def _script(name: str):
    """scripts/NAME.py as a module, to call its main(argv) in this process."""
    key = f"scripts_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[key]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def paper_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("paper")
    (d / "cifar.csv").write_text(CIFAR_CSV)
    (d / "imagenet.csv").write_text(IMAGENET_CSV)
    return d


# ------------------------------------------------------------------------------ experiment configs
def _expected(stem: str) -> dict:
    """What each paper experiment must compose to (shared/paper/recipes.md)."""
    dataset, _, arch = stem.partition("_")
    if dataset == "imagenet":
        if arch == "mobilenet_v2":
            return dict(primary="imagenet", arch=arch, data="imagenet", optim=("sgd", 0.05, 4e-5), sched="cosine", epochs=150, batch=256, lam=0.1)
        return dict(primary="imagenet", arch=arch, data="imagenet", optim=("sgd", 0.1, 1e-4), sched=("step", [30, 60, 90]), epochs=100, batch=256, lam=0.1)
    if arch == "alexnet":
        return dict(primary="cifar", arch="alexnet", data="cifar10", optim=("adam", 5e-4, 1e-5), sched="cosine", epochs=50, batch=128, lam=1e-5)
    return dict(primary="cifar", arch=f"cifar_{arch}", data=dataset, optim=("sgd", 0.1, 5e-4), sched=("step", [82, 123]), epochs=164, batch=128, lam=1e-4)


def test_every_published_configuration_has_an_experiment():
    cifar = [f"{d}_{a}" for d in ("cifar10", "cifar100") for a in ("resnet20", "resnet56", "resnet110", "preresnet56", "wrn16_8", "mobilenetv2")]
    imagenet = [f"imagenet_{a}" for a in ("resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "mobilenet_v2")]
    assert sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")) == sorted(cifar + imagenet + ["cifar10_alexnet"])


@pytest.mark.parametrize("stem", sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")))
def test_paper_experiment_composes(stem):
    import networks
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    exp = _expected(stem)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        default = compose(exp["primary"], overrides=[f"experiment=paper/{stem}"])
        plain = compose(exp["primary"], overrides=[f"experiment=paper/{stem}", "attention=none", "seed=3"])
    for cfg in (default, plain):
        assert cfg.model.arch == exp["arch"] and cfg.data.name == exp["data"]
        name, lr, wd = exp["optim"]
        assert cfg.optim.name == name and float(cfg.optim.lr) == pytest.approx(lr) and float(cfg.optim.weight_decay) == pytest.approx(wd)
        sched = exp["sched"] if isinstance(exp["sched"], str) else exp["sched"][0]
        assert cfg.sched.name == sched
        if sched == "step":
            assert list(cfg.sched.milestones) == exp["sched"][1] and cfg.sched.gamma == 0.1
        assert cfg.trainer.epochs == exp["epochs"] and cfg.data.batch_size == exp["batch"]
        assert cfg.optim.name != "sgd" or cfg.optim.momentum == 0.9
    resolved = OmegaConf.to_container(default.attention, resolve=True)
    assert resolved == {"name": "simam", "e_lambda": pytest.approx(exp["lam"])}  # SimAM unless attention= says otherwise
    assert plain.attention.name == "none" and plain.seed == 3  # the command line wins over the experiment
    info = networks.model_info(exp["arch"])
    assert info.family == ("cifar" if exp["primary"] == "cifar" and exp["arch"] != "alexnet" else "imagenet")
    if exp["arch"] == "alexnet":
        assert default.data.image_size == 128 and default.loss.label_smoothing == 0.1


@pytest.mark.parametrize("stem", sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")))
def test_paper_experiment_header(stem):
    text = (EXPERIMENTS / f"{stem}.yaml").read_text()
    header = "".join(l for l in text.splitlines(keepends=True) if l.startswith("#"))
    assert text.startswith("# @package _global_\n")
    script = "main_imagenet.py" if stem.startswith("imagenet") else "main_cifar.py"
    assert re.search(rf"python {script} -m experiment=paper/{stem} attention=\S+", header), header  # the sweep command
    assert "no published number" in header  # every file has attention types without one
    assert all(not l.strip() or l.startswith(("#", " ", "-", "defaults", "model", "sched", "data", "optim", "trainer"))
               for l in text.splitlines()), "override-only: no new top-level sections"


def test_headers_quote_the_published_numbers():
    """Every published top-1 of shared/paper appears in the header of the experiment that reproduces it."""
    from engine.reporting import default_paper_dir, read_published

    paper = default_paper_dir()
    if not (paper / "cifar.csv").is_file():
        pytest.skip(f"no shared/paper at {paper} (set SIMAM_PAPER_DIR)")
    table = read_published(paper)
    assert table
    for (dataset, arch, attention), pub in table.items():
        stem = f"{dataset}_{arch}" if dataset != "imagenet" else f"imagenet_{arch}"
        header = (EXPERIMENTS / f"{stem}.yaml").read_text()
        assert f"{attention} {pub.top1:.2f}" in header or re.search(rf"{attention}[^\n]*{pub.top1:.2f}", header), (stem, attention, pub.top1)


# ------------------------------------------------------------------------------ published numbers
def test_published_lookup(paper_dir):
    from engine.reporting import lookup_published, paper_arch_name, read_published

    table = read_published(paper_dir)
    pub = lookup_published(table, "cifar100", "cifar_resnet20", "simam")
    assert pub.top1 == 69.83 and pub.top5 is None and pub.attention_param == "1e-4" and pub.file == "cifar.csv"
    assert lookup_published(table, "cifar10", "alexnet", "none").top1 == 84.29
    pub = lookup_published(table, "imagenet", "resnet50", "simam")
    assert (pub.top1, pub.top5) == (77.45, 93.66)
    assert lookup_published(table, "imagenet", "resnext50_32x4d", "none").top1 == 77.47
    assert lookup_published(table, "cifar100", "cifar_resnet20", "se") is None
    assert lookup_published(table, "cifar10", "cifar_resnet20", "simam") is None
    assert paper_arch_name("cifar100", "cifar_wrn16_8") == "wideresnet16x8" and paper_arch_name("imagenet", "resnet50") == "resnet50"
    assert read_published(paper_dir / "missing") == {}


# ------------------------------------------------------------------------------ a sweep and its report
@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A 2x2 Hydra multirun (basic launcher, one job after another): attention none/simam x seeds 1, 2."""
    sweep_dir = tmp_path_factory.mktemp("multirun") / "sweep"
    check_ok(run_cli(["-m", *TINY, "attention=none,simam", "seed=1,2", f"hydra.sweep.dir={sweep_dir}"], env=ENV))
    return sweep_dir


def _in_progress_run(sweep: Path, root: Path) -> Path:
    """A copy of one run that says 3 epochs but logged 1, without summary.json: still training."""
    from omegaconf import OmegaConf

    run = root / "running" / "fake-cifar_resnet20-none-seed7"
    shutil.copytree(sweep / "fake-cifar_resnet20-none-seed1", run)
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    cfg.trainer.epochs, cfg.seed = 3, 7
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    (run / "summary.json").unlink()
    return run


def _failed_run(sweep: Path, root: Path) -> Path:
    run = root / "failed" / "run"
    (run / ".hydra").mkdir(parents=True)
    shutil.copy(sweep / "fake-cifar_resnet20-simam-seed1" / ".hydra" / "config.yaml", run / ".hydra" / "config.yaml")
    (run / "main_cifar.log").write_text("[12:00:00][simam][INFO] - starting\nRuntimeError: CUDA error: out of memory\n")
    return run


@pytest.mark.slow
def test_multirun_dirs(sweep):
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert runs == [f"fake-cifar_resnet20-{a}-seed{s}" for a in ("none", "simam") for s in (1, 2)]
    for r in runs:
        assert (sweep / r / ".hydra" / "config.yaml").is_file() and (sweep / r / "summary.json").is_file()


@pytest.mark.slow
def test_report(sweep, tmp_path, paper_dir, capsys):
    running, failed = _in_progress_run(sweep, tmp_path), _failed_run(sweep, tmp_path)
    out = tmp_path / "report"
    report = _script("report")
    assert report.main([str(sweep), str(running.parent), str(failed.parent), "--out", str(out), "--paper", str(paper_dir),
                        "--dataset-alias", "fake=cifar100"]) == 0
    stdout = capsys.readouterr().out
    assert "published 69.83" in stdout

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
    from engine.reporting import find_run_dirs, load_run

    running = _in_progress_run(sweep, tmp_path)
    assert load_run(running).status == "in progress"
    assert load_run(sweep / "fake-cifar_resnet20-none-seed1").status == "complete"
    assert load_run(running, now=running.stat().st_mtime + 10 * 3600).status == "stopped"  # no news for 10 hours
    assert find_run_dirs([tmp_path]) == [running.resolve()]
    with open(running / "metrics.jsonl", "a") as f:  # the same epoch again (a restart without resume)
        f.write((running / "metrics.jsonl").read_text())
    run = load_run(running)
    assert run.epochs_done == 1 and run.repeated_epochs and "repeats epochs" in run.note


# ------------------------------------------------------------------------------ Grad-CAM
def test_gradcam_is_cam_for_a_global_pooling_head():
    """With GAP + linear after the layer, Grad-CAM's channel weights are the class's linear weights / (H*W) (Zhou et al.'s CAM)."""
    from torch import nn

    gradcam = _script("gradcam")
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2, padding=1))
    head = nn.Linear(6, 4)
    model = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()
    x = torch.randn(1, 3, 20, 20)
    cam, probs = gradcam.grad_cam(model, x, features)
    cls = int(probs.argmax())
    with torch.no_grad():
        a = features(x)
        expected = torch.relu((head.weight[cls][:, None, None] * a[0]).sum(0))[None, None]
        expected = torch.nn.functional.interpolate(expected, size=(20, 20), mode="bilinear", align_corners=False)[0, 0]
    assert cam.shape == (20, 20) and float(cam.max()) == pytest.approx(1.0)
    torch.testing.assert_close(cam, expected / expected.max(), rtol=1e-5, atol=1e-6)


def test_simam_weight_map_is_what_simam_multiplies_by():
    from networks.attention import SimAM

    gradcam = _script("gradcam")
    module = SimAM(16, e_lambda=1e-4)
    x = torch.randn(2, 16, 7, 5)
    torch.testing.assert_close(module(x), x * gradcam.simam_weights(module, x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_gradcam_script(sweep, tmp_path, capsys):
    from PIL import Image
    import numpy as np

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 45, 3), dtype=np.uint8)).save(photo)
    none_ckpt = sweep / "fake-cifar_resnet20-none-seed1" / "checkpoints" / "best.pth"
    simam_ckpt = sweep / "fake-cifar_resnet20-simam-seed1" / "checkpoints" / "best.pth"
    out = tmp_path / "cam"
    gradcam = _script("gradcam")
    assert gradcam.main([str(none_ckpt), str(simam_ckpt), "--images", "val:0", str(photo), "--simam-layer", "last", "--out", str(out)]) == 0
    maps = np.load(out / "gradcam.npz")
    for i in (0, 1):
        assert maps[f"image/{i}"].shape == (32, 32, 3)  # the image as the model sees it (the run's image size)
        for j in (0, 1):
            cam = maps[f"gradcam/{i}/{j}"]
            assert cam.shape == (32, 32) and 0 <= cam.min() and cam.max() <= 1 + 1e-6
        assert maps[f"simam/{i}/1"].shape == (32, 32) and maps[f"simam_raw/{i}/1"].shape == (8, 8)  # ResNet-20's last stage: 8x8
        assert 0.5 < maps[f"simam_raw/{i}/1"].min() and maps[f"simam_raw/{i}/1"].max() < 1  # sigmoid(E_inv), E_inv >= 1/2
        assert f"simam/{i}/0" not in maps  # the plain network has no SimAM
    for name in ("gradcam.png", "simam.png"):
        assert (out / name).stat().st_size > 5_000
    assert gradcam.main([str(simam_ckpt), "--images", "val:1", "--layer", "layer2", "--out", str(out / "l2")]) == 0
    assert np.load(out / "l2" / "gradcam.npz")["gradcam/0/0"].shape == (32, 32)


# ------------------------------------------------------------------------------ throughput
@pytest.mark.slow
def test_throughput(sweep, capsys):
    throughput = _script("throughput")
    threads = torch.get_num_threads()
    ckpt = sweep / "fake-cifar_resnet20-none-seed1" / "checkpoints" / "best.pth"
    try:
        assert throughput.main([str(ckpt), "--batch-size", "8", "--warmup", "1", "--repeats", "3", "--threads", "1"]) == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert float(re.search(r": ([0-9.]+) images/s", line).group(1)) > 0
        assert "cifar_resnet20 + none" in line and "32x32" in line and f"torch {torch.__version__}" in line and "cpu" in line
        assert throughput.main(["--arch", "cifar_resnet20", "--attention", "se", "--batch-size", "4", "--warmup", "1",
                                "--repeats", "2", "--json", "--amp", "bf16", "--channels-last", "--threads", "1"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["images_per_s"] > 0 and result["amp"] == "bf16" and result["channels_last"] and result["image_size"] == 32
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ scripts/sweep.py
@pytest.mark.slow
def test_sweep_script_runs_jobs_concurrently(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["scripts/sweep.py", "--jobs", "2", "main_cifar.py", *TINY, "attention=none,simam", f"hydra.sweep.dir={sweep_dir}"]
    proc = check_ok(run_cli(args[1:], script=args[0], env=ENV))
    assert "2/2 jobs succeeded" in proc.stdout
    records = [json.loads(l) for l in (sweep_dir / "sweep.jsonl").read_text().splitlines()]
    assert sorted(r["run_dir"] for r in records) == [str(sweep_dir / f"fake-cifar_resnet20-{a}-seed0") for a in ("none", "simam")]
    assert all(r["returncode"] == 0 for r in records)
    assert max(r["start"] for r in records) < min(r["end"] for r in records)  # the two ran at the same time
    from engine.reporting import load_run

    for r in records:
        run = load_run(r["run_dir"])
        assert run.status == "complete" and (Path(r["run_dir"]) / "console.log").is_file()
        assert not any(o.startswith("hydra.") for o in run.overrides)
    again = check_ok(run_cli(args[1:], script=args[0], env=ENV))  # the same command: nothing left to do
    assert again.stdout.count("skip (complete)") == 2 and "nothing to run" in again.stdout


def test_sweep_script_plans_one_job_per_gpu(capsys):
    sweep = _script("sweep")
    assert sweep.main(["--gpus", "0-3", "--gpus-per-job", "2", "--dry-run", "main_imagenet.py", "experiment=paper/imagenet_resnet50",
                       "attention=none,simam,se", "data.root=/data/imagenet", "hydra.sweep.dir=/tmp/never"]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[")]
    assert [l.split()[1] for l in lines] == ["CUDA_VISIBLE_DEVICES=0,1", "CUDA_VISIBLE_DEVICES=2,3", "CUDA_VISIBLE_DEVICES=0,1"]
    assert all("trainer.devices=2" in l and "hydra.run.dir=" in l for l in lines)
    assert "imagenet-resnet50-simam-seed0" in lines[1]


# ------------------------------------------------------------------------------ errors: one line, exit code 2
@pytest.mark.slow
def test_script_errors_are_one_line(sweep, tmp_path, capsys):
    report, gradcam, throughput, sweep_script = (_script(n) for n in ("report", "gradcam", "throughput", "sweep"))
    ckpt = str(sweep / "fake-cifar_resnet20-none-seed1" / "checkpoints" / "best.pth")
    (tmp_path / "empty").mkdir()
    cases = [
        (report, [str(tmp_path / "missing")], "does not exist"),
        (report, [str(tmp_path / "empty")], "no run directories"),
        (report, [str(sweep), "--paper", str(tmp_path / "nope")], "--paper"),
        (report, [str(sweep), "--dataset-alias", "fake"], "OURS=PAPER"),
        (gradcam, [str(tmp_path / "missing.pth"), "--images", "val:0"], "checkpoint not found"),
        (gradcam, [ckpt, "--images", "val:999"], "val:0 .. val:31"),
        (gradcam, [ckpt, "--images", str(tmp_path / "nope.jpg")], "image not found"),
        (gradcam, [ckpt, "--images", "val:0", "--layer", "layer9"], "layer9"),
        (gradcam, [ckpt, "--images", "val:0", "--simam-layer", "last"], "none of the checkpoints has SimAM"),
        (gradcam, [ckpt, "--images", "val:0", "--target", "10"], "has 10 classes"),
        (throughput, ["--arch", "resnet51"], "unknown architecture 'resnet51'"),
        (throughput, [ckpt, "--arch", "resnet18"], "not both"),
        (throughput, [str(tmp_path / "missing.pth")], "checkpoint not found"),
        (sweep_script, ["--jobs", "2", "main_foo.py", "seed=1,2"], "unknown script"),
        (sweep_script, ["--jobs", "2", "main_cifar.py", "attention=nope"], "attention"),
        (sweep_script, ["--jobs", "2", "main_cifar.py", "attention=simam", "attention.e_lambda=0.1,0.2"], "share the run dir"),
    ]
    for module, argv, needle in cases:
        assert module.main(argv) == 2, argv
        assert needle in _one_error_line(capsys), (argv, needle)


@pytest.mark.slow
def test_script_cli_contract(tmp_path):
    assert_user_error(run_cli([str(tmp_path / "missing")], script="scripts/report.py"), "does not exist")
    proc = check_ok(run_cli(["--help"], script="scripts/gradcam.py"))
    assert "val:N" in proc.stdout and "python scripts/gradcam.py" in proc.stdout  # examples
