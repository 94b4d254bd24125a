"""Random exposure, the ablation every learned policy must beat: α ~ Uniform[α_min, α_max], drawn every
``hold_steps`` updates and held in between, or (ours, ``per_problem: true``) drawn for each problem of each step:
the comparison of exposures within a step that ``atesd diagnose`` measures per-problem credits on
(docs/controller.md#signals-with-power). Draws come from the policy's own generator, saved in checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from atesd.exposure.base import (
    BatchPolicy,
    ClippedSettings,
    DecisionReading,
    ExposurePolicy,
    PolicyBase,
    Preset,
    ProblemView,
    register,
)
from atesd.exposure.controller import ControllerConfig


@register
class RandomSettings(ClippedSettings):
    """``exposure.policy: random``."""

    policy: Literal["random"] = "random"
    hold_steps: int = Field(2, ge=1, description="H: updates each draw is held for (the controller's decisions').")
    per_problem: bool = Field(False, description="Each problem of each step its own draw (ours).")
    controller: ControllerConfig = Field(
        default_factory=ControllerConfig, description="The controller's settings this control run is read with: "
        "the reward windows of `atesd diagnose` (lookahead, discount, teacher_grounded_weight, progress_signal), and "
        "the alignment credit it logs with per_problem (credit: alignment, alignment_probe, alignment_refresh, "
        "style_probe_samples).")

    presets: ClassVar[dict[str, Preset]] = {
        "random": Preset("opsd.yaml", ("exposure.policy=random",)),
        # the control of exposure per problem (docs/controller.md#signals-with-power)
        "random-per-problem": Preset("opsd.yaml", ("exposure.policy=random", "exposure.per_problem=true")),
    }

    @model_validator(mode="after")
    def _controller_settings_read(self) -> RandomSettings:
        self.controller.refuse_unread(False, self.per_problem, "random exposure, which learns nothing (only the "
                                      "signals it logs and atesd diagnose's reward windows read them)")
        return self

    def build(self, total_steps: int, seed: int) -> ExposurePolicy:
        if self.per_problem:
            return RandomPerProblemExposure(self.alpha_min, self.alpha_max, seed)
        return RandomExposure(self.alpha_min, self.alpha_max, self.hold_steps, seed)

    def reading(self) -> DecisionReading:
        if self.per_problem:
            return DecisionReading("random_per_problem", 1, per_problem=True)
        return DecisionReading("random", self.hold_steps)

    def signal_settings(self) -> ControllerConfig:
        return self.controller


class RandomExposure(BatchPolicy):
    """One draw per hold window, for the whole batch."""

    def __init__(self, alpha_min: float, alpha_max: float, hold_steps: int, seed: int) -> None:
        self.alpha_min, self.alpha_max = alpha_min, alpha_max
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


class RandomPerProblemExposure(PolicyBase):
    """One draw per problem of each step. It measures no credit itself (the recipe logs the alignment credit)."""

    single_process = True

    def __init__(self, alpha_min: float, alpha_max: float, seed: int) -> None:
        self.alpha_min, self.alpha_max = alpha_min, alpha_max
        self.rng = np.random.default_rng([seed, 0xA1FB])
        self.step: int | None = None
        self.current: list[float] = []

    def alphas(self, step: int, views: Sequence[ProblemView]) -> list[float]:
        """One draw per problem of the step (in the order of `views`); asking twice for a step gives the same."""
        if step != self.step:
            self.step, self.current = step, self.rng.uniform(self.alpha_min, self.alpha_max, len(views)).tolist()
        return self.current

    def state_dict(self) -> dict[str, Any]:
        return {"policy": "random_per_problem", "rng": self.rng.bit_generator.state, "step": self.step,
                "current": list(self.current)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("policy") != "random_per_problem":
            raise ValueError(f"checkpoint holds a '{state.get('policy')}' exposure policy, config says random "
                             "exposure per problem")
        self.rng.bit_generator.state = state["rng"]
        self.step, self.current = state["step"], list(state["current"])
