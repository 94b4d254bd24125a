"""The static type of the language models atesd trains, scores and samples from (for type checking only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias, Union

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

# A `transformers` causal LM, or a peft model wrapping one (LoRA): peft hands every attribute it does not have
# itself on to the model it wraps, so both take the causal LM's calls (``get_decoder``, ``generate``, ...).
# (typing.Union, as its members are only imported for the type checker.)
CausalLM: TypeAlias = Union["PreTrainedModel", "PeftModel"]
