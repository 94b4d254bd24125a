"""A teacher-confidence gate per problem (ours, in the manner of EGRSD, arXiv 2605.13255, which weights each token's
distillation term by the teacher's confidence): show each problem's teacher just enough of the reference to be
confident about it.

The teacher's confidence on a problem is h_i = −g_i, its mean per-token NLL of the problem's reference solution
after the teacher prompt at the problem's α (g_i, docs/method.md#statistics; measured every step for this rule): a
cross-entropy, low where the teacher knows how the solution goes. Each problem keeps its last α and h; when it comes
back,

    α ← clip(α_last + rate · (h_last − target_nll), α_min, α_max)

so an unsure teacher is shown more of the reference next time and a sure one less, until its NLL sits at
``target_nll``. A problem seen for the first time gets ``start_alpha``. EGRSD's floor (no token dropped) is the clip
at α_min. Deterministic; what each problem keeps goes into checkpoints.

The defaults are ours and untuned: a target of 0.5 nats per token and a rate of 0.5 per nat.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from atesd.exposure.base import ClippedSettings, ExposurePolicy, Preset, ProblemView, register
from atesd.exposure.rules import ProblemRule


@register
class ConfidenceGateSettings(ClippedSettings):
    """``exposure.policy: confidence_gate``."""

    policy: Literal["confidence_gate"] = "confidence_gate"
    target_nll: float = Field(0.5, gt=0, description="The teacher's per-token NLL of the reference to hold each "
                              "problem at (nats).")
    rate: float = Field(0.5, gt=0, description="How far alpha moves per nat the teacher's NLL is off its target.")
    start_alpha: float = Field(0.5, ge=0, le=1, description="The alpha of a problem's first visit.")

    presets: ClassVar[dict[str, Preset]] = {
        "confidence-gate": Preset("opsd.yaml", ("exposure.policy=confidence_gate",))}

    def build(self, total_steps: int, seed: int) -> ExposurePolicy:
        return ConfidenceGateExposure(self, seed)


class ConfidenceGateExposure(ProblemRule):
    salt = 0xC0F1  # unused: the rule draws nothing
    uses_teacher_ref_logp = True  # each problem's g_i, every step

    def __init__(self, settings: ConfidenceGateSettings, seed: int) -> None:
        super().__init__(settings, seed)
        self.settings = settings
        self.last: dict[int, tuple[float, float]] = {}  # problem -> (its last α, the teacher's NLL h at it)
        self.visit: tuple[int, list[int], list[float]] | None = None  # this step's (step, problems, α)

    def choose(self, step: int, views: Sequence[ProblemView]) -> tuple[list[float], dict[str, list[Any]]]:
        settings, alphas, seen = self.settings, [], []
        for view in views:
            last = self.last.get(view.key)
            seen.append(last[1] if last is not None else math.nan)
            alphas.append(settings.start_alpha if last is None else
                          last[0] + settings.rate * (last[1] - settings.target_nll))
        self.visit = (step, [view.key for view in views], [self.clip(alpha) for alpha in alphas])
        return alphas, {"last_teacher_nll": seen}

    def measured(self, step: int, nll: Sequence[float], teacher_logps: Sequence[float]) -> None:
        """Each problem's h = −g_i at this step's α (a problem whose g_i was not measured keeps its last h)."""
        if self.visit is None or self.visit[0] != step:
            return
        _, keys, alphas = self.visit
        for key, alpha, logp in zip(keys, alphas, teacher_logps):
            if math.isfinite(logp):
                self.last[key] = (alpha, -logp)

    def rule_state(self) -> dict[str, Any]:
        return {"last": [[key, alpha, nll] for key, (alpha, nll) in self.last.items()],
                "visit": None if self.visit is None else [self.visit[0], self.visit[1], self.visit[2]]}

    def load_rule_state(self, state: Mapping[str, Any]) -> None:
        self.last = {int(key): (float(alpha), float(nll)) for key, alpha, nll in state["last"]}
        visit = state["visit"]
        self.visit = None if visit is None else (int(visit[0]), [int(k) for k in visit[1]], list(visit[2]))
