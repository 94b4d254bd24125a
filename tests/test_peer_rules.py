"""The peers' exposure rules per problem (AdaBack, SEELE, PAINT): by hand, on simulated learners whose answer is known,
through checkpoints, and from the config; AR-OPD's teacher is tested with the losses (tests/test_divergence.py) and the
trainer (tests/test_trainer.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from atesd.config import ConfigError, load_config
from atesd.exposure import ProblemView, build_exposure_policy
from atesd.exposure.adaback import AdaBackExposure
from atesd.exposure.paint import PaintExposure, overlap
from atesd.exposure.seele import SeeleExposure, alpha_for_accuracy, fit_logistic, logistic
from atesd.train.state_io import load_state, save_state


def rule(name: str, *overrides: str, seed: int = 0):
    policy = build_exposure_policy(load_config(None, [f"exposure.policy={name}", *overrides]).exposure, 100, seed)
    assert policy.single_process and not policy.uses_teacher_ref_logp
    return policy


def view(key: int, correct: bool = False, rollout: str = "", reference: tuple[str, ...] = ()) -> ProblemView:
    return ProblemView(key, correct, 0.5, max(len(reference), 1), None, rollout, reference)


class RevisitLearner:
    """A pool of problems visited in a fixed cycle, `batch` per step. A problem's rollout at a visit is right with
    probability `accuracy(key, α)`, α the exposure of its previous visit (the first visit: α = 0.5): what the
    rules' attempts read as the reward of that exposure."""

    def __init__(self, seed: int, pool: int, batch: int, accuracy) -> None:
        self.rng, self.pool, self.batch, self.accuracy = np.random.default_rng(seed), pool, batch, accuracy
        self.last: dict[int, float] = {}

    def views(self, step: int) -> list[ProblemView]:
        keys = [(step * self.batch + i) % self.pool for i in range(self.batch)]
        return [view(key, bool(self.rng.random() < self.accuracy(key, self.last.get(key, 0.5)))) for key in keys]

    def run(self, policy, steps: range) -> list[list[float]]:
        decided = []
        for step in steps:
            views = self.views(step)
            alphas = policy.alphas(step, views)
            assert policy.alphas(step, views) == alphas  # asking twice changes nothing
            policy.measured(step, [], [float("nan")] * len(views))
            assert policy.nll_wanted(step) == [] and policy.observe(step, {}) == {}
            self.last.update((v.key, a) for v, a in zip(views, alphas))
            decided.append(alphas)
        return decided


def per_problem_alphas(policy, learner: RevisitLearner, steps: int) -> dict[int, list[float]]:
    """Each problem's α over `steps`, in order."""
    by_problem: dict[int, list[float]] = {}
    for step in range(steps):
        learner.run(policy, range(step, step + 1))
        (row,) = policy.drain_decisions()
        for key, alpha in zip(row["problem"], row["alpha"]):
            by_problem.setdefault(key, []).append(alpha)
    return by_problem


# ---------------------------------------------------------------------------------------- AdaBack

def test_adaback_bisects_each_problem_on_its_last_attempt_by_hand():
    policy = rule("adaback", "exposure.adaback.start_bounds=[0.2, 0.8]")
    assert isinstance(policy, AdaBackExposure)
    (first,) = policy.alphas(0, [view(7)])  # no attempt yet: the population bounds
    assert 0.2 <= first <= 0.8 and policy.bounds[7] == [0.2, 0.8, 0.8]
    (second,) = policy.alphas(1, [view(7, correct=False)])  # the last share was not enough: reveal more
    assert policy.bounds[7] == [first, 0.8, 0.8] and first <= second <= 0.8
    assert policy.population == pytest.approx([0.8 * 0.2 + 0.2 * first, 0.8])  # the EMA at the decay of 0.8
    (third,) = policy.alphas(2, [view(7, correct=True)])  # it was: less, and the problem's max ratchets down
    assert policy.bounds[7] == [first, second, second] and first <= third <= second
    policy.alphas(3, [view(7, correct=False)])
    assert policy.bounds[7] == [third, second, second]  # back up to the max, never to the start's 0.8
    rows = policy.drain_decisions()
    assert [row["reward"] for row in rows] == [[None], [0.0], [1.0], [0.0]]
    assert rows[1]["lower"] == [first] and rows[1]["upper"] == [0.8] and rows[0]["problem"] == [7]


def test_adaback_threshold_and_clip():
    policy = rule("adaback", "exposure.adaback.threshold=1.0", "exposure.alpha_min=0.3", "exposure.alpha_max=0.4")
    alphas = [policy.alphas(step, [view(1, correct=True)])[0] for step in range(20)]
    assert all(0.3 <= a <= 0.4 for a in alphas)
    assert all(row["lower"][0] <= row["upper"][0] for row in policy.drain_decisions())
    # with τ = 1 only a reward of 1 counts as enough; a reward of 1 is, so the share only goes down
    assert policy.bounds[1][1] == policy.bounds[1][2] == alphas[-2]


@pytest.mark.parametrize("width,tolerance", [(0.0, 1e-9), (0.02, 0.05)])
def test_adaback_converges_to_the_share_where_the_reward_crosses_the_threshold(width, tolerance):
    """Each problem's reward is right (1) with a probability that crosses τ = 0.5 at its own share s*, a step
    (width 0) or a steep logistic: the bisection ends at s*, exactly for the step and within 0.05 on average
    for the logistic (the max only ratchets down, so a lucky success below s* is kept)."""
    thresholds = {key: 0.2 + 0.6 * key / 15 for key in range(16)}

    def accuracy(key: int, alpha: float) -> float:
        if width == 0:
            return float(alpha >= thresholds[key])
        return 1.0 / (1.0 + math.exp(-(alpha - thresholds[key]) / width))

    for seed in range(3):
        by_problem = per_problem_alphas(rule("adaback", seed=seed), RevisitLearner(seed, 16, 8, accuracy), 200)
        errors = [abs(float(np.median(alphas[-20:])) - thresholds[key]) for key, alphas in by_problem.items()]
        assert float(np.mean(errors)) <= tolerance, (seed, errors)


# ---------------------------------------------------------------------------------------- SEELE

def test_logistic_fit_and_its_inverse_by_hand():
    rng = np.random.default_rng(0)
    alphas = rng.uniform(0, 1, 2000)
    params = fit_logistic(list(zip(alphas, (rng.random(2000) < logistic(alphas, 0.1, 8.0, 0.6)).astype(float))))
    assert params == pytest.approx((0.1, 8.0, 0.6), abs=0.1, rel=0.25)
    assert alpha_for_accuracy((0.1, 8.0, 0.6), 0.5) == pytest.approx(0.6 + math.log(0.4 / 0.5) / 8.0)
    assert float(logistic(np.array(alpha_for_accuracy(params, 0.5)), *params)) == pytest.approx(0.5)
    assert alpha_for_accuracy((0.6, 8.0, 0.6), 0.5) == -math.inf  # the floor alone reaches the target
    # equal rewards are the fit's limits, without a fit: all right → the least α, all wrong → the most
    assert alpha_for_accuracy(fit_logistic([(0.2, 1.0), (0.5, 1.0), (0.9, 1.0)]), 0.5) == -math.inf
    assert alpha_for_accuracy(fit_logistic([(0.2, 0.0), (0.5, 0.0), (0.9, 0.0)]), 0.5) >= 2.0


def test_seele_falls_back_from_its_own_curve_to_the_populations_to_uniform(monkeypatch):
    policy = rule("seele", "exposure.seele.explore=0", "exposure.seele.min_points=3")
    assert isinstance(policy, SeeleExposure)

    def sources() -> list[str]:
        return policy.drain_decisions()[-1]["source"]

    policy.alphas(0, [view(key) for key in range(4)])
    assert sources() == ["uniform"] * 4  # nothing attempted yet
    policy.alphas(1, [view(0, True), view(1, False), view(2, True), view(9)])  # three attempts complete
    assert sources() == ["population"] * 4 and len(policy.population) == 3
    for step in range(2, 4):  # problem 0 comes back until it has three attempts of its own
        policy.alphas(step, [view(0, step % 2 == 0)])
    assert sources() == ["own"] and len(policy.own[0]) == 3
    monkeypatch.setattr("atesd.exposure.seele.curve_fit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError()))
    policy.alphas(4, [view(0, True), view(3, False)])  # every fit fails: uniform
    assert sources() == ["uniform", "uniform"]
    always = rule("seele", "exposure.seele.explore=1")
    always.alphas(0, [view(1)])
    assert always.drain_decisions()[-1]["source"] == ["explore"]


def test_seele_finds_the_exposure_of_half_accuracy_on_a_known_logistic():
    """Every problem's accuracy at the next visit is 0.1 + 0.9 σ(8 (α − 0.6)) of its last α, 50 % at α* = 0.572.
    Problems come back too rarely for curves of their own (history 3 < min_points 4): the population's curve
    decides, and its decisions centre on α*."""
    target = alpha_for_accuracy((0.1, 8.0, 0.6), 0.5)
    for seed in range(3):
        policy = rule("seele", "exposure.seele.history=3", seed=seed)
        learner = RevisitLearner(seed, 200, 8, lambda key, alpha: float(logistic(np.array(alpha), 0.1, 8.0, 0.6)))
        chosen = []
        for step in range(200):
            learner.run(policy, range(step, step + 1))
            row = policy.drain_decisions()[0]
            chosen += [a for a, source in zip(row["alpha"], row["source"]) if source == "population"]
        late = chosen[len(chosen) // 2:]
        assert len(late) > 200 and abs(float(np.median(late)) - target) < 0.03, (seed, np.median(late))


def test_seele_fits_each_problem_its_own_curve_when_it_has_the_attempts():
    """Half the problems reach 50 % at α ≈ 0.29, half at α ≈ 0.74; each comes back every other step, so each
    soon has a curve of its own, and its decisions centre on its own α*."""
    locations = {0: 0.3, 1: 0.75}
    targets = {kind: alpha_for_accuracy((0.05, 10.0, m), 0.5) for kind, m in locations.items()}
    for seed in range(3):
        learner = RevisitLearner(seed, 16, 8, lambda key, alpha: float(logistic(np.array(alpha), 0.05, 10.0,
                                                                                locations[key % 2])))
        policy = rule("seele", seed=seed)
        by_kind: dict[int, list[float]] = {0: [], 1: []}
        for step in range(160):
            learner.run(policy, range(step, step + 1))
            row = policy.drain_decisions()[0]
            for key, alpha, source in zip(row["problem"], row["alpha"], row["source"]):
                if source == "own" and step >= 80:
                    by_kind[key % 2].append(alpha)
        for kind, alphas in by_kind.items():
            assert len(alphas) > 200 and abs(float(np.median(alphas)) - targets[kind]) < 0.05, (seed, kind)


# ---------------------------------------------------------------------------------------- PAINT

REFERENCE = ("= 14", "= 22", "= 25", "= 23")  # the embedded task's 'values' reference of 6+8+8+3-2


def test_overlap_by_hand():
    assert overlap("6+8=14\n14+8=22\n22+3=25\n25-2=23\n\\boxed{23}", REFERENCE) == 1.0
    assert overlap("6+8=14\n14+8=21\n21+3=24\n24-2=22", REFERENCE) == 0.5  # 14, and 22 by chance
    assert overlap("", REFERENCE) == 0.0 and overlap("anything", ()) == 0.0
    assert overlap("x = 1.5 and y", ("so x=1.5", "and  y", "z")) == pytest.approx(2 / 3)  # a text segment: spaces out
    assert overlap("12", ("= 1",)) == 0.0  # numbers match whole, not as parts of others


def test_paint_gives_less_exposure_to_rollouts_that_overlap_the_reference_more():
    policy = rule("paint", "exposure.alpha_min=0.1")
    assert isinstance(policy, PaintExposure)
    rollouts = ["7+7=14\n14+8=22\n22+3=25\n25-2=23", "6+8=14\n14+8=22\n22+3=26\n26-2=24", "6+8=14\n14+9=23",
                "no idea"]
    alphas = policy.alphas(0, [view(key, rollout=text, reference=REFERENCE) for key, text in enumerate(rollouts)])
    assert alphas == pytest.approx([0.1, 0.5, 0.5, 1.0])  # 1 − overlap (1, 1/2, 1/2 with 23 by chance, 0), clipped
    (row,) = policy.drain_decisions()
    assert row["overlap"] == pytest.approx([1.0, 0.5, 0.5, 0.0]) and row["alpha"] == alphas


# ---------------------------------------------------------------------------------------- every rule

@pytest.mark.parametrize("name", ["adaback", "seele", "paint"])
def test_a_rule_interrupted_and_resumed_takes_the_same_decisions(name, tmp_path):
    def accuracy(key: int, alpha: float) -> float:
        return float(logistic(np.array(alpha), 0.05, 10.0, 0.2 + 0.05 * (key % 10)))

    settings = ("exposure.seele.min_points=3",) if name == "seele" else ()
    straight = rule(name, *settings, seed=4)
    expected = RevisitLearner(4, 24, 8, accuracy).run(straight, range(40))
    learner = RevisitLearner(4, 24, 8, accuracy)
    first = rule(name, *settings, seed=4)
    head = learner.run(first, range(17))
    rows = first.drain_decisions()  # the trainer writes them before each checkpoint
    save_state(first.state_dict(), tmp_path, "exposure")
    resumed = rule(name, *settings, seed=4)
    resumed.load_state_dict(load_state(tmp_path, "exposure"))
    assert head + learner.run(resumed, range(17, 40)) == expected
    assert rows + resumed.drain_decisions() == straight.drain_decisions()
    if name != "paint":  # PAINT draws nothing
        assert len({a for alphas in expected for a in alphas}) > 100
    with pytest.raises(ValueError, match=f"config says '{name}'"):
        resumed.load_state_dict(rule("paint" if name != "paint" else "adaback").state_dict())


@pytest.mark.parametrize("overrides,key", [
    (["exposure.policy=adaback", "exposure.adaback.threshold=1.5"], "exposure.adaback.threshold"),
    (["exposure.policy=adaback", "exposure.adaback.start_bounds=[0.9, 0.1]"], "exposure.adaback.start_bounds"),
    (["exposure.policy=adaback", "exposure.adaback.population_decay=1"], "exposure.adaback.population_decay"),
    # the population's EMA is read only by first visits, which all come before any attempt completes
    (["exposure.policy=adaback", "exposure.adaback.population_decay=0.5"], "cannot change a decision"),
    (["exposure.policy=seele", "exposure.seele.target_accuracy=0"], "exposure.seele.target_accuracy"),
    (["exposure.policy=seele", "exposure.seele.min_points=2"], "exposure.seele.min_points"),
    (["exposure.policy=seele", "exposure.seele.explore=-0.1"], "exposure.seele.explore"),
    (["exposure.policy=seele", "exposure.seele.windw=3"], "exposure.seele.windw"),
    (["exposure.adaback.threshold=0.3"], "exposure.adaback: unknown key"),  # another policy's setting does nothing
    (["exposure.policy=paint", "method=atesd"], "set exposure.policy: controller"),
    (["exposure.policy=seele", "exposure.per_problem=true"], "per_problem"),
])
def test_bad_rule_settings_are_refused_by_name(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        load_config(None, overrides)
