"""GRPO and SFT objectives (losses.policy) against values worked out by hand, and the chunked token log-probs
they train through."""

from __future__ import annotations

import math

import pytest
import torch

from atesd.losses.policy_gradient import clipped_policy_loss, group_advantages, k3_kl, sft_loss, token_weights
from atesd.models.sequences import (
    completion_hidden_states,
    output_head,
    pack_sequences,
    token_logprobs_from_hidden,
)
from atesd.models.tiny import build_char_tokenizer, build_tiny_model

# ------------------------------------------------------------------------------- group-normalised advantages


def test_group_advantages_by_hand():
    # group 1: rewards 1, 0, 0, 1 -> mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735...
    # group 2: all right -> no signal, zero advantages
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    advantages = group_advantages(rewards, group_size=4, scale=True, eps=1e-4)
    a = 0.8658754297607016  # 0.5 / (0.5773502691896258 + 1e-4)
    assert advantages.tolist() == pytest.approx([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0], abs=1e-6)


def test_group_advantages_without_scaling_are_centred_rewards():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    advantages = group_advantages(rewards, group_size=3, scale=False)
    assert advantages.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3])


def test_each_group_is_normalised_on_its_own():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    per_group = group_advantages(rewards, group_size=2)
    assert per_group.tolist() == pytest.approx(group_advantages(rewards[:2], 2).tolist() * 2)
    assert per_group[:2].sum().item() == pytest.approx(0.0)


@pytest.mark.parametrize(("rewards", "group_size", "message"), [
    (torch.ones(5), 2, "whole groups"),
    (torch.ones(2, 2), 2, "flat"),
    (torch.ones(3), 1, "at least 2"),
])
def test_group_advantages_refuse_bad_layouts(rewards, group_size, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(rewards, group_size)


# ------------------------------------------------------------------------------- the clipped objective


# (ratio, advantage) -> (loss, d loss / d log p, clip active); eps = 0.2.
# The loss is -min(r A, clip(r, 0.8, 1.2) A); where the clipped term is the minimum it does not depend on
# log p, so the gradient is 0; elsewhere d(-r A)/d log p = -r A.
CLIP_CASES = [
    (1.5, +1.0, -1.2, 0.0, True),    # good action pushed too far up: clipped, no gradient
    (1.5, -1.0, +1.5, +1.5, False),  # bad action whose prob went up: the unclipped (worse) term keeps its gradient
    (0.5, +1.0, -0.5, -0.5, False),  # good action whose prob went down: unclipped
    (0.5, -1.0, +0.8, 0.0, True),    # bad action pushed too far down: clipped
    (1.0, +2.0, -2.0, -2.0, False),  # on-policy (ratio 1): the plain policy gradient -A
    (1.1, -1.0, +1.1, +1.1, False),  # inside the trust region
]


@pytest.mark.parametrize(("ratio", "advantage", "loss", "gradient", "clipped"), CLIP_CASES)
def test_clipped_objective_and_gradient_by_hand(ratio, advantage, loss, gradient, clipped):
    old = torch.tensor([math.log(0.3)], dtype=torch.float64)
    logprob = (old + math.log(ratio)).clone().requires_grad_(True)
    value, active = clipped_policy_loss(logprob, old, torch.tensor([advantage], dtype=torch.float64), 0.2)
    value.sum().backward()
    assert value.item() == pytest.approx(loss)
    assert logprob.grad.item() == pytest.approx(gradient)
    assert active.item() is clipped


def test_old_logprobs_get_no_gradient():
    old = torch.tensor([-1.0], requires_grad=True)
    new = torch.tensor([-0.5], requires_grad=True)
    clipped_policy_loss(new, old, torch.tensor([1.0]), 0.2)[0].sum().backward()
    assert old.grad is None and new.grad is not None


def test_k3_kl_by_hand():
    # p = 0.5, p_ref = 0.25: log ratio = log(p_ref / p) = -log 2; k3 = 0.5 + log 2 - 1
    logprob = torch.tensor([math.log(0.5)], dtype=torch.float64, requires_grad=True)
    kl = k3_kl(logprob, torch.tensor([math.log(0.25)], dtype=torch.float64))
    kl.sum().backward()
    assert kl.item() == pytest.approx(0.5 + math.log(2) - 1)
    assert logprob.grad.item() == pytest.approx(1 - 0.5)  # d/dlogp = 1 - p_ref / p
    same = k3_kl(torch.tensor([-0.7]), torch.tensor([-0.7]))
    assert same.item() == 0.0


def test_token_weights_by_hand():
    assert token_weights([2, 3], "token").tolist() == [1.0] * 5
    assert token_weights([2, 3], "sequence").tolist() == pytest.approx([0.5, 0.5, 1 / 3, 1 / 3, 1 / 3])
    # weighted sum / number of completions = mean of the completions' mean losses
    per_token = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0])
    assert float((per_token * token_weights([2, 3], "sequence")).sum() / 2) == pytest.approx((2.0 + 3.0) / 2)
    assert token_weights([0, 2], "sequence").tolist() == [0.5, 0.5]


# ------------------------------------------------------------------------------- SFT and the log-prob path


@pytest.fixture(scope="module")
def tiny_model():
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1,
                             intermediate_size=32, max_positions=64, seed=5)
    return model, tokenizer


def test_sft_loss_is_the_nll_of_the_solution_tokens_only(tiny_model):
    """SFT's mean loss equals transformers' own causal-LM loss with the prompt and the padding masked (-100)."""
    model, tokenizer = tiny_model
    prompts = [tokenizer.encode("Compute 1+2."), tokenizer.encode("Compute 7-3+1.")]
    solutions = [tokenizer.encode("1+2=3 \\boxed{3}"), tokenizer.encode("7-3=4")]
    batch = pack_sequences(prompts, solutions, tokenizer.pad_token_id)
    weight, bias = output_head(model)
    ours = sft_loss(token_logprobs_from_hidden(completion_hidden_states(model, batch), weight, bias,
                                               batch.targets, chunk_size=4))
    labels = batch.input_ids.clone()
    for row, prompt in enumerate(prompts):
        labels[row, : len(prompt)] = -100
    labels[batch.attention_mask == 0] = -100
    reference = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss

    assert ours.shape == (sum(map(len, solutions)),)
    torch.testing.assert_close(ours.mean(), reference)
    ours_grad = torch.autograd.grad(ours.mean(), weight)[0]
    reference_grad = torch.autograd.grad(
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss, weight)[0]
    torch.testing.assert_close(ours_grad, reference_grad)


@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_token_logprobs_chunks_match_one_piece_values_and_gradients(chunk_size):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(11, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (7,), generator=generator)
    chunked = token_logprobs_from_hidden(hidden, weight, bias, targets, chunk_size)
    direct = torch.log_softmax(hidden @ weight.T + bias, -1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(chunked, direct)
    upstream = torch.randn(7, generator=generator, dtype=torch.float64)
    grads = torch.autograd.grad((chunked * upstream).sum(), (hidden, weight, bias))
    expected = torch.autograd.grad((direct * upstream).sum(), (hidden, weight, bias))
    for ours, reference in zip(grads, expected):
        torch.testing.assert_close(ours, reference)


def test_token_logprobs_of_no_positions_still_backpropagate():
    hidden = torch.zeros(0, 4, requires_grad=True)
    out = token_logprobs_from_hidden(hidden, torch.zeros(3, 4), None, torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)
    out.sum().backward()
    assert hidden.grad is not None
