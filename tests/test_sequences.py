"""Packing prompt + completion sequences, and completion log-probs against the model's full logits."""

from __future__ import annotations

import pytest
import torch

from atesd.models.sequences import (
    completion_hidden_states,
    completion_token_logprobs,
    output_head,
    pack_sequences,
    shared_prompt_hidden_states,
)
from atesd.models.tiny import build_char_tokenizer, build_tiny_model

PAD = 0


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1,
                             intermediate_size=32, max_positions=64, seed=3).eval()
    return model, tokenizer


def test_pack_sequences_exact_layout():
    prompts = [[5, 6, 7], [8], [20, 21]]
    completions = [[9, 10], [11, 12, 13], []]
    batch = pack_sequences(prompts, completions, PAD)

    assert batch.input_ids.tolist() == [
        [5, 6, 7, 9, 10],
        [8, 11, 12, 13, PAD],
        [20, 21, PAD, PAD, PAD],
    ]
    assert batch.attention_mask.tolist() == [
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 0],
    ]
    # completion token n of example b is predicted at position len(prompt_b) + n - 1
    assert batch.batch_index.tolist() == [0, 0, 1, 1, 1]
    assert batch.position_index.tolist() == [2, 3, 0, 1, 2]
    assert batch.targets.tolist() == [9, 10, 11, 12, 13]
    assert batch.completion_lengths == [2, 3, 0]
    assert batch.num_tokens == 5
    for tensor in (batch.input_ids, batch.attention_mask, batch.batch_index, batch.position_index, batch.targets):
        assert tensor.dtype == torch.long
    # the token at each predicting position + 1 is the target: no pad between prompt and completion
    assert batch.input_ids[batch.batch_index, batch.position_index + 1].tolist() == batch.targets.tolist()


def test_pack_sequences_pad_id_is_used_and_no_pad_inside():
    batch = pack_sequences([[1, 2, 3, 4]], [[5]], pad_token_id=99)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5]]
    batch = pack_sequences([[1], [1, 2, 3, 4]], [[5], [6]], pad_token_id=99)
    assert batch.input_ids.tolist() == [[1, 5, 99, 99, 99], [1, 2, 3, 4, 6]]
    assert batch.position_index.tolist() == [0, 3]


def test_pack_sequences_errors():
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        pack_sequences([[1], [2]], [[3]], PAD)
    with pytest.raises(ValueError, match="at least one token"):
        pack_sequences([[]], [[3]], PAD)


def test_to_keeps_everything():
    batch = pack_sequences([[1, 2]], [[3, 4]], PAD)
    moved = batch.to("cpu")
    assert torch.equal(moved.input_ids, batch.input_ids)
    assert torch.equal(moved.targets, batch.targets)
    assert moved.completion_lengths == batch.completion_lengths


def reference_logprobs(model, batch) -> torch.Tensor:
    """Full [B, T, V] logits from a plain forward, log-softmaxed and gathered at the completion positions."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return logprobs[batch.batch_index, batch.position_index, batch.targets]


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_completion_token_logprobs_match_full_logits(model_and_tokenizer, chunk_size):
    model, tokenizer = model_and_tokenizer
    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompts = [encode("Compute 1+2."), encode("Q: 7*8-3?"), encode("x")]
    completions = [encode("1+2=3 \\boxed{3}"), encode("56"), encode("abc\n")]
    batch = pack_sequences(prompts, completions, tokenizer.pad_token_id)

    with torch.no_grad():
        ours = completion_token_logprobs(model, batch, chunk_size=chunk_size)
    expected = reference_logprobs(model, batch)
    assert ours.shape == (batch.num_tokens,)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    assert (ours < 0).all()


def test_logprobs_do_not_depend_on_batch_padding(model_and_tokenizer):
    """Each example scored inside a padded batch gets the same log-probs as scored alone."""
    model, _ = model_and_tokenizer
    prompts = [[30, 31, 32, 33, 34, 35, 36], [40, 41]]
    completions = [[50, 51], [52, 53, 54, 55, 56]]
    with torch.no_grad():
        together = completion_token_logprobs(model, pack_sequences(prompts, completions, PAD))
        alone = torch.cat([completion_token_logprobs(model, pack_sequences([p], [c], PAD))
                           for p, c in zip(prompts, completions)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)


def test_hidden_states_and_head_give_the_full_logits(model_and_tokenizer):
    model, _ = model_and_tokenizer
    batch = pack_sequences([[30, 31, 32], [40]], [[50, 51], [52, 53, 54]], PAD)
    with torch.no_grad():
        hidden = completion_hidden_states(model, batch)
        weight, bias = output_head(model)
        logits = torch.nn.functional.linear(hidden, weight, bias)
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert hidden.shape == (5, 16)
    torch.testing.assert_close(logits, full[batch.batch_index, batch.position_index], rtol=0, atol=1e-5)


class WholeModelOnly(torch.nn.Module):
    """Stands for a wrapper such as DistributedDataParallel: callable, but without ``get_decoder``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.module = model

    def forward(self, **inputs):
        return self.module(**inputs)


def test_a_wrapper_without_a_decoder_gives_the_same_hidden_states(model_and_tokenizer):
    model, _ = model_and_tokenizer
    batch = pack_sequences([[30, 31, 32], [40]], [[50, 51], [52, 53, 54]], PAD)
    with torch.no_grad():
        torch.testing.assert_close(completion_hidden_states(WholeModelOnly(model), batch),
                                   completion_hidden_states(model, batch), rtol=0, atol=0)


def test_completion_token_logprobs_empty_and_gradients(model_and_tokenizer):
    model, _ = model_and_tokenizer
    empty = completion_token_logprobs(model, pack_sequences([[1, 2]], [[]], PAD))
    assert empty.shape == (0,)
    batch = pack_sequences([[30, 31]], [[32, 33]], PAD)
    logprobs = completion_token_logprobs(model, batch)
    assert logprobs.requires_grad
    logprobs.sum().backward()
    assert model.get_output_embeddings().weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_shared_prompt_scoring_equals_packed_scoring(model_and_tokenizer):
    """The prompts run once with two continuation sets after them (left-padded prompts, a cropped cache) give
    the packed path's hidden states for each set, prompts of different lengths and empty continuations included."""
    model, _ = model_and_tokenizer
    prompts = [[30, 31, 32, 33, 34, 35, 36], [40, 41], [42, 43, 44]]
    rollouts = [[50, 51], [52, 53, 54, 55, 56], [57]]
    references = [[60, 61, 62, 63], [], [64, 65]]
    with torch.no_grad():
        shared = shared_prompt_hidden_states(model, prompts, [rollouts, references], PAD)
        packed = [completion_hidden_states(model, pack_sequences(prompts, c, PAD)) for c in (rollouts, references)]
    for ours, expected in zip(shared, packed):
        assert ours.shape == expected.shape
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="one continuation per prompt"):
        shared_prompt_hidden_states(model, prompts, [rollouts[:2]], PAD)
