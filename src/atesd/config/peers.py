"""The settings of the peers' methods that atesd runs in its own loop (docs/method.md#the-peers-rules): the exposure
rules per problem AdaBack and SEELE (`exposure.adaback`, `exposure.seele`; PAINT has no setting of its own) and
AR-OPD's anchored-residual teacher (`teacher.anchored_residual`). Defaults are the papers' where they give one."""

from __future__ import annotations

from pydantic import Field, field_validator

from atesd.config.section import Section


class AdaBackConfig(Section):
    """AdaBack's bisection of each problem's share (arXiv 2506.18110; docs/method.md#adaback)."""

    threshold: float = Field(
        0.5, ge=0, le=1, description="tau: a last attempt whose reward (the student's correctness on the problem at "
        "its next visit) is below it reveals more next time, else less (the paper: 0.5; 0.125 in its scripts).")
    start_bounds: tuple[float, float] = Field(
        (0.0, 0.9), description="[lower, upper] of the population bounds before any attempt; a problem with no "
        "attempt yet draws its share uniformly between the population bounds.")
    population_decay: float = Field(0.8, ge=0, lt=1, description="EMA decay of the population bounds.")

    @field_validator("start_bounds")
    @classmethod
    def _bounds_in_order(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= value[0] <= value[1] <= 1.0:
            raise ValueError(f"needs 0 <= lower <= upper <= 1, got {list(value)}")
        return value


class SeeleConfig(Section):
    """SEELE's target accuracy per problem (arXiv 2509.06923; docs/method.md#seele); every default but the target
    is ours."""

    target_accuracy: float = Field(0.5, gt=0, lt=1, description="a*: the accuracy the chosen alpha is predicted "
                                   "to give (the paper: about 0.5).")
    history: int = Field(8, ge=3, description="A problem's latest attempts its own curve is fitted on.")
    min_points: int = Field(4, ge=3, description="Attempts a curve needs (3 parameters); a problem with fewer "
                            "uses the population's curve, and a population with fewer draws alpha uniformly.")
    population_window: int = Field(256, ge=3, description="Latest attempts of every problem the population's "
                                   "curve is fitted on.")
    explore: float = Field(0.2, ge=0, le=1, description="Share of decisions drawn uniformly in [alpha_min, "
                           "alpha_max] instead of from a curve: spread in alpha that the fits need (ours).")


class AnchoredResidualConfig(Section):
    """AR-OPD's teacher (arXiv 2606.10385; docs/method.md#ar-opd): log q = log_softmax(log p_anchor + lambda *
    clip(log p_full - log p_anchor, -c, c)), with the anchor at partial exposure and 'full' the teacher at the
    step's exposure (alpha = 1 under OPSD)."""

    anchor_alpha: float = Field(0.5, ge=0, le=1, description="Exposure of the anchor teacher.")
    residual_weight: float = Field(0.6, ge=0, le=1, description="lambda: 0 is the anchor, 1 the full teacher.")
    residual_clip: float = Field(5.0, gt=0, description="c: each token's residual log-prob is clipped to +-c.")
