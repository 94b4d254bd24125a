"""The mismatch ladder (docs/method.md#the-mismatch-ladder): its climb recomputed by hand from the mismatch it is
fed, its checkpointed state, its refusals, and its decisions recomputed from a real run's metrics."""

from __future__ import annotations

import json
import statistics

import pytest

from atesd.config import ConfigError
from atesd.experiments.diagnose_report import method_diagnoses
from atesd.exposure.mismatch_ladder import MismatchLadder, MismatchLadderSettings, guard_chance_spread
from atesd.train.metrics import read_metrics
from atesd.train.recipe import Trainer


def climb(ladder: MismatchLadder, mismatches: list[float], accuracies: list[float] | None = None) -> list[float]:
    """The α of each step while `mismatches` are the steps' kl_mean (and `accuracies` their rollout accuracy)."""
    alphas = []
    for step, mismatch in enumerate(mismatches):
        alphas.append(ladder.alpha(step))
        ladder.observe(step, {"kl_mean": mismatch, "rollout_accuracy": accuracies[step] if accuracies else 0.5})
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


def test_the_guard_steps_down_when_the_accuracy_falls_below_its_mean_before_the_rung():
    # hold 2: rungs 0 (steps 0-1), 0.5 (2-3), 1 (4-5), then at the top; every mismatch within the cap
    mismatches = [1.0] * 20
    accuracies = [0.40, 0.40, 0.50, 0.50, 0.50] + [0.32] * 15
    ladder = MismatchLadder([0.0, 0.5, 1.0], hold_steps=2, cap=3.0, accuracy_drop=0.1)
    alphas = climb(ladder, mismatches, accuracies)
    # rung 1.0 first trained at step 4; its reference is the mean of steps 0-3 (0.45). Checks after 4 steps at it
    # (steps 4-7: mean 0.365, a drop of 0.085), then every 2: steps 6-9, mean 0.32, a drop of 0.13: down to 0.5.
    # Rung 0.5's reference (steps 0-1: 0.40) is not undercut by more than 0.1 (0.32): it stays.
    assert alphas == [0.0, 0.0, 0.5, 0.5] + [1.0] * 6 + [0.5] * 10
    rows = ladder.drain_decisions()
    assert rows[-1]["tried_alpha"] == 1.0 and rows[-1]["alpha"] == 0.5 and rows[-1]["step"] == 10
    assert rows[-1]["reference_accuracy"] == pytest.approx(0.45) and rows[-1]["accuracy"] == pytest.approx(0.32)
    # without the guard, and with it where the accuracy holds, the climb is the unguarded ladder's
    assert climb(MismatchLadder([0.0, 0.5, 1.0], 2, 3.0), mismatches, accuracies) == [0.0, 0.0, 0.5, 0.5] + [1.0] * 16
    assert climb(MismatchLadder([0.0, 0.5, 1.0], 2, 3.0, 0.1), mismatches) == [0.0, 0.0, 0.5, 0.5] + [1.0] * 16


def test_the_guard_steps_down_rung_by_rung_and_never_below_the_lowest():
    ladder = MismatchLadder([0.0, 0.5, 1.0], hold_steps=1, cap=3.0, accuracy_drop=0.05)
    alphas = climb(ladder, [1.0] * 12, [0.5, 0.5, 0.5] + [0.1] * 9)
    # 0.5 at step 1, 1.0 from step 2 (reference: steps 0-1, 0.5): steps 2-3 fall to 0.3 -> 0.5 at step 4; 0.5's
    # reference (step 0, 0.5) is undercut by steps 4-5 -> 0 from step 6, where no guard acts
    assert alphas == [0.0, 0.5, 1.0, 1.0, 0.5, 0.5] + [0.0] * 6


def test_a_resumed_guarded_ladder_takes_the_decisions_of_an_uninterrupted_one():
    mismatches, accuracies = [1.0] * 16, [0.5] * 6 + [0.2] * 10
    whole = climb(MismatchLadder([0.0, 0.5, 1.0], 2, 3.0, 0.1), mismatches, accuracies)
    assert 0.5 in whole[8:]  # the guard acted
    first = MismatchLadder([0.0, 0.5, 1.0], 2, 3.0, 0.1)
    head = climb(first, mismatches[:7], accuracies[:7])
    resumed = MismatchLadder([0.0, 0.5, 1.0], 2, 3.0, 0.1)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert head + climb(resumed, mismatches[7:], accuracies[7:]) == whole


@pytest.mark.parametrize(("overrides", "message"), [
    (["exposure.rungs=[0.5, 0.25]"], "do not ascend"),
    (["exposure.rungs=[0.0, 1.5]"], "leave"),
    (["exposure.rungs=[0.5]"], "rungs"),
    (["exposure.cap=1.0"], "cap"),
    (["exposure.accuracy_drop=0"], "accuracy_drop"),
])
def test_ladders_that_cannot_climb_are_refused(tiny_config, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, "exposure.policy=mismatch_ladder", *overrides)


def test_a_run_too_short_for_the_second_rung_or_for_the_guard_is_warned_about():
    assert MismatchLadderSettings(hold_steps=4).warnings(7, 32)
    assert not MismatchLadderSettings(hold_steps=4).warnings(8, 32)
    assert "accuracy_drop" in MismatchLadderSettings(hold_steps=4, accuracy_drop=0.06).warnings(12, 32)[0]
    assert not MismatchLadderSettings(hold_steps=4, accuracy_drop=0.06).warnings(13, 32)


def test_a_guard_whose_drop_is_within_the_chance_spread_of_its_means_is_warned_about():
    # two means of 2 x 4 x 32 = 256 rollouts differ by chance by sqrt(0.5 / 256) = 0.044 at most: 0.06 stands above
    # it; with 8 rollouts an update (64 a mean: 0.088) it does not
    assert guard_chance_spread(256) == pytest.approx(0.0442, abs=1e-4)
    guarded = MismatchLadderSettings(hold_steps=4, accuracy_drop=0.06)
    assert not guarded.warnings(100, 32)
    (warning,) = guarded.warnings(100, 8)
    assert warning.startswith("exposure.accuracy_drop 0.06:") and "two means of 64 graded rollouts" in warning
    assert "0.088" in warning and "train.batch_size" in warning
    assert not MismatchLadderSettings(hold_steps=16, accuracy_drop=0.06).warnings(100, 8)  # 256 a mean again
    assert not MismatchLadderSettings(hold_steps=4).warnings(100, 1)  # no guard, nothing to say


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


def test_the_diagnosis_reads_the_ladders_verdicts_as_the_alpha_of_the_next_update(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "exposure.policy=mismatch_ladder", "exposure.hold_steps=2",
                                  "exposure.rungs=[0.0, 0.5, 1.0]", "exposure.cap=1000", "train.steps=10"))
    run_dir = trainer.train()  # reward windows (the controller's L = 4) at steps 1, 3, 5 and 7
    decisions = [json.loads(line) for line in (run_dir / "decisions.jsonl").read_text().splitlines()]
    assert [(row["step"], row["alpha"]) for row in decisions] == [(2, 0.5), (4, 1.0), (6, 1.0)]
    (run,) = method_diagnoses({"ladder": [run_dir]})["ladder"].runs
    assert all("decisions.jsonl" not in line for line in run["warnings"])
    assert "decisions.jsonl: 3 verdicts before the last window, each one's α is metrics.jsonl's at the next update" \
        in run["checks"]
    # a verdict whose α is not the one trained with next is said
    decisions[1]["alpha"] = 0.5
    (run_dir / "decisions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in decisions))
    (run,) = method_diagnoses({"ladder": [run_dir]})["ladder"].runs
    assert "decisions.jsonl: the α of the verdicts at steps [4] is not metrics.jsonl's α at the next update" \
        in run["warnings"]


def test_a_guarded_run_takes_the_decisions_its_logged_metrics_replay_to(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "exposure.policy=mismatch_ladder", "exposure.hold_steps=1",
                                  "exposure.rungs=[0.0, 0.5, 1.0]", "exposure.cap=1000", "exposure.accuracy_drop=1e-6",
                                  "train.steps=8"))
    metrics = read_metrics(trainer.train() / "metrics.jsonl")
    replayed = climb(MismatchLadder([0.0, 0.5, 1.0], 1, 1000.0, 1e-6), [row["kl_mean"] for row in metrics],
                     [row["rollout_accuracy"] for row in metrics])
    assert [row["alpha"] for row in metrics] == replayed
