"""The mismatch ladder (docs/method.md#the-mismatch-ladder): its climb recomputed by hand from the mismatch it is
fed, its checkpointed state, its refusals, and its decisions recomputed from a real run's metrics."""

from __future__ import annotations

import json
import statistics

import pytest

from atesd.config import ConfigError
from atesd.exposure.mismatch_ladder import MismatchLadder, MismatchLadderSettings
from atesd.train.metrics import read_metrics
from atesd.train.recipe import Trainer


def climb(ladder: MismatchLadder, mismatches: list[float]) -> list[float]:
    """The α of each step while `mismatches` are the steps' kl_mean."""
    alphas = []
    for step, mismatch in enumerate(mismatches):
        alphas.append(ladder.alpha(step))
        ladder.observe(step, {"kl_mean": mismatch})
    return alphas


def test_it_climbs_while_the_mismatch_is_within_the_cap_and_steps_back_at_the_first_rung_beyond_it():
    ladder = MismatchLadder([0.0, 0.25, 0.5, 0.75, 1.0], hold_steps=2, cap=3.0)
    # m_0 = 0.1; 0.25: 0.2 (2x, accepted); 0.5: 0.3 (3x, the cap itself: accepted); 0.75: mean 0.5 (5x): back to 0.5
    alphas = climb(ladder, [0.08, 0.12, 0.2, 0.2, 0.25, 0.35, 0.9, 0.1, 5.0, 5.0, 5.0])
    assert alphas == [0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 0.5, 0.5, 0.5]
    rows = ladder.drain_decisions()
    assert [row["tried_alpha"] for row in rows] == [0.0, 0.25, 0.5, 0.75]
    assert [row["accepted"] for row in rows] == [True, True, True, False]
    assert [row["ratio"] for row in rows] == pytest.approx([1.0, 2.0, 3.0, 5.0])
    assert [row["alpha"] for row in rows] == [0.25, 0.5, 0.75, 0.5]
    assert rows[-1]["settled"] and rows[-1]["step"] == 8
    assert ladder.drain_decisions() == []  # settled: nothing more is decided


def test_it_stays_at_the_top_when_every_rung_is_within_reach_and_at_the_bottom_when_none_is():
    assert climb(MismatchLadder([0.0, 0.5, 1.0], 1, 3.0), [1.0, 2.0, 2.5, 100.0]) == [0.0, 0.5, 1.0, 1.0]
    assert climb(MismatchLadder([0.0, 0.5, 1.0], 1, 3.0), [1.0, 3.5, 1.0, 1.0]) == [0.0, 0.5, 0.0, 0.0]
    # a lowest rung without mismatch (the student's own targets): any rung above it that has some is beyond reach
    assert climb(MismatchLadder([0.0, 0.5], 1, 3.0), [0.0, 1e-6, 0.0]) == [0.0, 0.5, 0.0]


def test_a_resumed_ladder_takes_the_decisions_of_an_uninterrupted_one():
    mismatches = [0.1, 0.3, 0.2, 0.25, 0.2, 0.9, 0.9, 0.9]
    whole = climb(MismatchLadder([0.0, 0.25, 0.5, 1.0], 2, 3.0), mismatches)
    first = MismatchLadder([0.0, 0.25, 0.5, 1.0], 2, 3.0)
    head = climb(first, mismatches[:3])  # stopped inside the second rung's window
    resumed = MismatchLadder([0.0, 0.25, 0.5, 1.0], 2, 3.0)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert head + climb(resumed, mismatches[3:]) == whole  # the ladder reads no step number
    with pytest.raises(ValueError, match="rungs"):
        MismatchLadder([0.0, 1.0], 2, 3.0).load_state_dict(first.state_dict())


@pytest.mark.parametrize(("overrides", "message"), [
    (["exposure.rungs=[0.5, 0.25]"], "do not ascend"),
    (["exposure.rungs=[0.0, 1.5]"], "leave"),
    (["exposure.rungs=[0.5]"], "rungs"),
    (["exposure.cap=1.0"], "cap"),
])
def test_ladders_that_cannot_climb_are_refused(tiny_config, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, "exposure.policy=mismatch_ladder", *overrides)


def test_a_run_too_short_for_the_second_rung_is_warned_about():
    assert MismatchLadderSettings(hold_steps=4).warnings(7)
    assert not MismatchLadderSettings(hold_steps=4).warnings(8)


def test_a_run_decides_from_the_mismatch_its_steps_logged(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "exposure.policy=mismatch_ladder", "exposure.hold_steps=2",
                                  "exposure.rungs=[0.0, 0.5, 1.0]", "exposure.cap=1000", "train.steps=6"))
    run_dir = trainer.train()
    metrics = read_metrics(run_dir / "metrics.jsonl")
    decisions = [json.loads(line) for line in (run_dir / "decisions.jsonl").read_text().splitlines()]
    assert [row["alpha"] for row in metrics] == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]  # every rung within a cap of 1000
    rungs = [statistics.fmean(row["kl_mean"] for row in metrics[start:start + 2]) for start in (0, 2, 4)]
    assert [row["mismatch"] for row in decisions] == pytest.approx(rungs)
    assert [row["ratio"] for row in decisions] == pytest.approx([1.0, rungs[1] / rungs[0], rungs[2] / rungs[0]])
    assert rungs[1] > rungs[0]  # the tiny teacher's targets move away from the student as it reads more
