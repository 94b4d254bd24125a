"""Our exposure signals (docs/controller.md#signals-with-power): the curriculum-learning estimators and the
within-step slope by hand, the central difference against exact gradients, random exposure per problem, the
alignment credit of exposure per problem, and the switches' validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from atesd.config import ConfigError, load_config
from atesd.exposure import build_exposure_policy
from atesd.exposure.random import RandomPerProblemExposure
from atesd.exposure.signals import (
    absolute_progress,
    quantile_rescaled,
    signed_progress,
    window_slope,
    within_step_slope,
)
from atesd.train.signals import losses_along, problem_losses, unit
from atesd.train.state_io import load_state, save_state
from tests.test_exposure import exposure_config, step_stats, views

# ---------------------------------------------------------------------------------------- estimators by hand


def test_window_slope_is_the_negated_least_squares_slope():
    assert window_slope([5.0, 4.0, 3.0, 2.0]) == pytest.approx(1.0)  # falls 1 per update: progress +1
    # points 3, 1, 2 at i = 0, 1, 2: slope (−1·3 + 0·1 + 1·2) / 2 = −0.5, so progress +0.5
    assert window_slope([3.0, 1.0, 2.0]) == pytest.approx(0.5)
    assert math.isnan(window_slope([1.0, float("nan"), 0.5])) and math.isnan(window_slope([1.0]))


def test_absolute_progress_counts_forgetting_like_learning():
    assert absolute_progress([2.0, 1.0, 1.5]) == pytest.approx(0.5)
    assert absolute_progress([1.0, 2.0, 1.75]) == pytest.approx(0.75)
    assert math.isnan(absolute_progress([1.0, float("nan")]))


def test_signed_progress_is_g_lp_without_its_clip():
    # drops 1, −0.5, 0.25 with γ = 0.5: 1 − 0.25 + 0.0625
    assert signed_progress([3.0, 2.0, 2.5, 2.25], 0.5) == pytest.approx(0.8125)
    assert signed_progress([3.0, 2.0], 0.0) == pytest.approx(1.0)


def test_quantile_rescaling_maps_the_20th_and_80th_percentiles_to_minus_one_and_one():
    history = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # numpy's linear percentiles: q20 = 1, q80 = 4
    assert quantile_rescaled(1.0, history) == pytest.approx(-1.0)
    assert quantile_rescaled(4.0, history) == pytest.approx(1.0)
    assert quantile_rescaled(2.5, history) == pytest.approx(0.0)
    assert quantile_rescaled(100.0, history) == 1.0 and quantile_rescaled(-100.0, history) == -1.0
    assert math.isnan(quantile_rescaled(1.0, [2.0]))  # too little history
    assert math.isnan(quantile_rescaled(1.0, [2.0, 2.0, 2.0]))  # no spread
    assert quantile_rescaled(2.5, [*history, float("nan")]) == pytest.approx(0.0)  # NaNs left out


def test_within_step_slope_by_hand():
    assert within_step_slope([0.0, 0.5, 1.0], [1.0, 2.0, 3.0]) == pytest.approx(2.0)
    assert within_step_slope([0.2, 0.4, 0.6, 0.8], [1.0, 0.0, 1.0, 0.0]) == pytest.approx(-1.0)
    assert math.isnan(within_step_slope([0.5, 0.5], [1.0, 2.0]))  # α did not vary within the step
    assert math.isnan(within_step_slope([0.5], [1.0]))


# ---------------------------------------------------------------------------------------- the central difference


def test_a_forward_difference_gives_each_losss_gradient_along_the_direction_and_restores_the_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    inputs = torch.randn(5, 3)
    parameters = list(model.parameters())
    before = [p.detach().clone() for p in parameters]
    direction, norm = unit([torch.randn_like(p) for p in parameters])
    assert norm > 0 and sum(float((d * d).sum()) for d in direction) == pytest.approx(1.0)

    def losses() -> list[float]:
        return [float(v) for v in model(inputs).squeeze(-1) ** 2]

    at, moved = losses(), losses_along(parameters, direction, losses, epsilon=1e-4)
    for i in range(5):  # the exact directional derivative ⟨∇ L_i, d⟩ by autograd
        gradient = torch.autograd.grad(model(inputs[i:i + 1]).squeeze() ** 2, parameters)
        exact = sum(float((g * d).sum()) for g, d in zip(gradient, direction))
        assert (moved[i] - at[i]) / 1e-4 == pytest.approx(exact, rel=1e-2, abs=1e-4)
    assert all(torch.equal(p, b) for p, b in zip(parameters, before))  # restored bit for bit
    zero, norm = unit([torch.zeros(2)])
    assert norm == 0 and torch.equal(zero[0], torch.zeros(2))


def test_problem_losses_split_the_tokens_by_completion():
    losses = problem_losses(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), [[7, 7], [7], [7, 7, 7]], scale=0.5)
    assert losses == [1.5, 1.5, 7.5]


# ---------------------------------------------------------------------------------------- random exposure per problem


def test_random_exposure_per_problem_draws_each_problem_uniformly_and_resumes(tmp_path):
    config = load_config(None, ["exposure.policy=random", "exposure.per_problem=true", "exposure.alpha_min=0.2",
                                "exposure.alpha_max=0.6"]).exposure
    policy = build_exposure_policy(config, 100, seed=3)
    assert isinstance(policy, RandomPerProblemExposure) and policy.single_process
    assert not policy.uses_teacher_ref_logp and policy.nll_wanted(0) == []
    draws = [policy.alphas(step, views(step, size=8)) for step in range(200)]
    assert policy.alphas(199, views(199, size=8)) == draws[-1]  # asking twice changes nothing
    flat = np.array(draws).ravel()
    assert flat.min() >= 0.2 and flat.max() <= 0.6 and abs(flat.mean() - 0.4) < 0.01
    assert len({round(a, 12) for a in draws[0]}) == 8  # each problem its own α
    save_state(policy.state_dict(), tmp_path, "exposure")
    resumed = build_exposure_policy(config, 100, seed=3)
    resumed.load_state_dict(load_state(tmp_path, "exposure"))
    assert resumed.alphas(199, views(199, size=8)) == draws[-1]
    assert resumed.alphas(200, views(200, size=8)) == policy.alphas(200, views(200, size=8))
    with pytest.raises(ValueError, match="random exposure per problem"):
        resumed.load_state_dict({"policy": "random"})


# ---------------------------------------------------------------------------------------- the alignment credit


def test_exposure_per_problem_with_the_alignment_credit_rewards_every_problem_the_same_step(tmp_path):
    settings = ("exposure.per_problem=true", "exposure.controller.credit=alignment",
                "exposure.controller.decisions_per_update=2", "exposure.controller.hidden_sizes=[8]")
    policy = build_exposure_policy(exposure_config(*settings), 12, seed=2)
    assert not policy.uses_teacher_ref_logp  # no G_gt under the alignment credit
    alphas = policy.alphas(0, views(0))
    assert policy.nll_wanted(0) == []  # no reference NLL passes
    policy.aligned(0, [0.5, -0.25, 0.0, 1.0])
    (row,) = policy.drain_decisions()
    assert row["step"] == 1 and row["logged_at"] == 1 and row["credited"] == 4 and row["alpha"] == alphas
    assert row["R"] == row["G_lp"] == [0.5, -0.25, 0.0, 1.0] and row["G_gt"] is None
    assert policy.observe(0, step_stats(0.5, 5.0, 4.9, -1.0)) == {}  # one rewarded step: no update yet
    policy.alphas(1, views(1))
    policy.aligned(1, [1.0, 2.0, 3.0, 4.0])
    record = policy.observe(1, step_stats(0.5, 4.9, 4.8, -1.0))
    assert record["controller_updates"] == 1 and record["controller_reward_mean"] == pytest.approx(1.40625)


def test_a_policy_whose_alpha_rises_with_the_alignment_credit_learns_to_raise_alpha():
    """A simulated step: every problem's credit is 0.5 · α_i plus a step effect 10 times larger and noise; the
    advantages are centred within each step, so the step effect cancels and the policy's mean rises."""
    rng = np.random.default_rng(0)
    policy = build_exposure_policy(exposure_config("exposure.per_problem=true", "exposure.controller.credit=alignment",
                                                   "exposure.controller.hidden_sizes=[8]"), 300, seed=0)
    for step in range(300):
        alphas = policy.alphas(step, views(step, size=16))
        shift = float(rng.normal(0, 5.0))
        policy.aligned(step, [0.5 * a + shift + float(rng.normal(0, 0.1)) for a in alphas])
        policy.observe(step, step_stats(float(np.mean(alphas)), 5.0, 4.9, -1.0))
    assert np.mean(policy.alphas(300, views(300, size=16))) > 0.8


# ---------------------------------------------------------------------------------------- the switches


@pytest.mark.parametrize("overrides,message", [
    (["method=atesd", "exposure.policy=controller", "exposure.controller.credit=alignment"],
     "credits each problem's own alpha: set per_problem: true"),
    (["exposure.policy=fixed", "exposure.per_problem=true"], "exposure.per_problem: unknown key"),
    (["method=atesd", "exposure.policy=controller", "exposure.controller.progress_signal=style_nll",
      "data.probe_size=0"], "the style probe is sampled on the probe"),
    (["exposure.policy=random", "exposure.controller.credit=alignment", "exposure.controller.alignment_probe=style",
      "data.probe_size=0"], "the style probe is sampled on the probe"),
    (["method=sft", "exposure.policy=random", "exposure.controller.credit=alignment"],
     "method 'sft' takes exposure.policy fixed, not 'random'"),
    (["exposure.policy=random", "exposure.controller.progress_signal=nll"], "progress_signal"),
    (["exposure.policy=random", "exposure.controller.credit=both"], "credit"),
    (["exposure.policy=random", "exposure.controller.style_probe_samples=0"], "style_probe_samples"),
    (["exposure.policy=random", "exposure.controller.alignment_refresh=0"], "alignment_refresh"),
])
def test_inconsistent_signal_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, overrides)
    assert message in str(excinfo.value)


def test_which_runs_measure_the_style_probe_and_the_alignment():
    default = load_config(None, []).exposure
    assert not default.uses_style_probe and not default.measures_alignment
    paper = load_config(None, ["method=atesd", "exposure.policy=controller"]).exposure  # the paper's controller
    assert not paper.uses_style_probe and not paper.measures_alignment
    style = load_config(None, ["method=atesd", "exposure.policy=controller",
                               "exposure.controller.progress_signal=style_nll"]).exposure
    assert style.uses_style_probe and not style.measures_alignment
    aligned = load_config(None, ["exposure.policy=random", "exposure.per_problem=true",
                                 "exposure.controller.credit=alignment",
                                 "exposure.controller.alignment_probe=reference"]).exposure
    assert aligned.measures_alignment and not aligned.uses_style_probe
    with pytest.raises(ConfigError, match="exposure.controller: unknown key"):  # a fixed α has nothing to compare
        load_config(None, ["exposure.controller.credit=alignment"])
