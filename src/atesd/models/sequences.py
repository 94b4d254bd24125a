"""Prompt + completion sequences as model inputs, and what a model says about the completion tokens.

Every scoring pass in atesd (student and teacher distillation forwards, probe NLL, the teacher's log-prob of
the reference, SFT) has the same shape: a batch of (prompt ids, completion ids) pairs whose completion tokens
must be predicted from ``[prompt ; completion<n]``. Sequences are concatenated per example and right-padded,
so no pad token ever sits between a prompt and its completion and positions start at 0 for every example.
The logits that predict completion token n sit at position ``len(prompt) + n - 1``; those positions are
gathered into one flat list of N completion positions, so that losses work on ``[N, ...]`` tensors and never
on padded ``[B, T, V]`` ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

import torch
from torch.distributed.tensor import DTensor, Partial
from torch.utils.checkpoint import checkpoint

from atesd.models.causal_lm import CausalLM


@dataclass
class PackedSequences:
    """A right-padded batch of ``[prompt ; completion]`` sequences with the flat completion positions."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    batch_index: torch.Tensor  # [N] example of each completion token
    position_index: torch.Tensor  # [N] position whose output predicts that token
    targets: torch.Tensor  # [N] the completion tokens
    completion_lengths: list[int]

    @property
    def num_tokens(self) -> int:
        return int(self.targets.numel())

    def to(self, device: torch.device | str) -> PackedSequences:
        return PackedSequences(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.batch_index.to(device),
            self.position_index.to(device),
            self.targets.to(device),
            self.completion_lengths,
        )


def pack_sequences(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                   pad_token_id: int) -> PackedSequences:
    """Concatenate each prompt with its completion and right-pad the batch."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token to predict its completion from")
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    width = max(lengths)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    batch_index: list[int] = []
    position_index: list[int] = []
    targets: list[int] = []
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        sequence = list(prompt) + list(completion)
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
        start = len(prompt) - 1
        batch_index.extend([row] * len(completion))
        position_index.extend(range(start, start + len(completion)))
        targets.extend(completion)
    return PackedSequences(
        input_ids=input_ids,
        attention_mask=attention_mask,
        batch_index=torch.tensor(batch_index, dtype=torch.long),
        position_index=torch.tensor(position_index, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        completion_lengths=[len(c) for c in completions],
    )


def completion_hidden_states(model: torch.nn.Module, batch: PackedSequences) -> torch.Tensor:
    """The final (normed) hidden states at the N completion-predicting positions: ``[N, D]``.

    The model's decoder (``get_decoder()``: the transformer without its output head) is run directly, so that
    no ``[B, T, V]`` logits are made and no per-layer outputs are held: asking the whole model for
    ``output_hidden_states`` would keep every layer's ``[B, T, D]`` output alive to the end of the forward,
    which under ``no_grad`` (the teacher) are otherwise freed layer by layer. A wrapper without ``get_decoder``
    (DistributedDataParallel, whose forward must run for its gradient hooks) is called whole, asking for one
    position of logits only; the output head is applied later, chunk by chunk, by the loss.
    """
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    get_decoder = getattr(model, "get_decoder", None)
    if get_decoder is not None:
        hidden = get_decoder()(**inputs).last_hidden_state
    else:
        hidden = model(**inputs, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
    return hidden[batch.batch_index, batch.position_index]


def left_padded(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts left-padded to the longest, so that every one ends at the last position: ``(input_ids,
    attention_mask)``, both ``[B, T]``. What generation and cached continuation need."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        attention_mask[row, width - len(prompt):] = 1
    return input_ids, attention_mask


def shared_prompt_hidden_states(model: CausalLM, prompts: Sequence[Sequence[int]],
                                continuations: Sequence[Sequence[Sequence[int]]],
                                pad_token_id: int) -> list[torch.Tensor]:
    """For each set of continuations of the same prompts, the final hidden states at its completion-predicting
    positions (``[N_set, D]``, as `completion_hidden_states` of the packed ``[prompt ; continuation]`` gives),
    with every prompt run through the model once for all sets.

    The teacher scores two continuations of its prompt each step (the rollouts, and the reference solution
    for g_t); its prompt is most of those tokens, so running it once and continuing from its key/value cache
    twice saves about half the prompt work. The prompts are left-padded (positions counted from each one's
    first real token), each continuation set right-padded after them, and the cache is cropped back to the
    prompts between sets. Needs a model with ``get_decoder()`` (not a DDP wrapper: use it for the no-grad
    teacher); the values equal the packed path's to float rounding.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token to predict its continuation from")
    if any(len(c) != len(prompts) for c in continuations):
        raise ValueError(f"every continuation set needs one continuation per prompt ({len(prompts)})")
    decoder = model.get_decoder()
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = (tensor.to(device) for tensor in left_padded(prompts, pad_token_id))
    prompt_out = decoder(input_ids=prompt_ids, attention_mask=prompt_mask,
                         position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
    # transformers 5.24 renamed `past_key_values` (argument and output) to `cache`; both are supported.
    cache_argument = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    cache = getattr(prompt_out, cache_argument)
    # Left padding puts every prompt's last token at the last position: it predicts each continuation's first.
    last_prompt_hidden = prompt_out.last_hidden_state[:, -1:]
    prompt_lengths = prompt_mask.sum(-1, keepdim=True)

    results = []
    for completions in continuations:
        lengths = [len(c) for c in completions]
        longest = max(lengths, default=0)
        if longest == 0:
            results.append(last_prompt_hidden.new_zeros((0, last_prompt_hidden.shape[-1])))
            continue
        ids = torch.full((len(prompts), longest), pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, completion in enumerate(completions):
            ids[row, : len(completion)] = torch.tensor(list(completion), dtype=torch.long)
            mask[row, : len(completion)] = 1
        ids, mask = ids.to(device), mask.to(device)
        out = decoder(input_ids=ids, attention_mask=torch.cat([prompt_mask, mask], dim=-1),
                      position_ids=prompt_lengths + torch.arange(longest, device=device), use_cache=True,
                      **{cache_argument: cache})
        cache.crop(-longest)  # back to the prompts alone
        # Continuation token n is predicted by the prompt's last position (n = 0) or by token n - 1.
        predicting = torch.cat([last_prompt_hidden, out.last_hidden_state[:, :-1]], dim=1)
        results.append(torch.cat([predicting[row, :length] for row, length in enumerate(lengths)]))
    return results


def output_head(model: CausalLM) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output projection's weight ``[V, D]`` and bias of a causal LM, whole even when FSDP2 shards them."""
    head = model.get_output_embeddings()
    return _whole(head.weight), _whole(getattr(head, "bias", None))


@overload
def _whole(tensor: torch.Tensor) -> torch.Tensor: ...


@overload
def _whole(tensor: None) -> None: ...


def _whole(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """An FSDP2-sharded tensor (a DTensor) gathered whole; any other tensor as it is.

    The losses apply the head outside the model's forward, chunk by chunk, so FSDP's own gathering (which runs
    around a module's forward) does not reach it. The gathered copy's gradient differs on every process (each
    scores its own rollouts); marking it partial-average makes its backward a reduce-scatter that averages it
    over processes onto the shards, as FSDP (and DDP) average every other gradient.
    """
    if isinstance(tensor, DTensor):
        return tensor.full_tensor(grad_placements=[Partial("avg")])
    return tensor


def token_logprobs_from_hidden(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               targets: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """log p(target) for N positions from hidden states ``[N, D]`` and an output head ``[V, D]``, float32.

    Positions are taken `chunk_size` at a time and, when gradients are needed, each chunk runs under a
    non-reentrant checkpoint, so that neither the forward nor the backward ever holds more than one chunk's
    ``[chunk, V]`` float32 logits (float64 inputs stay float64; SFT and GRPO train through this at Qwen3's
    V = 151,936). Chunks come from `split`, whose backward is one concatenation, never a zero-filled ``[N, D]`` per
    slice.
    """
    if hidden.shape[0] == 0:
        # still connected to the hidden states, so a backward through an empty batch works
        return hidden.sum(-1).float()[:0]
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    pieces = []
    for hidden_chunk, target_chunk in zip(hidden.split(chunk_size), targets.split(chunk_size)):
        if needs_grad:
            pieces.append(checkpoint(_chunk_logprobs, hidden_chunk, weight, bias, target_chunk,
                                     use_reentrant=False, preserve_rng_state=False))
        else:
            pieces.append(_chunk_logprobs(hidden_chunk, weight, bias, target_chunk))
    return torch.cat(pieces)


def _chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    targets: torch.Tensor) -> torch.Tensor:
    logits = torch.nn.functional.linear(hidden, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> float32; float64 stays
    return -torch.nn.functional.cross_entropy(logits, targets, reduction="none")


def completion_token_logprobs(model: CausalLM, batch: PackedSequences,
                              chunk_size: int = 1024) -> torch.Tensor:
    """log p(completion token | context) for each of the N completion tokens, computed in chunks."""
    weight, bias = output_head(model)
    return token_logprobs_from_hidden(completion_hidden_states(model, batch), weight, bias, batch.targets,
                                      chunk_size)
