"""Training objectives: chunked distillation divergences and the per-token mismatch statistics."""

from atesd.losses.divergence import (
    Divergence,
    DivergenceOutput,
    DivergenceSpec,
    TeacherMix,
    divergence_from_hidden,
    divergence_from_logits,
)

__all__ = [
    "Divergence",
    "DivergenceOutput",
    "DivergenceSpec",
    "TeacherMix",
    "divergence_from_hidden",
    "divergence_from_logits",
]
