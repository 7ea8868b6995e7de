"""engine.build: the only reader of the config, tested on real composed configs without a run."""
from __future__ import annotations

import logging

import pytest
import torch

from engine import data
from engine.build import build_data, build_model, build_options, build_run
from engine.contract import StartPlan
from engine.distributed import DistInfo
from engine.logger import get_logger
from helpers.compose import compose_plain
from helpers.cli import write_jpeg_folder

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _simam_expected_calls_restored():
    """build_run tells SimAM's kernel choice the run's size (process-wide): undo it for other tests."""
    from networks.attention.simam_fused import expected_calls, set_expected_calls

    before = expected_calls()
    yield
    set_expected_calls(before)
ONE = DistInfo(rank=0, world_size=1, local_rank=0, device=CPU)


def test_gpu_decode_on_cpu_warns_and_decodes_on_the_cpu(tmp_path):
    root = write_jpeg_folder(tmp_path / "jpegs", classes=2)
    cfg = compose_plain("imagenet", ["data=imagefolder", f"data.root={root}", "data.gpu_decode=true", "data.batch_size=2",
                                     "data.eval_batch_size=2", "data.workers=0", "data.image_size=32"], tmp_path)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    get_logger().addHandler(handler)
    try:
        train, val, num_classes = build_data(cfg, ONE)
    finally:
        get_logger().removeHandler(handler)
    assert any("data.gpu_decode=true needs a CUDA device" in r.getMessage() for r in records)
    assert num_classes == 2
    data.set_epoch(train, 0)
    images, targets = next(iter(train))
    assert images.dtype == torch.float32 and images.shape == (2, 3, 32, 32) and targets.dtype == torch.int64


def test_one_process_keeps_the_last_partial_batch_as_the_original(tmp_path):
    cfg = compose_plain("cifar", ["data=fake", "data.num_train=100", "data.batch_size=32"], tmp_path)
    train, _, _ = build_data(cfg, ONE)
    assert len(train) == 4  # 100 = 3 x 32 + 4: the original's DataLoader keeps the last 4 (drop_last=False)
    cfg["data"]["drop_last"] = True
    assert len(build_data(cfg, ONE)[0]) == 3


def test_model_init_and_options_come_from_the_config(tmp_path):
    cfg = compose_plain("cifar", ["data=fake", "attention=simam", "trainer.amp=bf16", "optim.clip_grad=1.0", "ema.enabled=true",
                                  "ema.select_best=true"], tmp_path)
    model = build_model(cfg, 10)
    assert model.model_spec["attention"] == "simam"
    opts = build_options(cfg)
    assert opts.amp_dtype == torch.bfloat16 and opts.clip_grad == 1.0 and opts.select_best_ema


def test_lr_base_is_scaled_by_the_global_batch(tmp_path):
    cfg = compose_plain("cifar", ["data=fake", "data.batch_size=64", "optim.lr_base=0.1", "optim.lr_base_size=256",
                                  "trainer.epochs=1"], tmp_path)
    run = build_run(cfg, ONE, StartPlan("fresh"))
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    assert any("scaled" in n for n in run.notes)


def test_evaluation_builds_no_training_loader(tmp_path):
    cfg = compose_plain("cifar", ["data=fake", "evaluate=true"], tmp_path)
    train, val, _ = build_data(cfg, ONE)
    assert train is None and len(val) > 0
