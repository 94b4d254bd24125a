"""Teacher–student mismatch of the starting model as a function of the exposure α (docs/method.md#statistics, for
`atesd sweep`).

One fixed set of student rollouts is sampled (seeded) from the starting model on training problems; each
completion is then scored by the starting model twice, after the student prompt and after the teacher prompt
at α, and the per-token forward KL(p_T ‖ p_S) and top-1 disagreement come from the same
`divergence_from_hidden` the trainer uses. Holding the rollouts fixed makes the α's directly comparable: only
the teacher's context changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from transformers import PreTrainedModel

from atesd.config import Config
from atesd.data.problem import Problem
from atesd.data.prompts import PromptBuilder
from atesd.losses import DivergenceSpec, divergence_from_hidden
from atesd.models.sequences import completion_hidden_states, output_head, pack_sequences
from atesd.rollout import HFGenerateEngine, SamplingParams
from atesd.train.base_model import load_model
from atesd.train.problems import training_problems

STATISTICS = ("kl_mean", "kl_p90", "kl_p99", "top1_disagree")


class BaseRollouts(NamedTuple):
    model: PreTrainedModel
    tokenizer: Any
    prompts: PromptBuilder
    problems: list[Problem]
    completions: list[list[int]]


@torch.no_grad()
def sample_base_rollouts(config: Config, num_problems: int, seed: int) -> BaseRollouts:
    """The config's starting model, `num_problems` training problems chosen with `seed` and one student rollout
    of each, sampled with `seed`: the fixed rollouts that several teachers then score (here, and in
    benchmarks/ar_opd_targets.py)."""
    model, tokenizer = load_model(config)
    model.eval()
    train_problems, _ = training_problems(config)
    chosen = np.random.default_rng(seed).choice(len(train_problems), min(num_problems, len(train_problems)),
                                                replace=False)
    problems = [train_problems[i] for i in sorted(chosen)]
    prompts = PromptBuilder(tokenizer, config.templates, config.model.student_chat_kwargs,
                            config.model.teacher_chat_kwargs)
    engine = HFGenerateEngine(model, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                              batch_size=config.train.micro_batch_size)
    rollout = config.rollout
    sampling = SamplingParams(rollout.temperature, rollout.top_p, rollout.top_k, rollout.max_new_tokens)
    completions = engine.generate([prompts.student(p) for p in problems], sampling,
                                  torch.Generator().manual_seed(seed)).completion_ids
    return BaseRollouts(model, tokenizer, prompts, problems, completions)


@torch.no_grad()
def mismatch_by_alpha(config: Config, alphas: Sequence[float], num_problems: int,
                      seed: int) -> dict[str, dict[str, float]]:
    """``{str(alpha): {kl_mean, kl_p90, kl_p99, top1_disagree, tokens}}`` on `num_problems` training problems
    (chosen and sampled with `seed`) for the config's starting model."""
    model, tokenizer, prompts, problems, completions = sample_base_rollouts(config, num_problems, seed)
    micro = config.train.micro_batch_size
    student_prompts = [prompts.student(p) for p in problems]

    # The statistics are the divergence's own (forward KL at temperature 1, full vocabulary), whatever loss the
    # config trains with; the kind only decides the loss, which is not used here.
    spec = DivergenceSpec(kind="forward_kl", chunk_size=config.loss.chunk_size)
    head, bias = output_head(model)
    kl: dict[float, list[torch.Tensor]] = {alpha: [] for alpha in alphas}
    disagree: dict[float, list[torch.Tensor]] = {alpha: [] for alpha in alphas}
    for start in range(0, len(problems), micro):
        span = slice(start, start + micro)
        student_batch = pack_sequences(student_prompts[span], completions[span], tokenizer.pad_token_id)
        student_hidden = completion_hidden_states(model, student_batch)
        for alpha in alphas:
            teacher_batch = pack_sequences([prompts.teacher(p, alpha) for p in problems[span]], completions[span],
                                           tokenizer.pad_token_id)
            out = divergence_from_hidden(student_hidden, completion_hidden_states(model, teacher_batch), head, head,
                                         student_batch.targets, spec, bias, bias)
            kl[alpha].append(out.per_token_kl)
            disagree[alpha].append(out.top1_disagree)
    return {f"{alpha:g}": summarize_mismatch(torch.cat(kl[alpha]), torch.cat(disagree[alpha])) for alpha in alphas}


def summarize_mismatch(per_token_kl: torch.Tensor, top1_disagree: torch.Tensor) -> dict[str, float]:
    """Mean and tail quantiles of per-token KL, and the share of positions whose argmaxes differ."""
    if per_token_kl.numel() == 0:
        nan = float("nan")
        return {"kl_mean": nan, "kl_p90": nan, "kl_p99": nan, "top1_disagree": nan, "tokens": 0}
    kl = per_token_kl.double()
    return {
        "kl_mean": float(kl.mean()),
        "kl_p90": float(torch.quantile(kl, 0.9)),
        "kl_p99": float(torch.quantile(kl, 0.99)),
        "top1_disagree": float(top1_disagree.double().mean()),
        "tokens": int(kl.numel()),
    }
