"""The transformers-generate rollout engine: exact prompts kept, completions trimmed at EOS, seeded."""

from __future__ import annotations

import torch

from atesd.models.tiny import build_char_tokenizer, build_tiny_model
from atesd.rollout import HFGenerateEngine, SamplingParams


def _engine(batch_size: int = 8) -> tuple[HFGenerateEngine, int]:
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                             intermediate_size=64, max_positions=128, seed=0)
    engine = HFGenerateEngine(model, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                              batch_size=batch_size)
    return engine, tokenizer.eos_token_id


def test_completions_keep_prompts_and_stop_at_eos():
    engine, eos = _engine()
    prompts = [[10, 11, 12], [13], [14, 15, 16, 17, 18]]
    out = engine.generate(prompts, SamplingParams(max_new_tokens=12), torch.Generator().manual_seed(0))
    assert out.prompt_ids == prompts
    assert len(out.completion_ids) == 3 and len(out.finished) == 3
    for ids, finished in zip(out.completion_ids, out.finished):
        assert 0 < len(ids) <= 12
        assert (eos in ids) == finished
        if finished:
            assert ids.index(eos) == len(ids) - 1  # trimmed right after the first EOS, padding dropped
        else:
            assert len(ids) == 12  # ran to max_new_tokens
    assert out.num_tokens == sum(len(ids) for ids in out.completion_ids)


def test_sampling_is_a_function_of_the_generator_seed_not_the_batching():
    engine, _ = _engine(batch_size=8)
    prompts = [[10 + i, 20, 30] for i in range(4)]
    sampling = SamplingParams(temperature=1.0, top_p=0.9, top_k=20, max_new_tokens=10)
    first = engine.generate(prompts, sampling, torch.Generator().manual_seed(3)).completion_ids
    again = engine.generate(prompts, sampling, torch.Generator().manual_seed(3)).completion_ids
    other = engine.generate(prompts, sampling, torch.Generator().manual_seed(4)).completion_ids
    assert first == again
    assert first != other
    state = torch.random.get_rng_state()
    engine.generate(prompts, sampling, torch.Generator().manual_seed(3))
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's global RNG is left as it was


def test_training_mode_is_restored():
    engine, _ = _engine()
    engine.model.train()
    engine.generate([[10, 11]], SamplingParams(max_new_tokens=3))
    assert engine.model.training
