"""The baselines' steps in the recipe's loop (docs/method.md#baselines): GRPO and SFT.

They share everything with the distillation step but the objective: the data order, the rollout engine, the
update (accumulation, clipping, non-finite skip), the probe, logging and checkpoints.

- GRPO (`grpo_step`) samples G completions per prompt, grades them, and takes the ratio-clipped policy gradient
  with group-normalised advantages (`atesd.losses.policy_gradient`), optionally with a k3 KL to the teacher
  weights; no teacher prompt, no exposure. A process samples whole groups for its own prompts, so group
  normalisation never needs another process.
- SFT (`sft_step`) trains on the NLL of the reference solutions after the student prompt, without rollouts.
"""

from __future__ import annotations

import numpy as np
import torch

from atesd.config import GRPOConfig
from atesd.data.problem import Problem
from atesd.losses.policy_gradient import clipped_policy_loss, group_advantages, k3_kl, sft_loss, token_weights
from atesd.train.cost import StepCost
from atesd.train.parts import StepParts, StepResult, UpdateAndProbe


def grpo_step(problems: list[Problem], step: int, *, parts: StepParts, settings: GRPOConfig,
              update_and_probe: UpdateAndProbe, generator: torch.Generator, cost: StepCost) -> StepResult:
    group = settings.group_size
    scorer, processes = parts.scorer, parts.processes
    group_problems = [p for p in problems for _ in range(group)]
    prompts = [parts.prompts.student(p) for p in group_problems]
    rollouts = parts.sampler.sample(prompts, group_problems, generator, cost)
    rewards = torch.tensor(rollouts.correct, dtype=torch.float32)
    advantages = group_advantages(rewards, group, settings.scale_rewards, settings.advantage_eps)
    lengths = [len(ids) for ids in rollouts.completion_ids]
    token_advantages = advantages.repeat_interleave(torch.tensor(lengths)).to(processes.device)
    weights = token_weights(lengths, settings.loss_normalization, processes.device)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    units = sum(lengths) if settings.loss_normalization == "token" else len(lengths)
    scale = processes.loss_scale(units)
    totals = {"loss": 0.0, "clipped": 0.0, "kl": 0.0}

    def loss_of(span: slice) -> torch.Tensor:
        batch = scorer.packed(prompts[span], rollouts.completion_ids[span], cost)
        tokens = slice(offsets[span.start], offsets[min(span.stop, len(lengths))])
        logprobs = scorer.student_token_logprobs(batch)
        per_token, clipped = clipped_policy_loss(logprobs, logprobs.detach(), token_advantages[tokens],
                                                 settings.clip_epsilon)
        if settings.kl_coef > 0:
            kl = k3_kl(logprobs, scorer.teacher_token_logprobs(batch, cost))
            per_token = per_token + settings.kl_coef * kl
            totals["kl"] += float(kl.detach().sum())
        loss = (per_token * weights[tokens]).sum()
        totals["loss"] += float(loss.detach())
        totals["clipped"] += float(clipped.sum())
        return loss * scale

    updated = update_and_probe(scorer.spans(len(prompts)), loss_of, step, cost)
    groups = rewards.view(-1, group)
    sums = processes.sums({
        "loss": totals["loss"], "units": float(units), "clipped": totals["clipped"], "kl": totals["kl"],
        "tokens": float(sum(lengths)), "group_std": float(groups.std(dim=1).sum()),
        "groups": float(groups.shape[0]), "flat_groups": float((groups.std(dim=1) == 0).sum())})
    tokens = max(sums["tokens"], 1.0)
    record = {"loss": sums["loss"] / max(sums["units"], 1.0), "reward_std": sums["group_std"] / sums["groups"],
              "groups_without_signal": sums["flat_groups"] / sums["groups"],
              "clip_fraction": sums["clipped"] / tokens}
    if settings.kl_coef > 0:
        record["kl_ref"] = sums["kl"] / tokens
    record.update(rollouts.record(processes))
    return StepResult({**record, **updated}, {"prompts": rollouts.completions.prompt_ids,
                                               "correct": rollouts.correct})


def sft_step(problems: list[Problem], step: int, *, parts: StepParts, update_and_probe: UpdateAndProbe,
             cost: StepCost) -> StepResult:
    scorer, processes = parts.scorer, parts.processes
    prompts = [parts.prompts.student(p) for p in problems]
    solutions = [parts.prompts.solution(p) for p in problems]
    num_tokens = sum(len(ids) for ids in solutions)
    scale = processes.loss_scale(num_tokens)
    totals = {"loss": 0.0}

    def loss_of(span: slice) -> torch.Tensor:
        loss = sft_loss(scorer.student_token_logprobs(scorer.packed(prompts[span], solutions[span], cost))).sum()
        totals["loss"] += float(loss.detach())
        return loss * scale

    updated = update_and_probe(scorer.spans(len(prompts)), loss_of, step, cost)
    sums = processes.sums({"loss": totals["loss"], "tokens": float(num_tokens)})
    record = {"loss": sums["loss"] / max(sums["tokens"], 1.0), "reference_tokens": int(sums["tokens"]),
              "generated_tokens": 0}
    return StepResult({**record, **updated}, {"prompts": prompts})
