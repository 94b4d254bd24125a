"""The model a run starts from: a model atesd builds itself (the embedded testbed's, made on first use by the lab,
`atesd.experiments`, which registers its builder here), or the configured directory, GGUF file or hub id; and
loading it, or a run's trained model, for evaluation (as a model, or behind the configured evaluation engine)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from atesd.config import Config
from atesd.errors import ConfigError
from atesd.eval.engines import SampleEngine, build_eval_engine
from atesd.models.loading import EMBEDDED, load_model_and_tokenizer, load_tokenizer, resolve_model_path

# The models atesd builds itself, by ``model.name_or_path``: each builder returns the built model's directory (and
# caches it). The library knows none; `atesd.experiments` registers the embedded testbed's when it is imported.
BUILT_MODELS: dict[str, Callable[[Config], Path]] = {}


def register_built_model(name: str, build: Callable[[Config], Path]) -> None:
    """Make ``model.name_or_path: <name>`` start from the model `build(config)` makes."""
    BUILT_MODELS[name] = build


def base_model_path(config: Config) -> str:
    """The directory (or hub id) of the configured starting model; builds a built-in one if needed."""
    name = config.model.name_or_path
    if name in BUILT_MODELS:
        return str(BUILT_MODELS[name](config))
    if name == EMBEDDED:
        raise ConfigError("model.name_or_path 'embedded' is the testbed's model, which atesd's lab builds: import "
                          "atesd.experiments before training or evaluating it (the atesd command does)")
    return resolve_model_path(name)


def load_model(config: Config, path: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model at `path` (a run's ``final_model``, a LoRA adapter merged into the base model) or, without one,
    the configured starting model; and its tokenizer."""
    base = base_model_path(config)
    return load_model_and_tokenizer(config, path or base, base_path=base)


def evaluation_engine(config: Config, path: str | None = None) -> tuple[SampleEngine, PreTrainedTokenizerBase]:
    """The ``eval.engine`` (HF or vLLM) serving the model at `path` (a run's ``final_model``, a LoRA adapter applied
    to the base model) or, without one, the configured starting model; and its tokenizer."""
    base = base_model_path(config)
    tokenizer = load_tokenizer(config, path or base)
    return build_eval_engine(config, path or base, base, tokenizer), tokenizer
