"""The HF engine's own decode loop: sampling from a `transformers` causal LM at the cost of its forwards.

``model.generate`` is general (beams, assistants, streamers, stopping criteria, caches of every kind) and pays
for that generality on every new token. This loop does what sampling needs and nothing else: one prefill of the
left-padded prompts into a key/value cache (preallocated by default), then one single-token forward per step,
and it samples exactly what ``generate(do_sample=True)`` samples:

- the same logits: the same inputs reach the model (positions counted from each prompt's first real token, the
  attention mask dropped when no prompt is padded, one position of logits), and they are taken in float32;
- the same distributions, made by the same `transformers` logits processors in the same order (temperature,
  top-k, top-p, and whatever the model's own generation config adds, such as a repetition penalty), which
  ``generate``'s own code builds here;
- the same random stream: ``torch.multinomial`` over all ``[B, V]`` rows of every step, finished rows
  included, from the global RNG the engine seeds: given the same logits, the same tokens;
- the same stop: a row is finished once it samples EOS and gets the pad token from then on; the loop ends when
  every row is finished or after ``max_new_tokens``.

Finished rows are taken out of the batch (``drop_finished``, on by default) without changing the random
stream: ``torch.multinomial`` draws one sample as ``argmax(p / q)`` with ``q ~ Exp(1)`` drawn for the whole
``[B, V]``, so drawing that whole ``q`` and using the rows still running keeps every token of every row what
it would have been (`same_stream_sample`, checked against ``torch.multinomial`` before it is used). ``compile``
runs the decode step through the model's ``torch.compile``'d call (static cache, no dropping). What each costs
and saves is in docs/performance.md.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeGuard, cast

import torch
from transformers import Cache, DynamicCache, LogitsProcessorList, StaticCache

from atesd.models.causal_lm import CausalLM
from atesd.models.export import base_model, is_peft_model
from atesd.rollout.base import SamplingParams

if TYPE_CHECKING:
    from transformers import GenerationMixin, PreTrainedModel

    class GeneratingLM(PreTrainedModel, GenerationMixin):
        """A `transformers` causal LM with ``generate``'s machinery, for the type checker only: typed as
        GenerationMixin's methods type their host model (transformers' GenerativePreTrainedModel protocol, which
        wants ``device`` and ``dtype`` settable, where PreTrainedModel has them as properties, and every other
        attribute dynamic)."""

        device: torch.device
        dtype: torch.dtype

        def __getattr__(self, name: str) -> Any: ...


class Unsupported(Exception):
    """The decode loop cannot serve this model (the message says why); the engine samples with generate."""


@dataclass(frozen=True)
class DecodeOptions:
    cache: Literal["static", "dynamic"] = "static"
    drop_finished: bool = True
    compile: bool = False  # implies the static cache and no dropping (`fixed_shapes`)

    def fixed_shapes(self) -> DecodeOptions:
        """The options a compiled step runs with: a compiled step is specialised to its shapes, and a dynamic
        cache grows at every token and dropping rows shrinks the batch, each a new compilation."""
        return DecodeOptions("static", False, True) if self.compile else self


# Rows are compacted once this share of the current batch has finished (`drop_finished`): compacting copies the
# whole cache, so doing it for every finished row would cost more than the rows it saves.
COMPACT_SHARE = 0.25
# With `compile`, the static cache is sized to a multiple of this, so that prompts of other lengths reuse the
# compiled step instead of compiling a new one.
COMPILED_CACHE_MULTIPLE = 64


# What the loop calls of ``generate``'s own code (`sampling_processors`).
GENERATION_METHODS = ("_prepare_generation_config", "_prepare_special_tokens", "_get_logits_processor")


def generates(model: torch.nn.Module) -> TypeGuard[GeneratingLM]:
    """Whether `model` has the `transformers` generation machinery the loop uses (`GENERATION_METHODS`)."""
    return all(hasattr(model, method) for method in GENERATION_METHODS)


def causal_lm(model: CausalLM) -> GeneratingLM:
    """The `transformers` model whose forward the loop calls: `model` itself, or under a peft LoRA wrapper the
    base model (the adapters sit inside its layers, so its forward is the adapted model's)."""
    if is_peft_model(model):
        config = model.peft_config[model.active_adapter]
        if getattr(config, "is_prompt_learning", False) or getattr(config, "alora_invocation_tokens", None):
            raise Unsupported(f"peft {config.peft_type} changes the inputs, not only the layers")
        model = base_model(model)
    if getattr(model.config, "is_encoder_decoder", False):
        raise Unsupported("an encoder-decoder model")
    if not generates(model):
        method = next(method for method in GENERATION_METHODS if not hasattr(model, method))
        raise Unsupported(f"{type(model).__name__} has no `transformers` generation machinery ({method})")
    return model


def sampling_processors(model: GeneratingLM, sampling: SamplingParams, *, pad_token_id: int, eos_token_id: int,
                        input_ids: torch.Tensor) -> LogitsProcessorList:
    """The logits processors ``generate`` would apply for `sampling` with this model's generation config, built
    by ``generate``'s own code (empty for plain sampling at temperature 1, which is the common case)."""
    config, _ = model._prepare_generation_config(
        None, do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or None,
        max_new_tokens=sampling.max_new_tokens, pad_token_id=pad_token_id, eos_token_id=eos_token_id)
    unsupported = {"num_beams": config.num_beams not in (None, 1), "stop_strings": bool(config.stop_strings),
                   "max_time": config.max_time is not None,
                   "num_return_sequences": config.num_return_sequences not in (None, 1),
                   "cache_implementation": config.cache_implementation in ("quantized", "offloaded")}
    if any(unsupported.values()):
        raise Unsupported("the model's generation config sets " + ", ".join(k for k, v in unsupported.items() if v))
    model._prepare_special_tokens(config, True, device=input_ids.device)
    # (transformers annotates token ids as torch.LongTensor, which an int64 Tensor is not to a type checker, and
    # this device as a str, where it takes a torch.device as well)
    return model._get_logits_processor(generation_config=config, input_ids_seq_length=input_ids.shape[1],
                                       encoder_input_ids=cast(torch.LongTensor, input_ids),
                                       prefix_allowed_tokens_fn=None, logits_processor=LogitsProcessorList(),
                                       device=cast(str, input_ids.device), model_kwargs={})


def same_stream_sample(probs: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """One token per row of `probs` ``[R, V]`` (rows `rows` of a batch of `batch`), the tokens
    ``torch.multinomial(full_probs, 1)`` gives those rows: it draws ``q ~ Exp(1)`` for all ``[batch, V]`` and
    takes ``argmax(p / q)`` per row, so the same draw for the whole batch keeps each row's sample."""
    q = torch.empty((batch, probs.shape[-1]), dtype=probs.dtype, device=probs.device).exponential_(1)
    return (probs / q[rows]).argmax(dim=-1)


_STREAM_KEPT: dict[torch.device, bool] = {}


def keeps_the_stream(device: torch.device) -> bool:
    """Whether `same_stream_sample` samples what ``torch.multinomial`` does on this torch and device (checked
    once per device on a private RNG state; a torch that samples otherwise keeps finished rows in the batch)."""
    if device not in _STREAM_KEPT:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            probs = torch.softmax(2 * torch.randn(16, 100, device=device), dim=-1)
            torch.manual_seed(0)
            expected = torch.multinomial(probs, 1).squeeze(1)
            torch.manual_seed(0)
            rows = torch.arange(1, 16, 2, device=device)  # eight rows of 100 tokens: no agreement by chance
            _STREAM_KEPT[device] = torch.equal(same_stream_sample(probs[rows], rows, 16), expected[rows])
    return _STREAM_KEPT[device]


class _Inputs:
    """What the model's forward accepts, as ``generate`` checks it: the cache's keyword (``cache`` since
    transformers 5.24, ``past_key_values`` before), position ids, and one position of logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        parameters = inspect.signature(model.forward).parameters
        self.cache = "cache" if "cache" in parameters else "past_key_values"
        self.positions = "position_ids" in parameters
        self.logits_to_keep = "logits_to_keep" in parameters

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor,
                 cache: object) -> dict:
        inputs = {"input_ids": ids, "attention_mask": mask, self.cache: cache, "use_cache": True}
        if self.positions:
            inputs["position_ids"] = positions
        if self.logits_to_keep:
            inputs["logits_to_keep"] = 1
        return inputs


@torch.no_grad()
def decode(model: CausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor, sampling: SamplingParams,
           *, pad_token_id: int, eos_token_id: int, options: DecodeOptions = DecodeOptions()) -> torch.Tensor:
    """Sample up to ``sampling.max_new_tokens`` tokens after left-padded prompts ``[B, W]`` (on the model's
    device) with the global RNG: the new tokens ``[B, steps]``, the pad token after each row's EOS.

    Raises `Unsupported` before anything is sampled when the model cannot be served."""
    model, options = causal_lm(model), options.fixed_shapes()
    inputs = _Inputs(model)
    try:
        processors = sampling_processors(model, sampling, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                                         input_ids=input_ids)
    except (AttributeError, TypeError, ValueError) as error:  # another transformers version's private API
        raise Unsupported(f"transformers' logits processors could not be built here ({error})") from error
    batch, width = input_ids.shape
    steps = sampling.max_new_tokens
    device = input_ids.device
    sequences = torch.full((batch, width + steps), pad_token_id, dtype=torch.long, device=device)
    sequences[:, :width] = input_ids
    # As generate: positions count from each prompt's first real token; no mask at all when nothing is padded.
    positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    padded = not bool(attention_mask.all())
    cache: Cache
    if options.cache == "static":
        length = width + steps
        if options.compile:
            length = -(-length // COMPILED_CACHE_MULTIPLE) * COMPILED_CACHE_MULTIPLE
        cache = StaticCache(config=model.config, max_cache_len=length)
        # The mask covers every slot of the static cache; a slot is switched on when its token is fed.
        mask = attention_mask.new_zeros((batch, length)) if padded else None
        if mask is not None:
            mask[:, :width] = attention_mask
    else:
        cache = DynamicCache(config=model.config)
        mask = attention_mask if padded else None
    try:
        out = model(**inputs(input_ids, mask, positions, cache))
    except (TypeError, ValueError, NotImplementedError) as error:
        raise Unsupported(f"{type(model).__name__} did not take the {options.cache} cache ({error})") from error
    step_forward = model.get_compiled_call(None) if options.compile else model
    drop_finished = options.drop_finished and keeps_the_stream(device)  # False on a torch that samples otherwise

    rows = torch.arange(batch, device=device)  # the original row of each row still in the batch
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    position = positions[:, -1:]
    done_steps = 0
    for step in range(steps):
        logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)
        if len(processors):
            logits = processors(cast(torch.LongTensor, sequences[rows, : width + step]), logits)  # (int64 ids)
        probs = torch.softmax(logits, dim=-1)
        if len(rows) == batch:
            tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
        else:
            tokens = same_stream_sample(probs, rows, batch)
        tokens = torch.where(unfinished, tokens, pad_token_id)
        sequences[rows, width + step] = tokens
        unfinished &= tokens != eos_token_id
        done_steps = step + 1
        if done_steps == steps or not bool(unfinished.any()):
            break
        if drop_finished and (~unfinished).sum() >= COMPACT_SHARE * len(rows):
            keep = unfinished.nonzero().squeeze(1)
            cache.reorder_cache(cast(torch.LongTensor, keep))  # (int64 indices)
            rows, unfinished, tokens, position = rows[keep], unfinished[keep], tokens[keep], position[keep]
            if mask is not None:
                mask = mask[keep]
        position = position + 1
        if mask is not None:
            if options.cache == "static":
                mask[:, width + step] = 1
            else:
                mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
        out = step_forward(**inputs(tokens[:, None], mask, position, cache))
    return sequences[:, width : width + done_steps]
