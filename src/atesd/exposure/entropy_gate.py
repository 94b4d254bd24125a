"""A teacher-entropy gate per token (ours, in the manner of EGRSD, arXiv 2605.13255): ``exposure.policy:
entropy_gate``.

EGRSD weights each token's distillation term by the teacher's confidence (low entropy, more weight), with a floor
so that no token is dropped. Ours, in atesd's loop of two views (`atesd.exposure.token_gates`): the privileged
teacher's confidence at token t,

    c_t = 1 − H(p_teacher,t) / ln V  ∈ [0, 1],

gates how far the token's target moves from the view at ``view_alpha`` towards the privileged teacher:
g_t = max(floor, c_t). Where the teacher that read more of the reference is sure of the next token, its target is
taken; where it is unsure, what the extra reference adds is noise to the student, and the target stays near the
less-exposed view. EGRSD reweights the loss of one teacher; the gate between two views, the normalisation by ln V
and every default are ours. (The teacher-confidence gate is the per-problem rule of the same idea: one α per
problem, docs/method.md#teacher-confidence-gate.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from atesd.exposure.base import Preset, TokenMix, clipped_log_ratio_mix, register
from atesd.exposure.token_gates import TokenGateSettings


@register
class EntropyGateSettings(TokenGateSettings):
    """``exposure.policy: entropy_gate``."""

    policy: Literal["entropy_gate"] = "entropy_gate"

    presets: ClassVar[dict[str, Preset]] = {
        "entropy-gate": Preset("opsd.yaml", ("exposure.policy=entropy_gate",)),
    }

    def token_mix(self) -> TokenMix:
        return EntropyMix(self.view_alpha, self.floor, self.clip)


def confidence(logp: torch.Tensor) -> torch.Tensor:
    """1 − H / ln V of log-probs [..., V]: 1 for a one-hot distribution, 0 for the uniform one."""
    entropy = -(logp.exp() * logp).sum(-1)
    return (1.0 - entropy / math.log(logp.shape[-1])).clamp(0.0, 1.0)


@dataclass(frozen=True)
class EntropyMix:
    view_alpha: float
    floor: float
    clip: float

    def combine(self, teacher_logits: torch.Tensor, view_logits: torch.Tensor) -> torch.Tensor:
        gate = confidence(teacher_logits.float().log_softmax(-1)).clamp(min=self.floor)
        return clipped_log_ratio_mix(view_logits, teacher_logits, gate.unsqueeze(-1), self.clip)
