"""SEELE's target accuracy per problem (arXiv 2509.06923; docs/method.md#seele) as an exposure rule: a 3-parameter
logistic curve of accuracy against exposure, fitted to recent attempts, and the α it predicts to give the target a*.

Attempts (α, r) are `rules.Attempts`: r is the correctness of the problem's rollout at its next visit (ours). Each
problem keeps its latest `history` attempts; the population keeps the latest `population_window` of every problem's.
The curve is p(α) = c + (1 − c) · σ(k · (α − m)): a floor c ∈ [0, 0.99], a slope k ∈ [0.001, 100] (accuracy rises
with exposure, as with SEELE's hints) and a location m ∈ [−1, 2], fitted by bounded least squares on the attempts'
0/1 rewards (`scipy.optimize.curve_fit`, with the curve's Jacobian). The α it predicts to give a* is
m + logit((a* − c) / (1 − c)) / k, clipped to [α_min, α_max] (α_min when the floor alone reaches a*). Attempts whose
rewards are all equal are not fitted: the least-squares limit is known (all 1: the floor rises to 0.99, α_min; all 0:
the curve is 0 wherever it was tried, α_max).

Which curve decides a problem's α (the fallback, ours): its own, once it has `min_points` attempts and the fit
succeeds; else the population's (fitted once per step) under the same conditions; else α ~ U(α_min, α_max). A fit
that raises, does not converge or gives a non-finite parameter has failed. With probability `explore` a decision is
uniform whatever the curves: SEELE's rounds within a step spread its hints, and one rollout per problem has no rounds,
so the spread the fits need comes from these draws (ours).
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator
from scipy.optimize import curve_fit

from atesd.exposure.base import ClippedSettings, ExposurePolicy, Preset, ProblemView, register
from atesd.exposure.rules import Attempts, ProblemRule
from atesd.settings import Section


class SeeleConfig(Section):
    """SEELE's target accuracy per problem (arXiv 2509.06923; docs/method.md#seele); every default but the target
    is ours."""

    target_accuracy: float = Field(0.5, gt=0, lt=1, description="a*: the accuracy the chosen alpha is predicted "
                                   "to give (the paper: about 0.5).")
    history: int = Field(8, ge=3, le=10_000, description="A problem's latest attempts its own curve is fitted on.")
    min_points: int = Field(4, ge=3, le=10_000, description="Attempts a curve needs (3 parameters); a problem with "
                            "fewer uses the population's curve, and a population with fewer draws alpha uniformly.")
    population_window: int = Field(256, ge=3, le=1_000_000, description="Latest attempts of every problem the "
                                   "population's curve is fitted on.")
    explore: float = Field(0.2, ge=0, le=1, description="Share of decisions drawn uniformly in [alpha_min, "
                           "alpha_max] instead of from a curve: spread in alpha that the fits need (ours).")

    @model_validator(mode="after")
    def _windows_hold_a_curve(self) -> SeeleConfig:
        # (history below min_points is legitimate: no problem gets a curve of its own, the population's decides)
        if self.population_window < self.min_points:
            raise ValueError(f"population_window {self.population_window} below min_points {self.min_points}: the "
                             "population's curve would never be fitted, and every problem without a curve of its own "
                             "would draw its alpha at random; raise it or lower min_points")
        return self


@register
class SeeleSettings(ClippedSettings):
    """``exposure.policy: seele``."""

    policy: Literal["seele"] = "seele"
    seele: SeeleConfig = Field(default_factory=SeeleConfig)

    presets: ClassVar[dict[str, Preset]] = {"seele": Preset("opsd.yaml", ("exposure.policy=seele",))}

    def build(self, total_steps: int, seed: int) -> ExposurePolicy:
        return SeeleExposure(self, seed)

# (floor c, slope k, location m): the bounds of the fit and its starting point.
LOWER, UPPER, START = (0.0, 1e-3, -1.0), (0.99, 100.0, 2.0), (0.05, 5.0, 0.5)
FIT_TOLERANCE = 1e-4


def logistic(alpha: np.ndarray, floor: float, slope: float, location: float) -> np.ndarray:
    """p(α) = c + (1 − c) · σ(k · (α − m))."""
    return floor + (1.0 - floor) / (1.0 + np.exp(-slope * (alpha - location)))


def logistic_jacobian(alpha: np.ndarray, floor: float, slope: float, location: float) -> np.ndarray:
    """∂p/∂(c, k, m) at each α, [n, 3]: the fit converges in fewer evaluations with it."""
    rise = 1.0 / (1.0 + np.exp(-slope * (alpha - location)))
    step = (1.0 - floor) * rise * (1.0 - rise)
    return np.stack([1.0 - rise, step * (alpha - location), -step * slope], axis=1)


def fit_logistic(attempts: Sequence[tuple[float, float]]) -> tuple[float, float, float] | None:
    """(c, k, m) fitted to (α, reward) attempts by bounded least squares; None when the fit fails. Equal rewards
    give the least-squares limit (see the module docstring) without a fit."""
    alphas, rewards = np.array(attempts, dtype=np.float64).T
    if np.all(rewards == rewards[0]):
        return (UPPER[0], UPPER[1], LOWER[2]) if rewards[0] >= 1 else (LOWER[0], UPPER[1], UPPER[2])
    try:
        with warnings.catch_warnings():  # a covariance that cannot be estimated is no failure of the fit itself
            warnings.simplefilter("ignore")
            # Tolerances of 1e-4 rather than 1e-8: separable 0/1 rewards drive the slope to its bound, which the
            # default tolerances chase for ~100 evaluations (~20 ms a fit, per problem and step) to move α by < 1e-3.
            params, _ = curve_fit(logistic, alphas, rewards, p0=START, bounds=(LOWER, UPPER), jac=logistic_jacobian,
                                  maxfev=500, xtol=FIT_TOLERANCE, ftol=FIT_TOLERANCE, gtol=FIT_TOLERANCE)
    except (RuntimeError, ValueError):
        return None
    return (float(params[0]), float(params[1]), float(params[2])) if np.all(np.isfinite(params)) else None


def alpha_for_accuracy(params: tuple[float, float, float], target: float) -> float:
    """The α at which the curve `params` reaches `target` (−inf when its floor already does; the caller clips)."""
    floor, slope, location = params
    if target <= floor:
        return -math.inf
    share = (target - floor) / (1.0 - floor)
    return location + math.log(share / (1.0 - share)) / slope


class SeeleExposure(ProblemRule):
    salt = 0x5EE1

    def __init__(self, config: SeeleSettings, seed: int) -> None:
        super().__init__(config, seed)
        self.settings = config.seele
        self.attempts = Attempts()
        self.own: dict[int, deque[tuple[float, float]]] = {}  # each problem's latest attempts
        self.population: deque[tuple[float, float]] = deque(maxlen=self.settings.population_window)

    def choose(self, step: int, views: Sequence[ProblemView]) -> tuple[list[float], dict[str, list[Any]]]:
        completed = [self.attempts.complete(view) for view in views]  # from the state before the step
        for view, attempt in zip(views, completed):
            if attempt is not None:
                self.own.setdefault(view.key, deque(maxlen=self.settings.history)).append(attempt)
                self.population.append(attempt)
        population = self._curve(self.population)
        alphas, sources = [], []
        for view in views:
            explore = bool(self.rng.random() < self.settings.explore)
            own = None if explore else self._curve(self.own.get(view.key, ()))
            if own is not None:
                alpha, source = alpha_for_accuracy(own, self.settings.target_accuracy), "own"
            elif population is not None and not explore:
                alpha, source = alpha_for_accuracy(population, self.settings.target_accuracy), "population"
            else:
                alpha = float(self.rng.uniform(self.alpha_min, self.alpha_max))
                source = "explore" if explore else "uniform"
            alphas.append(self.clip(alpha))
            sources.append(source)
            self.attempts.record(view.key, alphas[-1])
        return alphas, {"source": sources, "reward": [None if a is None else a[1] for a in completed]}

    def _curve(self, attempts: Sequence[tuple[float, float]]) -> tuple[float, float, float] | None:
        return fit_logistic(attempts) if len(attempts) >= self.settings.min_points else None

    def rule_state(self) -> dict[str, Any]:
        return {"attempts": self.attempts.state_dict(), "population": [list(a) for a in self.population],
                "own": [[key, [list(a) for a in history]] for key, history in self.own.items()]}

    def load_rule_state(self, state: Mapping[str, Any]) -> None:
        self.attempts.load_state_dict(state["attempts"])
        self.population = deque((tuple(a) for a in state["population"]), maxlen=self.settings.population_window)
        self.own = {int(key): deque((tuple(a) for a in history), maxlen=self.settings.history)
                    for key, history in state["own"]}
