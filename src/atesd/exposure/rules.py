"""What the exposure rules per problem that learn no network share (the peers' rules, docs/method.md#the-peers-rules):
the interface of `atesd.exposure.base.ExposurePolicy` around one method, `choose`.

A rule is a module of its own under ``exposure/`` with a subclass of `ProblemRule` that says how it gives each problem
of a step its α from what the step's rollouts showed (`choose`, with the `ProblemView` of each problem: its rollout's
grade, length and text, and its reference's segments) and what it keeps between steps (`rule_state`,
`load_rule_state`). `ProblemRule` does the rest: the same α when asked twice for a step, the clip to [α_min, α_max],
one ``decisions.jsonl`` row per step (final when it is made: nothing waits for a reward), nothing to measure before the
update, and checkpoints that hold the rule's own generator and state, so that a resumed run takes the same decisions.

`Attempts` is the bookkeeping of the rules that learn from each problem's outcomes at its next visit: a problem's last
exposure becomes an attempt once the problem comes back, with the correctness of its new rollout as the attempt's
reward. α only shapes the teacher prompt, built after the rollouts, so the rollout of a visit was sampled before that
visit's α was chosen and cannot say how well it did; the next visit's rollout, after the update at that α, can (ours).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from atesd.exposure.base import ClippedSettings, PolicyBase, ProblemView, problem_columns


class ProblemRule(PolicyBase):
    """The per-problem interface for a rule that chooses α from each problem's view alone; subclasses set `salt`
    (which seeds their generator apart from other policies') and define `choose`."""

    single_process = True  # a rule's credit, if any, is in the views: nothing to measure before the update
    salt: ClassVar[int]

    def __init__(self, settings: ClippedSettings, seed: int) -> None:
        self.name = settings.policy
        self.alpha_min, self.alpha_max = settings.alpha_min, settings.alpha_max
        self.rng = np.random.default_rng([seed, self.salt])
        self.decided: tuple[int, list[float]] | None = None  # the latest step and its α
        self._rows: list[dict[str, Any]] = []

    def choose(self, step: int, views: Sequence[ProblemView]) -> tuple[list[float], dict[str, list[Any]]]:
        """Each problem's α (clipped by the caller) and the rule's own per-problem columns for the step's row."""
        raise NotImplementedError

    def rule_state(self) -> dict[str, Any]:
        """What the rule keeps between steps, for checkpoints (nested lists, dicts and numbers)."""
        return {}

    def load_rule_state(self, state: Mapping[str, Any]) -> None:
        pass

    def clip(self, alpha: float) -> float:
        return min(max(alpha, self.alpha_min), self.alpha_max)

    # ------------------------------------------------------------------ the per-problem interface

    def alphas(self, step: int, views: Sequence[ProblemView]) -> list[float]:
        """One α per problem of the step (in the order of `views`); asking twice for a step gives the same."""
        if self.decided is not None and self.decided[0] == step:
            return self.decided[1]
        alphas, columns = self.choose(step, views)
        alphas = [self.clip(alpha) for alpha in alphas]
        self.decided = (step, alphas)
        self._rows.append({"step": step + 1, **problem_columns([v.key for v in views], [v.correct for v in views],
                                                              [v.segments for v in views], [v.bucket for v in views]),
                           "alpha": alphas, **columns, "logged_at": step + 1})
        return alphas

    def drain_decisions(self) -> list[dict[str, Any]]:
        rows, self._rows = self._rows, []
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.name, "rng": self.rng.bit_generator.state,
                "decided": None if self.decided is None else [self.decided[0], list(self.decided[1])],
                "rows": list(self._rows), "rule": self.rule_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("policy") != self.name:
            raise ValueError(f"checkpoint holds a '{state.get('policy')}' exposure policy, config says '{self.name}'")
        self.rng.bit_generator.state = state["rng"]
        self.decided = None if state["decided"] is None else (int(state["decided"][0]), list(state["decided"][1]))
        self._rows = list(state["rows"])
        self.load_rule_state(state["rule"])


class Attempts:
    """Each problem's last exposure, waiting for the problem to come back: its next view's correctness is the reward
    of that exposure (see the module docstring)."""

    def __init__(self) -> None:
        self.last_share: dict[int, float] = {}

    def complete(self, view: ProblemView) -> tuple[float, float] | None:
        """(share, reward) of the problem's last attempt, completed by `view`; None on its first visit."""
        share = self.last_share.get(view.key)
        return None if share is None else (share, float(view.correct))

    def record(self, key: int, share: float) -> None:
        self.last_share[key] = share

    def state_dict(self) -> list[list[float]]:
        return [[key, share] for key, share in self.last_share.items()]

    def load_state_dict(self, state: Sequence[Sequence[float]]) -> None:
        self.last_share = {int(key): float(share) for key, share in state}
