"""The sync guard: after a weight sync into a separate rollout engine (vLLM), the engine's log-probs of a few prompt
tokens must equal the training model's, else the run stops.

The commonest silent failure of colocated vLLM training is a LoRA adapter that never reaches vLLM: rollouts are
then sampled from the base model and training changes nothing, with every loss looking normal. The guard scores
the first tokens of the step's first prompt (at most 64) twice, with the engine and with the training model, and
compares their mean absolute difference per token (the ``sync_gap`` of metrics.jsonl) with a tolerance
(``rollout.vllm.sync_check_tolerance``, by default set by the weights' dtype from the gaps measured against vLLM:
docs/scaling.md#the-sync-guard). It costs one short prompt-log-prob request and one forward of those tokens per
step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from atesd.errors import UserError
from atesd.models.causal_lm import CausalLM
from atesd.models.sequences import completion_token_logprobs, pack_sequences


class WeightSyncError(UserError):
    """The rollout engine's model is not the training model after a weight sync."""


@dataclass(frozen=True)
class SyncCheck:
    tokens: int  # the prompt tokens scored (the first scores none: it has no context)
    tolerance: float  # the largest mean absolute log-prob difference per token, in nats

    def gap(self, served_logprobs: Callable[[list[int]], list[float]], model: CausalLM,
            prompt: Sequence[int]) -> float:
        """The mean absolute difference between the engine's log-probs of the prompt's first tokens and `model`'s."""
        ids = list(prompt[: self.tokens])
        if len(ids) < 2:
            return 0.0
        served = torch.tensor(served_logprobs(ids), dtype=torch.float64)
        trained = training_logprobs(model, ids).to(torch.float64)
        return float((served - trained).abs().mean())

    def verify(self, served_logprobs: Callable[[list[int]], list[float]], model: CausalLM,
               prompt: Sequence[int], sync: int) -> float:
        """The `gap`; a `WeightSyncError` when it is above the tolerance. `sync` counts the syncs, for the
        message."""
        gap = self.gap(served_logprobs, model, prompt)
        ids = list(prompt[: self.tokens])
        if not gap <= self.tolerance:  # NaN fails too
            raise WeightSyncError(
                f"after weight sync {sync}, vLLM's log-probs of {len(ids) - 1} prompt tokens differ from the training "
                f"model's by {gap:.4f} nats per token on average (tolerance {self.tolerance:g}): the weights did not "
                "arrive in vLLM as trained (with LoRA, most likely the adapter: rollouts would sample the base model "
                "and training would change nothing). Check the vLLM version and the weight names; set "
                "rollout.vllm.sync_check_tolerance higher if this is rounding, or rollout.vllm.sync_check=false to "
                "train without the guard")
        return gap


@torch.no_grad()
def training_logprobs(model: CausalLM, ids: Sequence[int]) -> torch.Tensor:
    """`model`'s log-probs of ``ids[1:]``, each given the tokens before it, in eval mode (no dropout), float32."""
    device = next(model.parameters()).device
    batch = pack_sequences([ids[:1]], [ids[1:]], pad_token_id=0).to(device)
    was_training = model.training
    model.eval()
    try:
        return completion_token_logprobs(model, batch).float().cpu()
    finally:
        model.train(was_training)
