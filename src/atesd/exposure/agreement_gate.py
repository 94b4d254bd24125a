"""A teacher that mixes two exposures token by token, gated by their agreement (ours, in the manner of AVSD, arXiv
2605.20643): ``exposure.policy: agreement_gate``.

AVSD reads one problem under several teacher views and lets the views' consensus decide, token by token, how far
each target follows the privileged views, plus a residual. Ours, in atesd's loop: two views of the same teacher,
the privileged one at the step's α and one at ``view_alpha``; their agreement at token t is

    a_t = 1 − JSD(p_teacher,t ‖ p_view,t) / ln 2  ∈ [0, 1]

(1 where both views predict alike), and the token's weight g_t = floor + (1 − floor) · a_t moves its target from
the view towards the privileged teacher (`atesd.exposure.token_gates`). Where the two views agree, the reference's
extra part only sharpens what the view already predicts, and the privileged target is taken; where they disagree
the extra part carries something the less-exposed teacher cannot reach from the student's chain (a leap, an answer
read off the reference), and the target stays near the view, with the floor's share of the privileged one. The
paper's views, consensus measure and gate are its own; the JSD agreement, the two views and every default are ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from atesd.exposure.base import Preset, TokenMix, clipped_log_ratio_mix, register
from atesd.exposure.token_gates import TokenGateSettings


@register
class AgreementGateSettings(TokenGateSettings):
    """``exposure.policy: agreement_gate``."""

    policy: Literal["agreement_gate"] = "agreement_gate"

    presets: ClassVar[dict[str, Preset]] = {
        "agreement-gate": Preset("opsd.yaml", ("exposure.policy=agreement_gate",)),
    }

    def token_mix(self) -> TokenMix:
        return AgreementMix(self.view_alpha, self.floor, self.clip)


def agreement(teacher_logp: torch.Tensor, view_logp: torch.Tensor) -> torch.Tensor:
    """1 − JSD / ln 2 of two log-prob tensors [..., V]: 1 where they are equal, 0 where their supports are apart."""
    middle = torch.logaddexp(teacher_logp, view_logp) - math.log(2.0)
    jsd = 0.5 * ((teacher_logp.exp() * (teacher_logp - middle)).sum(-1)
                 + (view_logp.exp() * (view_logp - middle)).sum(-1))
    return (1.0 - jsd / math.log(2.0)).clamp(0.0, 1.0)


@dataclass(frozen=True)
class AgreementMix:
    view_alpha: float
    floor: float
    clip: float

    def combine(self, teacher_logits: torch.Tensor, view_logits: torch.Tensor) -> torch.Tensor:
        teacher = teacher_logits.float().log_softmax(-1)
        view = view_logits.float().log_softmax(-1)
        gate = self.floor + (1.0 - self.floor) * agreement(teacher, view)
        return clipped_log_ratio_mix(view_logits, teacher_logits, gate.unsqueeze(-1), self.clip)
