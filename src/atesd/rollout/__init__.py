"""Rollout engines: sample completions for a batch of prompts behind one small interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

from atesd.models.causal_lm import CausalLM
from atesd.rollout.base import Completions, RolloutEngine, SamplingParams
from atesd.rollout.decode import DecodeOptions
from atesd.rollout.hf import HFGenerateEngine

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from atesd.config import Config


def build_rollout_engine(config: Config, model: CausalLM, tokenizer: PreTrainedTokenizerBase,
                         model_path: str, *, batch_size: int, seed: int) -> RolloutEngine:
    """The engine `rollout.engine` names, sampling from `model` (the training model, unwrapped)."""
    if config.rollout.engine == "vllm":
        from atesd.rollout.vllm import VLLMEngine

        return VLLMEngine(model, model_path, config.rollout.vllm, eos_token_id=tokenizer.eos_token_id,
                          dtype=config.model.dtype, seed=seed, trust_remote_code=config.model.trust_remote_code)
    loop = config.rollout.loop
    return HFGenerateEngine(model, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                            batch_size=batch_size, sampler=config.rollout.sampler,
                            decode_options=DecodeOptions(loop.cache, loop.drop_finished, loop.compile))


__all__ = ["Completions", "DecodeOptions", "HFGenerateEngine", "RolloutEngine", "SamplingParams",
           "build_rollout_engine"]
