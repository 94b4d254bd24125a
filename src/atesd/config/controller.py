"""The ATESD controller's settings (``exposure.controller``): its policy, reward, update, and exposure per
problem's credit (docs/method.md#controller, docs/controller.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, field_validator

from atesd.config.section import Section


class ControllerConfig(Section):
    """The learned Beta-policy controller (docs/method.md#controller; every default is ours: the paper gives none)."""

    hidden_sizes: list[PositiveInt] = Field(
        default_factory=lambda: [64, 64], description="Policy MLP hidden layers (tanh); [] is a linear policy.")
    initial_beta: tuple[float, float] = Field(
        (2.0, 2.0), description="(a, b) of the starting policy, set through the output bias (ours: Beta(2, 2)).")
    lookahead: int = Field(4, ge=1, description="L: updates over which a decision's reward is summed.")
    discount: float = Field(0.9, ge=0, le=1, description="gamma of the discounted reward.")
    progress_signal: Literal["probe_nll", "distill_loss", "style_nll"] = Field(
        "probe_nll", description="The loss l whose drops make G_lp; style_nll: the style probe's (ours).")
    teacher_grounded_weight: float = Field(0.1, ge=0, description="lambda_gt: weight of G_gt in R (0: G_lp only).")
    decisions_per_update: int = Field(4, ge=2, description="B: rewarded decisions per REINFORCE update.")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate of the policy.")
    entropy_coef: float = Field(0.01, ge=0, description="c: weight of the one-sided entropy hinge.")
    entropy_target: float = Field(-0.5, description="H_target: Beta entropy above which the hinge acts.")
    advantage_eps: float = Field(1e-8, gt=0, description="epsilon of the advantage normalisation.")
    baseline: Literal["progress_trend", "none"] = Field(
        "progress_trend", description="Advantages against a least-squares trend of R on training progress over the "
        "latest baseline_window rewarded decisions (ours: removes the drift of shrinking progress); none: the "
        "paper's normalisation over the update's B decisions.")
    baseline_window: int = Field(16, ge=3, description="Rewarded decisions the progress trend is fitted on.")
    state_ema_decay: float = Field(0.9, ge=0, lt=1, description="Decay of the state's EMAs (ours).")
    feature_clip: float = Field(5.0, gt=0, description="Normalised state features are clipped to +-this (ours).")
    credited_problems: int = Field(
        8, ge=1, description="Exposure per problem: problems of each step whose own reference NLL is measured "
        "before their update and after the look-ahead, to reward their alpha (the first of the batch; each costs "
        "two reference passes under the student prompt).")
    credit: Literal["own_nll", "alignment"] = Field("own_nll", description="Exposure per problem's credit: own NLL "
                                                   "drop, or alignment (ours, docs/controller.md#signals-with-power).")
    alignment_probe: Literal["contrast", "style", "reference"] = Field(
        "contrast", description="The probe alignment is measured on (contrast: right against wrong solutions).")
    alignment_refresh: int = Field(10, ge=1, description="Steps between refreshes of the probe gradient (ours).")
    style_probe_samples: int = Field(4, ge=1, description="Base-model samples per probe problem (ours).")

    @field_validator("initial_beta")
    @classmethod
    def _initial_beta_above_one(cls, value: tuple[float, float]) -> tuple[float, float]:
        if min(value) <= 1.0:
            raise ValueError(f"(a, b) = 1 + softplus(.) is always above 1; got {list(value)}")
        return value
