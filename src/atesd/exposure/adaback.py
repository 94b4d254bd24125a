"""AdaBack's bisection per problem (arXiv 2506.18110; docs/method.md#adaback) as an exposure rule: each problem's
share of the reference is bisected on whether its last attempt's reward reached the threshold τ.

Each problem keeps the bounds [lower, upper] its share is drawn from, its max, and its last share (`Attempts`: the
reward of that attempt is the correctness of the problem's rollout at its next visit, ours). When a problem comes
back with reward r:

- r < τ, the last share was not enough: lower ← last share, upper ← the problem's max;
- else it was: upper ← last share, and the problem's max ratchets down to it.

Its new share ~ U(lower, upper). A problem seen for the first time draws from the population bounds and keeps them
as its own, with their upper as its max. The population bounds start at `exposure.adaback.start_bounds` and, after a
step in which attempts completed, move as an EMA (`population_decay`) towards the mean bounds of those problems. The
α the teacher uses is the share clipped to [α_min, α_max], and that α is the attempt's share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from atesd.exposure.base import ClippedSettings, ExposurePolicy, Preset, ProblemView, register
from atesd.exposure.rules import Attempts, ProblemRule
from atesd.settings import Section


class AdaBackConfig(Section):
    """AdaBack's bisection of each problem's share (arXiv 2506.18110; docs/method.md#adaback)."""

    threshold: float = Field(
        0.5, ge=0, le=1, description="tau: a last attempt whose reward (the student's correctness on the problem at "
        "its next visit) is below it reveals more next time, else less (the paper: 0.5; 0.125 in its scripts). A "
        "reward here is one rollout's grade, 0 or 1, so every tau in (0, 1] decides alike; 0 never reveals more.")
    start_bounds: tuple[float, float] = Field(
        (0.0, 0.9), description="[lower, upper] of the population bounds before any attempt; a problem with no "
        "attempt yet draws its share uniformly between the population bounds.")
    population_decay: float = Field(
        0.8, ge=0, lt=1, description="EMA decay of the population bounds (the paper's). Only a problem's first visit "
        "reads them, and in atesd's loop every first visit comes before any attempt completes (an epoch visits every "
        "problem once): the EMA never reaches a decision, so another value is refused.")

    @field_validator("start_bounds")
    @classmethod
    def _bounds_in_order(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= value[0] <= value[1] <= 1.0:
            raise ValueError(f"needs 0 <= lower <= upper <= 1, got {list(value)}")
        return value

    @field_validator("population_decay")
    @classmethod
    def _decay_cannot_act(cls, value: float) -> float:
        if value != 0.8:
            raise ValueError("the population bounds it moves are read only by a problem's first visit, and every first "
                             "visit comes before any attempt completes (an epoch visits every problem once): it "
                             "cannot change a decision; leave it out")
        return value


@register
class AdaBackSettings(ClippedSettings):
    """``exposure.policy: adaback``."""

    policy: Literal["adaback"] = "adaback"
    adaback: AdaBackConfig = Field(default_factory=AdaBackConfig)

    presets: ClassVar[dict[str, Preset]] = {"adaback": Preset("opsd.yaml", ("exposure.policy=adaback",))}

    def build(self, total_steps: int, seed: int) -> ExposurePolicy:
        return AdaBackExposure(self, seed)


class AdaBackExposure(ProblemRule):
    salt = 0xADAB

    def __init__(self, config: AdaBackSettings, seed: int) -> None:
        super().__init__(config, seed)
        self.settings = config.adaback
        self.population = list(self.settings.start_bounds)  # [lower, upper]
        self.bounds: dict[int, list[float]] = {}  # problem -> [lower, upper, max]
        self.attempts = Attempts()

    def choose(self, step: int, views: Sequence[ProblemView]) -> tuple[list[float], dict[str, list[Any]]]:
        # Every attempt is completed from the state before the step, so that a problem twice in one batch (at an
        # epoch's end) is never rewarded by its own step.
        completed = [self.attempts.complete(view) for view in views]
        moved = []
        for view, attempt in zip(views, completed):
            if attempt is None:
                self.bounds.setdefault(view.key, [*self.population, self.population[1]])
                continue
            share, reward = attempt
            bounds = self.bounds[view.key]
            if reward < self.settings.threshold:
                bounds[0], bounds[1] = share, bounds[2]
            else:
                bounds[1] = bounds[2] = share
            moved.append(bounds)
        alphas, lowers, uppers = [], [], []
        for view in views:
            lower, upper, _ = self.bounds[view.key]
            alphas.append(self.clip(float(self.rng.uniform(lower, upper))))
            self.attempts.record(view.key, alphas[-1])
            lowers.append(lower)
            uppers.append(upper)
        if moved:
            decay = self.settings.population_decay
            self.population = [decay * old + (1 - decay) * sum(b[i] for b in moved) / len(moved)
                               for i, old in enumerate(self.population)]
        return alphas, {"lower": lowers, "upper": uppers,
                        "reward": [None if attempt is None else attempt[1] for attempt in completed]}

    def rule_state(self) -> dict[str, Any]:
        return {"population": list(self.population), "bounds": [[key, *b] for key, b in self.bounds.items()],
                "attempts": self.attempts.state_dict()}

    def load_rule_state(self, state: Mapping[str, Any]) -> None:
        self.population = [float(v) for v in state["population"]]
        self.bounds = {int(key): [float(v) for v in rest] for key, *rest in state["bounds"]}
        self.attempts.load_state_dict(state["attempts"])
