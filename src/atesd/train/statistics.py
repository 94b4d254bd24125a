"""The mismatch and state statistics of a distillation step (docs/method.md#statistics), over all processes.

Means are sums over every completion token of the step divided by their number; the tail quantiles are over
every token of every process together (each process's per-token KL is gathered).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from atesd.losses import DivergenceOutput
from atesd.train.distributed import Processes


def distillation_statistics(outputs: Sequence[DivergenceOutput], processes: Processes) -> dict[str, float]:
    """loss, kl_mean, kl_p90, kl_p99, top1_disagree and confidence of the step's micro-batch `outputs`."""
    kl = per_token_kl(outputs)
    sums = processes.sums({
        "kl": float(kl.sum()), "disagree": float(torch.cat([o.top1_disagree for o in outputs]).float().sum()),
        "confidence": float(torch.cat([o.student_token_prob for o in outputs]).sum()), "tokens": float(kl.numel()),
        "loss": sum(float(o.loss_sum.detach()) for o in outputs)})
    tokens = max(sums["tokens"], 1.0)
    every_kl = processes.gathered(kl)
    return {
        "loss": sums["loss"] / tokens,
        "kl_mean": sums["kl"] / tokens,
        "kl_p90": quantile(every_kl, 0.9),
        "kl_p99": quantile(every_kl, 0.99),
        "top1_disagree": sums["disagree"] / tokens,
        "confidence": sums["confidence"] / tokens,
    }


def per_token_kl(outputs: Sequence[DivergenceOutput]) -> torch.Tensor:
    return torch.cat([o.per_token_kl for o in outputs])


def per_token_loss(outputs: Sequence[DivergenceOutput]) -> torch.Tensor:
    return torch.cat([o.per_token_loss for o in outputs])


def quantile(values: torch.Tensor, q: float) -> float:
    return float(torch.quantile(values.float(), q)) if values.numel() else float("nan")
