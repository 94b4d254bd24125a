"""Fixed exposure: the same α at every step (α = 1 is OPSD, the policy of a config that names none)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from atesd.exposure.base import BatchPolicy, DecisionReading, ExposurePolicy, ExposureSettings, register


@register
class FixedSettings(ExposureSettings):
    """``exposure.policy: fixed``."""

    policy: Literal["fixed"] = "fixed"
    alpha: float = Field(1.0, ge=0, le=1, description="The exposure: share of reference segments the teacher sees.")

    methods: ClassVar[tuple[str, ...]] = ("opsd", "grpo", "sft")  # GRPO and SFT have no teacher prompt
    is_default: ClassVar[bool] = True

    def build(self, total_steps: int, seed: int) -> ExposurePolicy:
        return FixedExposure(self.alpha)

    def alpha_range(self) -> tuple[float, float]:
        return self.alpha, self.alpha

    def reading(self) -> DecisionReading:
        return DecisionReading("fixed", 1)


class FixedExposure(BatchPolicy):
    """The same α at every step."""

    def __init__(self, alpha: float) -> None:
        self.fixed_alpha = alpha

    def alpha(self, step: int) -> float:
        return self.fixed_alpha

    def state_dict(self) -> dict[str, Any]:
        return {"policy": "fixed", "alpha": self.fixed_alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("alpha") != self.fixed_alpha:
            raise ValueError(f"checkpoint was taken with fixed alpha {state.get('alpha')}, config says "
                             f"{self.fixed_alpha}")
