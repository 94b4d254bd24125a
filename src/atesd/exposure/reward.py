"""The controller's reward and its REINFORCE objective (docs/method.md#reward, docs/method.md#update), as plain
functions of numbers.

Indexing, with t0 the first update governed by a decision (0-based optimizer steps) and L the look-ahead:

- ``losses`` are ℓ_{t0}, ℓ_{t0+1}, …, ℓ_{t0+L}: ℓ_{t0} is measured before update t0, ℓ_{t0+i} after the i-th
  update of the window. With the probe signal, ℓ_{t0+i} is the probe NLL after update t0+i-1; with the
  distillation-loss signal it is the loss measured at step t0+i (before that step's update).
- ``teacher_logps`` are g_{t0+1}, …, g_{t0+L}: g_{t0+i} is the teacher's reference log-prob measured at the
  i-th update of the window (step t0+i-1), at the exposure of that step.

When L > H the window runs past the decision's own H updates into later decisions' (windows overlap): the
credit for a delayed effect of α reaches the decision that caused it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch


def discount_weights(length: int, discount: float) -> list[float]:
    """γ^0, γ^1, …, γ^{length-1} (with γ^0 = 1 also for γ = 0: the immediate reward)."""
    return [discount**i for i in range(length)]


def learning_progress(losses: Sequence[float], discount: float) -> float:
    """G_lp = Σ_{i=1..L} γ^{i-1} · max(0, ℓ_{t0+i-1} − ℓ_{t0+i}) from ``losses`` = ℓ_{t0..t0+L}.

    A drop with a non-finite end (a skipped step's loss) counts as no progress.
    """
    drops = [before - after if math.isfinite(before) and math.isfinite(after) else 0.0
             for before, after in pairwise(losses)]
    return sum(w * max(0.0, drop) for w, drop in zip(discount_weights(len(drops), discount), drops))


def teacher_grounding(teacher_logps: Sequence[float], discount: float) -> float:
    """G_gt = Σ γ^{i-1} g_{t0+i} / Σ γ^{i-1}: the discounted mean of ``teacher_logps`` (non-finite ones left out)."""
    pairs = [(w, g) for w, g in zip(discount_weights(len(teacher_logps), discount), teacher_logps)
             if math.isfinite(g) and w > 0]
    total = sum(w for w, _ in pairs)
    return sum(w * g for w, g in pairs) / total if total > 0 else 0.0


def decision_reward(losses: Sequence[float], teacher_logps: Sequence[float], discount: float,
                    teacher_grounded_weight: float) -> tuple[float, float, float]:
    """(R, G_lp, G_gt) with R = G_lp + λ_gt · G_gt."""
    progress = learning_progress(losses, discount)
    grounding = teacher_grounding(teacher_logps, discount)
    return progress + teacher_grounded_weight * grounding, progress, grounding


def normalized_advantages(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    """A_j = (R_j − mean R) / (std R + ε), with the population std (over the B decisions of the update)."""
    return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + eps)


def trend_advantages(rewards: torch.Tensor, progress: torch.Tensor, window_rewards: torch.Tensor,
                     window_progress: torch.Tensor, eps: float) -> torch.Tensor:
    """Advantages against a baseline on training progress (ours, docs/method.md#update): R is regressed on t/T
    by least squares over the window of recent rewarded decisions (which includes this update's), and each
    decision's advantage is its residual over the std of the window's residuals.

    Learning progress shrinks as training goes on, so decisions normalised together (`normalized_advantages`)
    credit the early ones whatever their α; the residual of the trend credits a decision only for doing better
    than its time in training predicts. With fewer than 3 points, or no spread in progress, the baseline is the
    window's mean.
    """
    mean_progress, mean_reward = window_progress.mean(), window_rewards.mean()
    spread = ((window_progress - mean_progress) ** 2).mean()
    slope = torch.zeros_like(mean_reward)
    if window_rewards.numel() >= 3 and float(spread) > 1e-12:
        slope = ((window_progress - mean_progress) * (window_rewards - mean_reward)).mean() / spread

    def trend(at: torch.Tensor) -> torch.Tensor:
        return mean_reward + slope * (at - mean_progress)

    scale = (window_rewards - trend(window_progress)).std(unbiased=False)
    return (rewards - trend(progress)) / (scale + eps)


def problem_progress(before: float, after: float) -> float:
    """G_lp of one problem under exposure per problem (docs/method.md#exposure-per-problem): the drop of its own
    reference NLL from before its update to after the look-ahead, ℓ_i(t0) − ℓ_i(t0+L), not clipped at 0 (a rise
    is negative progress, and the advantages are centred within the step anyway); 0 when either end is not finite."""
    return before - after if math.isfinite(before) and math.isfinite(after) else 0.0


def grouped_advantages(groups: Sequence[torch.Tensor], eps: float) -> torch.Tensor:
    """Exposure per problem: each step's rewards centred on that step's mean, then all scaled by the population
    std of the centred rewards (+ ε). Problems of one step share their moment in training and the updates that
    followed, so the centring removes the drift of progress and every other update's effect exactly."""
    centred = torch.cat([rewards - rewards.mean() for rewards in groups])
    return centred / (centred.std(unbiased=False) + eps)


def entropy_hinge(entropy: torch.Tensor, target: float) -> torch.Tensor:
    """max(0, H − H_target)²: zero while the policy is at least as concentrated as the target, quadratic above."""
    return torch.clamp(entropy - target, min=0.0) ** 2


def controller_loss(log_probs: torch.Tensor, advantages: torch.Tensor, entropies: torch.Tensor,
                    entropy_coef: float, entropy_target: float) -> torch.Tensor:
    """L_ctrl = −mean_j A_j · log π(α_j | s_j) + c · mean_j max(0, H_j − H_target)²."""
    policy_gradient = -(advantages.detach() * log_probs).mean()
    return policy_gradient + entropy_coef * entropy_hinge(entropies, entropy_target).mean()
