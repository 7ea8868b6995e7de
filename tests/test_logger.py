"""engine.logger.RunLogger progress: a bar that moves every step, lines at least every N seconds, ETAs."""
import io
import logging

import pytest
import torch
from torch import nn

from engine.logger import RunLogger, get_logger
from engine.loops import train_one_epoch


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines():
    handler = _Lines()
    log = get_logger()
    log.addHandler(handler)
    yield handler.lines
    log.removeHandler(handler)


class _Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _epoch(logger: RunLogger, steps: int, log_every: int) -> None:
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    data = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(steps)]
    logger.start_epoch(0, 2, steps)
    train_one_epoch(net, data, torch.optim.SGD(net.parameters(), lr=0.1), nn.CrossEntropyLoss(), device=torch.device("cpu"),
                    log_every=log_every, on_log=logger.step, on_step=logger.advance)


def test_the_bar_reaches_the_epochs_steps_with_log_every_larger_than_the_epoch(tmp_path):
    out = io.StringIO()
    logger = RunLogger(tmp_path, progress="bar", tensorboard=False, stream=out)
    _epoch(logger, 7, log_every=50)
    assert logger.position == 7
    shown = out.getvalue()
    logger.close()
    assert "7/7" in shown and "img/s" in shown and "run eta" in shown


def test_without_a_terminal_a_line_comes_every_progress_every_s(tmp_path, lines):
    every_step = RunLogger(tmp_path, progress="lines", progress_every_s=0.0, tensorboard=False)
    _epoch(every_step, 5, log_every=50)
    assert [line.split(" img/s")[0].rsplit(" ", 1)[0] for line in lines] == [f"epoch 1/2 step {i}/5" for i in range(1, 6)]
    lines.clear()
    rarely = RunLogger(tmp_path, progress="lines", progress_every_s=3600.0, tensorboard=False)
    _epoch(rarely, 5, log_every=2)  # only the logging steps, with the loss
    assert [line.split(" loss")[0] for line in lines] == ["epoch 1/2 step 2/5", "epoch 1/2 step 4/5"]


def test_etas_of_the_epoch_and_of_the_run(tmp_path, lines):
    clock = _Clock()
    logger = RunLogger(tmp_path, progress="lines", progress_every_s=0.0, tensorboard=False, clock=clock)
    logger.start_epoch(0, 3, 10)
    clock.now += 4.0
    logger.advance({"step": 2, "global_step": 2, "images": 64})
    assert lines[-1] == "epoch 1/3 step 2/10 16 img/s eta 0:00:16 run eta 0:00:56"  # 2 s per step, 28 steps left
    logger.end_epoch()
    clock.now += 30.0  # evaluation and checkpoints: added once per remaining epoch
    logger.start_epoch(1, 3, 10, first=5, run_steps_left=15)
    clock.now += 5.0
    logger.step({"step": 10, "global_step": 15, "loss": 1.5, "lr": 0.05, "images_per_s": 1.0, "images": 20})
    assert lines[-1] == "epoch 2/3 step 10/10 loss 1.5000 lr 0.05 4 img/s eta 0:00:00 run eta 0:00:40"


def test_other_ranks_and_progress_none_print_nothing(tmp_path, lines):
    for logger in (RunLogger(tmp_path, enabled=False, progress="lines", progress_every_s=0.0),
                   RunLogger(tmp_path, progress="none", progress_every_s=0.0, tensorboard=False)):
        _epoch(logger, 3, log_every=1)
    assert lines == []
