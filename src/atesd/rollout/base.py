"""The rollout interface every engine implements.

An engine takes tokenized prompts and returns, per prompt, the sampled completion token ids, ending with the
EOS token when the model stopped on its own. Prompts and completions are kept as separate id lists, so every
later scoring pass knows each example's exact prompt offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    max_new_tokens: int = 64


@dataclass
class Completions:
    """Sampled completions, aligned with the prompts they were sampled from."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]  # includes the final EOS token when the model emitted it
    finished: list[bool]  # True when the completion ended with EOS before max_new_tokens
    # An engine that samples from its own copy of the weights: its sync guard's gap after the last weight sync
    # (mean |Δ log p| per token against the training model), when it was measured for these completions.
    sync_gap: float | None = None

    @property
    def num_tokens(self) -> int:
        return sum(len(ids) for ids in self.completion_ids)


class RolloutEngine(Protocol):
    def update_weights(self) -> None:
        """Make later rollouts use the training model's current weights (called before each step's rollouts)."""
        ...

    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingParams,
                 generator: torch.Generator | None = None) -> Completions:
        """Sample one completion per prompt (repeat a prompt to get several)."""
        ...
