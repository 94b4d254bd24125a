"""The hint-reliance penalty of exposure per problem (ours, after HiLL; docs/method.md#hint-reliance): each credited
problem's reward loses μ · (ℓ_i − ℓ_i^hint), recomputed by hand on the policy, and through the recipe against the
base model's own NLLs at the first step."""

from __future__ import annotations

import json

import pytest

from atesd.config import ConfigError, load_config
from atesd.exposure import ProblemView
from atesd.train.forwards import StepCost
from atesd.train.recipe import Trainer

PER_PROBLEM = ("method=atesd", "exposure.policy=controller", "exposure.per_problem=true")


def test_the_penalty_by_hand():
    settings = load_config(None, [*PER_PROBLEM, "exposure.controller.lookahead=1",
                                  "exposure.controller.credited_problems=2",
                                  "exposure.controller.hint_reliance_weight=0.5",
                                  "exposure.controller.teacher_grounded_weight=0.1"]).exposure
    policy = settings.build(10, 0)
    views = [ProblemView(key, False, 0.5, 3) for key in (4, 9, 7)]
    alphas = policy.alphas(0, views)
    assert policy.nll_wanted(0) == [4, 9]
    assert policy.hinted_wanted(0) == [(4, alphas[0]), (9, alphas[1])]  # the credited problems at their own α
    policy.measured(0, [2.0, 3.0], [-1.0, -2.0, -5.0])
    policy.relied(0, [1.5, 1.0])  # the hint makes the references likelier by 0.5 and 2 nats a token
    policy.alphas(1, [ProblemView(key, True, 0.5, 3) for key in (1, 2, 3)])
    policy.measured(1, [2.2, 2.4, 1.0, 2.5], [-1.0, -1.0, -1.0])  # this step's two, then step 0's after the update
    policy.relied(1, [2.0, 2.0])
    (row,) = policy.drain_decisions()
    assert row["reliance"] == [0.5, 2.0]
    assert row["G_lp"] == pytest.approx([1.0, 0.5])
    assert row["R"] == pytest.approx([1.0 + 0.1 * -1.0 - 0.5 * 0.5, 0.5 + 0.1 * -2.0 - 0.5 * 2.0])


def test_without_the_penalty_nothing_more_is_measured():
    policy = load_config(None, PER_PROBLEM).exposure.build(10, 0)
    policy.alphas(0, [ProblemView(1, False, 0.5, 3)])
    assert policy.hinted_wanted(0) == []


@pytest.mark.parametrize("overrides,message", [
    (["method=atesd", "exposure.policy=controller", "exposure.controller.hint_reliance_weight=0.5"],
     "controller.hint_reliance_weight: not read by the batch-level controller"),
    ([*PER_PROBLEM, "exposure.controller.credit=alignment", "exposure.controller.hint_reliance_weight=0.5"],
     "controller.hint_reliance_weight: not read by the controller per problem"),
    ([*PER_PROBLEM, "exposure.controller.hint_reliance_weight=-1"], "exposure.controller.hint_reliance_weight"),
])
def test_the_penalty_where_it_cannot_act_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.slow
def test_the_first_steps_reliance_is_the_base_models_and_the_reward_pays_it(tiny_config, tmp_path):
    config = tiny_config(tmp_path, "run.name=hill", *PER_PROBLEM, "exposure.controller.lookahead=1",
                         "exposure.controller.credited_problems=2", "exposure.controller.hint_reliance_weight=0.5",
                         "train.steps=3", "train.checkpoint_every=3")
    trainer = Trainer(config)
    trainer.train()
    rows = [json.loads(line) for line in (trainer.run_dir / "decisions.jsonl").read_text().splitlines()]
    first = rows[0]
    assert first["step"] == 1 and len(first["reliance"]) == 2
    rewarded = [row for row in rows if row["R"] is not None]  # the last step's waits past the run's end
    assert len(rewarded) == 2
    for row in rewarded:
        expected = [p + 0.1 * g - 0.5 * h for p, g, h in zip(row["G_lp"], row["G_gt"], row["reliance"])]
        assert row["R"] == pytest.approx(expected)
    # measured before the first update: the base model's NLLs of the two references, plain and hinted
    fresh = Trainer(config.model_copy(update={"run": config.run.model_copy(update={"name": "fresh"})}))
    problems = [fresh.train_problems[key] for key in first["problem"][:2]]
    plain = fresh.student.reference_nlls(problems, StepCost())
    hinted = fresh.student.reference_nlls(problems, StepCost(), first["alpha"][:2])
    assert first["reliance"] == pytest.approx([p - h for p, h in zip(plain, hinted)], rel=1e-5)
