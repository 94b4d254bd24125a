"""What the two per-token teachers share (`agreement_gate`, `entropy_gate`): a fixed exposure for the privileged
view, a second view at a lower exposure, and the settings of their per-token mix.

Both read the student's rollout twice, after the teacher prompt at the step's α (the privileged view) and after
the prompt at ``view_alpha`` (one more teacher forward, as AR-OPD's anchor), and give each token the target

    log q_t = log_softmax(log p_view + g_t · clip(log p_teacher − log p_view, −clip, clip))

AR-OPD's form (docs/method.md#ar-opd) with a weight g_t ∈ [floor, 1] chosen per token instead of one λ: each
module defines how g_t is read off the two views. The floor keeps some of the privileged view at every token (the
residual); the clip bounds a token's step as AR-OPD's does.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from atesd.exposure.base import DecisionReading, ExposurePolicy, ExposureSettings
from atesd.exposure.fixed import FixedExposure


class TokenGateSettings(ExposureSettings):
    """The settings every per-token gate takes."""

    alpha: float = Field(1.0, ge=0, le=1, description="The privileged view's exposure (the step's alpha).")
    view_alpha: float = Field(0.5, ge=0, le=1, description="The second view's exposure, below alpha (ours: AR-OPD's "
                              "anchor).")
    floor: float = Field(0.25, ge=0, lt=1, description="The least weight of the privileged view at any token: the "
                         "residual that keeps some of it everywhere (ours).")
    clip: float = Field(5.0, gt=0, description="Bound of each token's log-ratio step towards the privileged view "
                        "(AR-OPD's 5).")

    @model_validator(mode="after")
    def _view_below_the_exposure(self) -> TokenGateSettings:
        if self.view_alpha >= self.alpha:
            raise ValueError(f"view_alpha {self.view_alpha:g} is not below alpha {self.alpha:g}: the second view "
                             "would be the teacher itself (OPSD at the cost of a second forward) or show more than "
                             "it (the gate inverted); set it below")
        return self

    def build(self, total_steps: int, seed: int) -> ExposurePolicy:
        return FixedExposure(self.alpha)

    def alpha_range(self) -> tuple[float, float]:
        return self.alpha, self.alpha

    def reading(self) -> DecisionReading:
        return DecisionReading(self.policy, 1)
