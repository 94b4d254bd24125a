"""Rollouts with `transformers`' own ``generate``: batched sampling on the training model itself.

Prompts are left-padded for generation only; the returned completions are trimmed at the first EOS (kept)
and stripped of padding, so callers never see pad tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from atesd.models.sequences import left_padded
from atesd.rollout.base import Completions, SamplingParams


class HFGenerateEngine:
    """Samples from a `transformers` causal LM with ``model.generate``, `batch_size` prompts at a time."""

    def __init__(self, model: torch.nn.Module, *, pad_token_id: int, eos_token_id: int,
                 batch_size: int = 64) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.batch_size = batch_size

    def update_weights(self) -> None:
        """Nothing to do: this engine samples from the training model itself."""

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingParams,
                 generator: torch.Generator | None = None) -> Completions:
        completions: list[list[int]] = []
        finished: list[bool] = []
        for start in range(0, len(prompt_ids), self.batch_size):
            chunk = prompt_ids[start : start + self.batch_size]
            ids, done = self._generate_chunk(chunk, sampling, generator)
            completions.extend(ids)
            finished.extend(done)
        return Completions([list(p) for p in prompt_ids], completions, finished)

    def _generate_chunk(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams,
                        generator: torch.Generator | None) -> tuple[list[list[int]], list[bool]]:
        device = next(self.model.parameters()).device
        input_ids, attention_mask = left_padded(prompts, self.pad_token_id)
        width = input_ids.shape[1]
        was_training = self.model.training
        self.model.eval()
        # generate() samples with the global RNG; a caller's generator seeds it so that rollouts are a
        # function of (seed, step) and a resumed run samples exactly what an uninterrupted one would.
        rng_state = None
        if generator is not None:
            rng_state = torch.random.get_rng_state()
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        try:
            output = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k or None,
                max_new_tokens=sampling.max_new_tokens,
                pad_token_id=self.pad_token_id,
                eos_token_id=self.eos_token_id,
            )
        finally:
            if rng_state is not None:
                torch.random.set_rng_state(rng_state)
            self.model.train(was_training)
        new_tokens = output[:, width:].tolist()
        completions, finished = [], []
        for tokens in new_tokens:
            if self.eos_token_id in tokens:
                tokens = tokens[: tokens.index(self.eos_token_id) + 1]
                finished.append(True)
            else:
                finished.append(False)
            completions.append(tokens)
        return completions, finished
