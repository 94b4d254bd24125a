"""The exposure policies that learn nothing: fixed α (α = 1 is OPSD), random α per hold window (or per problem),
linear schedule."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _check_unit(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"exposure {name} must be in [0, 1], got {value!r}")
    return float(value)


class NonLearningPolicy:
    """What a policy that learns nothing answers to the trainer's statistics: nothing to log, nothing waiting."""

    uses_teacher_ref_logp = False  # the trainer then measures g_t only for the log
    per_problem = False

    def observe(self, step: int, stats: Mapping[str, float]) -> dict[str, float]:
        return {}

    def drain_decisions(self) -> list[dict[str, Any]]:
        return []

    def pending_decisions(self) -> list[dict[str, Any]]:
        return []


class FixedExposure(NonLearningPolicy):
    """The same α at every step."""

    def __init__(self, alpha: float) -> None:
        self.fixed_alpha = _check_unit("alpha", alpha)

    def alpha(self, step: int) -> float:
        return self.fixed_alpha

    def state_dict(self) -> dict[str, Any]:
        return {"policy": "fixed", "alpha": self.fixed_alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("alpha") != self.fixed_alpha:
            raise ValueError(f"checkpoint was taken with fixed alpha {state.get('alpha')}, config says "
                             f"{self.fixed_alpha}")


class LinearScheduleExposure(NonLearningPolicy):
    """α moves linearly from `start` at the first step to `end` at the last, a new value every step (ours: the
    paper names the ablation without its endpoints; the default goes from full exposure down to α_min)."""

    def __init__(self, start: float, end: float, total_steps: int) -> None:
        self.start, self.end = _check_unit("schedule_start", start), _check_unit("schedule_end", end)
        self.total_steps = total_steps

    def alpha(self, step: int) -> float:
        progress = min(step / max(self.total_steps - 1, 1), 1.0)
        return self.start + (self.end - self.start) * progress

    def state_dict(self) -> dict[str, Any]:
        return {"policy": "schedule"}  # α is a function of the step alone

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class RandomExposure(NonLearningPolicy):
    """α ~ Uniform[α_min, α_max], drawn every `hold_steps` updates and held in between (the random-exposure
    ablation). Draws come from the policy's own generator, saved in checkpoints."""

    def __init__(self, alpha_min: float, alpha_max: float, hold_steps: int, seed: int) -> None:
        self.alpha_min, self.alpha_max = _check_unit("alpha_min", alpha_min), _check_unit("alpha_max", alpha_max)
        self.hold_steps = hold_steps
        self.rng = np.random.default_rng([seed, 0xA1FA])
        self.window_start: int | None = None
        self.current_alpha = float("nan")
        self._rows: list[dict[str, Any]] = []

    def alpha(self, step: int) -> float:
        if self.window_start is None or step >= self.window_start + self.hold_steps:
            self.window_start, self.current_alpha = step, float(self.rng.uniform(self.alpha_min, self.alpha_max))
            self._rows.append({"step": step + 1, "alpha": self.current_alpha, "logged_at": step + 1})
        return self.current_alpha

    def drain_decisions(self) -> list[dict[str, Any]]:
        rows, self._rows = self._rows, []
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {"policy": "random", "rng": self.rng.bit_generator.state, "window_start": self.window_start,
                "current_alpha": self.current_alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.window_start, self.current_alpha = state["window_start"], state["current_alpha"]


class RandomPerProblemExposure(NonLearningPolicy):
    """α_i ~ Uniform[α_min, α_max] for each problem of each step (ours: random exposure with
    ``exposure.per_problem: true``), the comparison of exposures within a step that `atesd diagnose` measures
    per-problem credits on (docs/controller.md#signals-with-power). It measures no credit itself."""

    per_problem = True

    def __init__(self, alpha_min: float, alpha_max: float, seed: int) -> None:
        self.alpha_min, self.alpha_max = _check_unit("alpha_min", alpha_min), _check_unit("alpha_max", alpha_max)
        self.rng = np.random.default_rng([seed, 0xA1FB])
        self.step: int | None = None
        self.current: list[float] = []

    def alphas(self, step: int, views: Sequence[Any]) -> list[float]:
        """One draw per problem of the step (in the order of `views`); asking twice for a step gives the same."""
        if step != self.step:
            self.step, self.current = step, self.rng.uniform(self.alpha_min, self.alpha_max, len(views)).tolist()
        return self.current

    def nll_wanted(self, step: int) -> list[int]:
        return []

    def measured(self, step: int, nll: Sequence[float], teacher_logps: Sequence[float]) -> None:
        pass

    def aligned(self, step: int, credits: Sequence[float]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"policy": "random_per_problem", "rng": self.rng.bit_generator.state, "step": self.step,
                "current": list(self.current)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("policy") != "random_per_problem":
            raise ValueError(f"checkpoint holds a '{state.get('policy')}' exposure policy, config says random "
                             "exposure per problem")
        self.rng.bit_generator.state = state["rng"]
        self.step, self.current = state["step"], list(state["current"])
