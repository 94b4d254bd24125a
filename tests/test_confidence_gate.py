"""The teacher-confidence gate (atesd.exposure.confidence_gate), the exposure rule added the documented way: one module
and one registry line (docs/architecture.md#adding-an-exposure-rule). Its decisions, its settings, its checkpoint,
what the registry makes of it, and a run of the recipe with it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from atesd.config import ConfigError, load_config
from atesd.experiments.presets import METHOD_NAMES, methods
from atesd.exposure import REGISTRY, ProblemView, build_exposure_policy
from atesd.exposure.confidence_gate import ConfidenceGateExposure
from atesd.train.metrics import read_metrics
from atesd.train.recipe import Trainer
from atesd.train.state_io import load_state, save_state

SRC = Path(__file__).resolve().parents[1] / "src" / "atesd"


def gate(*overrides: str, seed: int = 0) -> ConfidenceGateExposure:
    policy = build_exposure_policy(load_config(None, ["exposure.policy=confidence_gate", *overrides]).exposure, 10,
                                   seed)
    assert isinstance(policy, ConfidenceGateExposure)
    return policy


def views(*keys: int) -> list[ProblemView]:
    return [ProblemView(key, False, 0.5, 4) for key in keys]


def test_an_unsure_teacher_is_shown_more_and_a_sure_one_less():
    policy = gate("exposure.target_nll=0.5", "exposure.rate=0.5", "exposure.start_alpha=0.4")
    assert policy.alphas(0, views(1, 2, 3)) == [0.4, 0.4, 0.4]  # first visits
    # the teacher's log-prob of each reference at 0.4: problem 1 unsure (NLL 1.3), 2 sure (0.1), 3 not measured
    policy.measured(0, [], [-1.3, -0.1, math.nan])
    assert policy.alphas(1, views(1, 2, 3)) == pytest.approx([0.4 + 0.5 * 0.8, 0.4 - 0.5 * 0.4, 0.4])
    assert policy.alphas(1, views(9)) == pytest.approx([0.8, 0.2, 0.4])  # asking twice for a step: the same
    policy.measured(1, [], [-5.0, -0.0, -0.5])
    # clipped to [alpha_min, alpha_max]; at its target NLL a problem keeps its α
    assert policy.alphas(2, views(1, 2, 3)) == pytest.approx([1.0, 0.05, 0.4])


def test_the_gate_measures_g_every_step_and_logs_one_row_per_step():
    policy = gate()
    assert policy.uses_teacher_ref_logp and policy.single_process and policy.nll_wanted(0) == []
    policy.alphas(0, views(4, 5))
    policy.measured(0, [], [-0.2, -0.9])
    policy.alphas(1, views(5))
    rows = policy.drain_decisions()
    assert [row["step"] for row in rows] == [1, 2] and rows[1]["problem"] == [5]
    assert rows[1]["alpha"] == pytest.approx([0.5 + 0.5 * 0.4]) and rows[1]["last_teacher_nll"] == [0.9]


def test_the_gate_resumed_takes_the_same_decisions(tmp_path):
    def run(policy, steps):
        decided = []
        for step in steps:
            keys = [(step * 3 + i) % 7 for i in range(3)]
            alphas = policy.alphas(step, views(*keys))
            policy.measured(step, [], [-(0.2 + alpha * (key % 3)) for key, alpha in zip(keys, alphas)])
            decided.append(alphas)
        return decided

    expected = run(gate(), range(12))
    first = gate()
    head = run(first, range(5))
    save_state(first.state_dict(), tmp_path, "exposure")
    resumed = gate()
    resumed.load_state_dict(load_state(tmp_path, "exposure"))
    assert head + run(resumed, range(5, 12)) == expected
    assert len({alpha for alphas in expected for alpha in alphas}) > 5


@pytest.mark.parametrize("overrides,message", [
    (["exposure.policy=confidence_gate", "exposure.rate=0"], "exposure.rate"),
    (["exposure.policy=confidence_gate", "exposure.start_alpha=1.5"], "exposure.start_alpha"),
    (["exposure.policy=confidence_gate", "exposure.hold_steps=2"], "exposure.hold_steps: unknown key"),
    (["exposure.policy=confidence_gate", "method=grpo"], "method 'grpo' takes exposure.policy fixed"),
    (["exposure.policy=confidence_gate", "method=atesd"], "method 'atesd' takes exposure.policy controller"),
    (["exposure.target_nll=0.3"], "exposure.target_nll: unknown key"),  # another policy's setting
])
def test_bad_gate_settings_are_refused_by_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_the_registry_makes_the_gate_a_compare_method_and_a_per_problem_run_for_diagnose():
    settings = load_config(None, ["exposure.policy=confidence_gate"]).exposure
    assert REGISTRY["confidence_gate"] is type(settings) and settings.methods == ("opsd",)
    assert not settings.reads_run_length and settings.reading().per_problem
    assert "confidence-gate" in METHOD_NAMES
    assert methods(0.5)["confidence-gate"].overrides == ("exposure.policy=confidence_gate",)


def test_the_gates_name_appears_in_its_own_module_and_one_registry_line():
    found = {path.relative_to(SRC).as_posix(): sum("confidence_gate" in line for line in path.read_text().splitlines())
             for path in SRC.rglob("*.py") if "confidence_gate" in path.read_text()}
    assert found == {"exposure/confidence_gate.py": found["exposure/confidence_gate.py"], "exposure/__init__.py": 1}


@pytest.mark.slow
def test_a_run_with_the_gate_trains_and_logs_each_problems_alpha(tiny_config, tmp_path):
    config = tiny_config(tmp_path, "exposure.policy=confidence_gate", "train.steps=3", "train.teacher_ref_logp_every=0")
    run = Trainer(config).train()
    metrics = read_metrics(run / "metrics.jsonl")
    decisions = read_metrics(run / "decisions.jsonl")
    assert len(metrics) == 3 and all(math.isfinite(row["teacher_ref_logp"]) for row in metrics)  # g every step
    assert [row["step"] for row in decisions] == [1, 2, 3]
    assert all(row["alpha"] == pytest.approx(sum(d["alpha"]) / len(d["alpha"]))
               for row, d in zip(metrics, decisions))
    assert all(alpha == pytest.approx(0.5) for alpha in decisions[0]["alpha"])  # every problem's first visit
