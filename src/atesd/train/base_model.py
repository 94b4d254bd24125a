"""The model a run starts from: the embedded default's warm-started model (made on first use, then cached), or
the configured directory, GGUF file or hub id; and loading it, or a run's trained model, for evaluation (as a model,
or behind the configured evaluation engine)."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from atesd.config import Config
from atesd.eval.engines import SampleEngine, build_eval_engine
from atesd.models.loading import EMBEDDED, load_model_and_tokenizer, load_tokenizer, resolve_model_path
from atesd.train.warm_start import embedded_base_model


def base_model_path(config: Config) -> str:
    """The directory (or hub id) of the configured starting model; warm-starts the embedded one if needed."""
    if config.model.name_or_path == EMBEDDED:
        return str(embedded_base_model(config))
    return resolve_model_path(config.model.name_or_path)


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
