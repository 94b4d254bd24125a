"""AR-OPD's anchored-residual teacher's settings (``teacher.anchored_residual``, arXiv 2606.10385;
docs/method.md#ar-opd). Defaults are the paper's where it gives one. (The peers' exposure rules keep their settings
in their own modules under ``atesd/exposure/``.)"""

from __future__ import annotations

from pydantic import Field

from atesd.settings import Section


class AnchoredResidualConfig(Section):
    """AR-OPD's teacher (arXiv 2606.10385; docs/method.md#ar-opd): log q = log_softmax(log p_anchor + lambda *
    clip(log p_full - log p_anchor, -c, c)), with the anchor at partial exposure and 'full' the teacher at the
    step's exposure (alpha = 1 under OPSD)."""

    anchor_alpha: float = Field(0.5, ge=0, le=1, description="Exposure of the anchor teacher.")
    residual_weight: float = Field(0.6, ge=0, le=1, description="lambda: 0 is the anchor, 1 the full teacher.")
    residual_clip: float = Field(5.0, gt=0, description="c: each token's residual log-prob is clipped to +-c.")
