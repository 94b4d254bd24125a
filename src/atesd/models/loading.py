"""Loading a causal LM and its tokenizer: the embedded model, a local directory, or a hub id.

The embedded default is built and warm-started locally (see `atesd.models.embedded`) and then loaded from
its cache directory through exactly the same `from_pretrained` path as any other model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from atesd.config import Config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(config: Config) -> str:
    """The directory or hub id to load for `config.model.name_or_path`."""
    name = config.model.name_or_path
    if name == "embedded":
        from atesd.models.embedded import embedded_base_model

        return str(embedded_base_model(config))
    looks_local = name.startswith((".", "/", "~")) or Path(name).expanduser().exists()
    if looks_local and not Path(name).expanduser().is_dir():
        raise FileNotFoundError(f"model.name_or_path: '{name}' does not exist (give a model directory, a hub "
                                "id, or 'embedded')")
    return str(Path(name).expanduser()) if looks_local else name


def load_model_and_tokenizer(config: Config, path: str | None = None
                             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model (in the configured dtype) and tokenizer; pad token defaults to EOS when the model has none."""
    source = path or resolve_model_path(config)
    trust = config.model.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[config.model.dtype], trust_remote_code=trust)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, tokenizer
