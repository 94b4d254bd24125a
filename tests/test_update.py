"""The update's non-finite guards: weights left non-finite by an applied update stop the run at once; a streak of
skipped steps stops it after they are logged, naming them as metrics.jsonl does; a resume's lower learning rate
is applied over the saved optimizer and schedule."""

from __future__ import annotations

import pytest
import torch

from atesd.config import load_config
from atesd.train.distributed import Processes
from atesd.train.update import NonFiniteLossError, NonFiniteWeightsError, Updater, lr_factor


def updater(lr: float, max_bad: int = 3, optimizer=torch.optim.SGD) -> Updater:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    opt = optimizer(model.parameters(), lr=lr)
    train = load_config(None, ["train.warmup_steps=4"]).train
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, train))
    return Updater(model, opt, scheduler, Processes(), max_grad_norm=1e30, max_consecutive_bad_steps=max_bad)


def loss(up: Updater, scale: float = 1.0):
    return lambda span: scale * sum(p.sum() for p in up.model.parameters())


def test_an_update_that_leaves_a_weight_non_finite_stops_at_once(tmp_path):
    up = updater(lr=1e38)  # a finite learning rate; the gradients of 1e6 make the update overflow float32
    with pytest.raises(NonFiniteWeightsError, match="the update of step 1 made weights non-finite"):
        up.step([slice(0, 1)], loss(up, 1e6), step=0)


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
def test_a_streak_of_skipped_steps_stops_after_its_last_step_and_names_them_all():
    up = updater(lr=0.1, max_bad=3)
    up.step([slice(0, 1)], loss(up), step=0)
    for step in (1, 2, 3):
        result = up.step([slice(0, 1)], loss(up, float("nan")), step=step)
        assert not result.applied
        if step < 3:
            up.stop_if_diverged()
    with pytest.raises(NonFiniteLossError, match=r"3 steps in a row .* \(steps 2 to 4 of metrics.jsonl\)"):
        up.stop_if_diverged()


def test_a_resume_applies_its_own_learning_rate_over_the_saved_state():
    first = updater(lr=0.1)
    for step in range(2):
        first.step([slice(0, 1)], loss(first), step=step)
    saved, optimizer_state = first.state_dict(), first.optimizer.state_dict()

    same = updater(lr=0.1)
    same.optimizer.load_state_dict(optimizer_state)
    same.load_state_dict(saved)
    assert [g["lr"] for g in same.optimizer.param_groups] == [g["lr"] for g in first.optimizer.param_groups]

    lower = updater(lr=0.01)
    lower.optimizer.load_state_dict(optimizer_state)
    lower.load_state_dict(saved)
    assert lower.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 3 / 4)  # step 2 of a 4-step warm-up
    result = lower.step([slice(0, 1)], loss(lower), step=2)
    assert result.lr == pytest.approx(0.01)
