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
from typing import Any

from atesd.config import ExposureConfig
from atesd.exposure.per_problem import ProblemView
from atesd.exposure.rules import Attempts, ProblemRule


class AdaBackExposure(ProblemRule):
    name = "adaback"
    salt = 0xADAB

    def __init__(self, config: ExposureConfig, seed: int) -> None:
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
