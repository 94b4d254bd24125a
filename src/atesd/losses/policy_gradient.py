"""The baselines' objectives (docs/method.md#baselines): GRPO's group-normalised, ratio-clipped policy gradient and
SFT's NLL.

Both work on the per-token log-probabilities of the student (`models.sequences.token_logprobs_from_hidden`)
and return per-token losses; the trainer weights and sums them (see `token_weights`) exactly as it reduces the
distillation loss, so every method's loss is normalised the same way across micro-batches and processes.

GRPO, per prompt with G sampled completions and rewards r_1..r_G (1 if the graded answer is right, else 0):

    A_i = (r_i - mean(r)) / (std(r) + eps)          (std: the unbiased sample std, as in TRL; or no division)
    ratio_n = exp(log p(y_n) - log p_old(y_n))      for every token n of completion i
    loss_n = -min(ratio_n * A_i, clip(ratio_n, 1 - eps_clip, 1 + eps_clip) * A_i) + beta * KL_n

with KL_n the k3 estimator exp(ref_n - logp_n) - (ref_n - logp_n) - 1 of KL(p || p_ref) (Schulman 2020), which
is non-negative and unbiased. atesd samples the rollouts with the weights it then updates once (TRL's
num_iterations = 1), so log p_old is log p detached: the ratio is 1 in value and the gradient is the plain
policy gradient A * grad log p; the clip acts wherever the behaviour log-probs differ from the current ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Advantages of rewards laid out group after group (`group_size` consecutive completions per prompt).

    A group whose completions all got the same reward gets zero advantages: it carries no learning signal.
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be a flat tensor of whole groups of {group_size}, got shape "
                         f"{tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError("group normalisation needs at least 2 completions per prompt")
    groups = rewards.float().view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.flatten()


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss ``-min(r A, clip(r, 1-eps, 1+eps) A)`` and where the clip was active.

    All arguments are per token ``[N]`` (a completion's advantage repeated over its tokens); gradients flow
    through `logprobs` only.
    """
    ratio = torch.exp(logprobs - old_logprobs.detach())
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - epsilon, 1.0 + epsilon) * advantages
    loss = -torch.minimum(unclipped, clipped)
    return loss, (clipped < unclipped).detach()


def k3_kl(logprobs: torch.Tensor, reference_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(p || p_ref) from the sampled tokens' log-probs (k3: non-negative, unbiased)."""
    log_ratio = reference_logprobs.detach() - logprobs
    return torch.exp(log_ratio) - log_ratio - 1.0


def sft_loss(logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of the reference solution's tokens (prompt tokens are never among
    them: `pack_sequences` gathers completion positions only, so the loss mask is the completion itself)."""
    return -logprobs


def token_weights(completion_lengths: Sequence[int], normalization: Literal["token", "sequence"],
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-token weights whose weighted sum, divided by the step's count of *units* (completion tokens for
    ``token``; completions for ``sequence``), is the step's loss.

    ``token``: every token weighs 1, so the loss is the mean over all completion tokens of the step (long
    completions count more; the distillation loss's reduction, DAPO's). ``sequence``: each token weighs
    1 / its completion's length, so each completion's mean counts once (the original GRPO).
    """
    if normalization == "token":
        return torch.ones(sum(completion_lengths), device=device)
    if normalization == "sequence":
        return torch.cat([torch.full((length,), 1.0 / length, device=device) for length in completion_lengths
                          if length]) if any(completion_lengths) else torch.zeros(0, device=device)
    raise ValueError(f"unknown loss normalization '{normalization}'")
