"""The student's rollouts for a step: sampled from the current weights by the rollout engine, then graded.

The grader is a parameter (`atesd.eval.grading.grade` by default) so that a test or an experiment can put
another reward behind GRPO and the logged rollout accuracy without touching the recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import PreTrainedTokenizerBase

from atesd.data.problem import Problem
from atesd.rollout import Completions, RolloutEngine, SamplingParams
from atesd.train.cost import StepCost
from atesd.train.distributed import Processes


class Graded(Protocol):
    correct: bool


Grader = Callable[[str, str], Graded]  # (completion text, gold answer) -> a result with .correct


@dataclass
class GradedRollouts:
    """One completion per prompt, its text and whether its answer is right."""

    completions: Completions
    correct: list[bool]
    texts: list[str]  # decoded without special tokens, as graded

    @property
    def completion_ids(self) -> list[list[int]]:
        return self.completions.completion_ids

    @property
    def num_tokens(self) -> int:
        return self.completions.num_tokens

    def record(self, processes: Processes) -> dict[str, Any]:
        """Accuracy, mean length, share cut off by the token limit, and generated tokens, over all processes."""
        sums = processes.sums({
            "correct": float(sum(self.correct)), "count": float(len(self.correct)),
            "tokens": float(self.completions.num_tokens),
            "truncated": float(sum(not f for f in self.completions.finished))})
        count = max(sums["count"], 1.0)
        record = {"rollout_accuracy": sums["correct"] / count, "completion_length": sums["tokens"] / count,
                  "truncated_rate": sums["truncated"] / count, "generated_tokens": int(sums["tokens"])}
        if self.completions.sync_gap is not None:  # the main process's engine: the one the guard checked
            record["sync_gap"] = self.completions.sync_gap
        return record


class RolloutSampler:
    """Samples and grades rollouts with `engine`; generation is seeded per step by the caller's generator."""

    def __init__(self, engine: RolloutEngine, tokenizer: PreTrainedTokenizerBase, sampling: SamplingParams,
                 grader: Grader) -> None:
        self.engine, self.tokenizer, self.sampling, self.grader = engine, tokenizer, sampling, grader

    def sample(self, prompts: list[list[int]], problems: list[Problem], generator: torch.Generator,
               cost: StepCost) -> GradedRollouts:
        with cost.timed("rollout"):
            self.engine.update_weights()  # a separate engine (vLLM) samples with the weights of the last update
            completions = self.engine.generate(prompts, self.sampling, generator)
            texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in completions.completion_ids]
            correct = [self.grader(text, p.answer).correct for text, p in zip(texts, problems)]
        return GradedRollouts(completions, correct, texts)
