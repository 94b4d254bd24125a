"""AR-OPD's anchored-residual teacher (arXiv 2606.10385; docs/method.md#ar-opd), selected by
``teacher.anchored_residual``: the distilled teacher is a teacher at partial exposure (the anchor) moved a bounded
step towards the teacher at the step's exposure (the full one, α = 1 under OPSD), per token and in log-probabilities:

    log q = log_softmax(log p_anchor + λ · clip(log p_full − log p_anchor, −c, c))

with λ = ``residual_weight`` (0.6) and c = ``residual_clip`` (5), the anchor at ``anchor_alpha`` (0.5). Ours, where
the paper leaves it open: log-probability space (the residual of two log-softmaxes is a per-token log-ratio, which is
what a clip at 5 bounds), the final log_softmax that makes q a distribution again, and the full teacher being the
step's exposure. `Scorer.teacher_targets` runs the anchor's extra teacher forward over the same rollouts; the loss
combines the two passes chunk by chunk (`atesd.losses.divergence.TeacherMix`), so no [N, V] tensor is made.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def anchored_residual(anchor_logits: torch.Tensor, full_logits: torch.Tensor, weight: float,
                      clip: float) -> torch.Tensor:
    """log q from both teachers' logits [..., V] (at least float32): λ = 0 gives the anchor, λ = 1 the full teacher
    wherever the clip does not bind."""
    dtype = torch.promote_types(full_logits.dtype, torch.float32)
    anchor, full = anchor_logits.to(dtype).log_softmax(-1), full_logits.to(dtype).log_softmax(-1)
    return (anchor + weight * (full - anchor).clamp(-clip, clip)).log_softmax(-1)


@dataclass
class AnchoredResidual:
    """The anchor's pass of one micro-batch and the residual's weight and clip, as the loss's `TeacherMix`."""

    hidden: torch.Tensor  # the anchor teacher's final hidden states at the rollout positions [N, D]
    weight: float
    clip: float

    def combine(self, teacher_logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
        return anchored_residual(other_logits, teacher_logits, self.weight, self.clip)
