"""Rollouts on the training model itself with `transformers`: batched sampling by atesd's decode loop
(`atesd.rollout.decode`, the default) or by ``model.generate``.

Prompts are left-padded for sampling only; the returned completions are trimmed at the first EOS (kept)
and stripped of padding, so callers never see pad tokens. Both samplers draw from the same seeded random
stream and sample the same tokens given the same logits (tests/test_decode.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch

from atesd.models.causal_lm import CausalLM
from atesd.models.sequences import left_padded
from atesd.rollout.base import Completions, SamplingParams
from atesd.rollout.decode import DecodeOptions, Unsupported, decode

logger = logging.getLogger(__name__)


class HFGenerateEngine:
    """Samples from a `transformers` causal LM, `batch_size` prompts at a time.

    ``sampler="loop"`` runs atesd's decode loop with `decode_options`; a model it cannot serve (an
    encoder-decoder, a prompt-learning peft wrapper, a generation config with beams) is sampled with
    ``generate`` instead, said once in the log. ``sampler="generate"`` always uses ``model.generate``."""

    def __init__(self, model: CausalLM, *, pad_token_id: int, eos_token_id: int,
                 batch_size: int = 64, sampler: Literal["loop", "generate"] = "loop",
                 decode_options: DecodeOptions | None = None) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.batch_size = batch_size
        self.sampler = sampler
        self.decode_options = decode_options or DecodeOptions()

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
        input_ids, attention_mask = (tensor.to(device) for tensor in left_padded(prompts, self.pad_token_id))
        was_training = self.model.training
        self.model.eval()
        # Both samplers draw from the global RNG; a caller's generator seeds it so that rollouts are a function
        # of (seed, step) and a resumed run samples exactly what an uninterrupted one would.
        rng_state = None
        if generator is not None:
            rng_state = torch.random.get_rng_state()
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        try:
            new_tokens = self._sample(input_ids, attention_mask, sampling).tolist()
        finally:
            if rng_state is not None:
                torch.random.set_rng_state(rng_state)
            self.model.train(was_training)
        completions, finished = [], []
        for tokens in new_tokens:
            if self.eos_token_id in tokens:
                tokens = tokens[: tokens.index(self.eos_token_id) + 1]
                finished.append(True)
            else:
                finished.append(False)
            completions.append(tokens)
        return completions, finished

    def _sample(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                sampling: SamplingParams) -> torch.Tensor:
        """The new tokens ``[B, steps]`` after the left-padded prompts, pad after each row's EOS."""
        if self.sampler == "loop":
            try:
                return decode(self.model, input_ids, attention_mask, sampling, pad_token_id=self.pad_token_id,
                              eos_token_id=self.eos_token_id, options=self.decode_options)
            except Unsupported as reason:
                logger.warning("rollout.sampler loop cannot sample from this model (%s): sampling with "
                               "transformers' generate instead", reason)
                self.sampler = "generate"
        # GenerationMixin's generate, which every causal LM has and PreTrainedModel does not declare
        output = self.model.generate(  # type: ignore[operator]
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k or None,
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
        )
        return output[:, input_ids.shape[1]:]
