"""The weights a run hands on: merged LoRA weights (for export and for syncing a rollout engine) and the
final model directories.

A LoRA run's ``final_model`` holds the adapter (``adapter_model.safetensors`` + ``adapter_config.json``) and
the tokenizer; `atesd eval` and `load_model_and_tokenizer` load it onto the base model. With
``model.lora.save_merged`` the run also writes ``final_model_merged``: a plain `from_pretrained` directory
with the adapter merged into the base weights (what vLLM or any other tool loads). A full fine-tuning run's
``final_model`` is a plain directory already.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from atesd.files import publish_directory, remove_strays, temporary_path
from atesd.models.causal_lm import CausalLM

if TYPE_CHECKING:
    from peft import PeftModel


def is_peft_model(model: torch.nn.Module) -> TypeGuard[PeftModel]:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def base_model(model: PeftModel) -> PreTrainedModel:
    """The `transformers` model a peft `model` wraps (peft types ``get_base_model`` as returning any module)."""
    return cast(PreTrainedModel, model.get_base_model())


@torch.no_grad()
def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under the base model's parameter names, with every LoRA update added in.

    The delta ``scale * B @ A`` is added to a copy of each adapted weight: the training model is never
    merged and unmerged in place, which in bf16 would not restore the exact base weights.
    """
    if not is_peft_model(model):
        return dict(model.state_dict())
    return dict(merge_lora(model, model.get_base_model().state_dict().items()))


@torch.no_grad()
def merge_lora(model: PeftModel, weights: Iterable[tuple[str, torch.Tensor]]
               ) -> Iterator[tuple[str, torch.Tensor]]:
    """`weights` of a peft `model`'s base model (named as in its ``state_dict``, whole tensors) with every LoRA
    update added in, under the base model's parameter names; the adapter's own tensors are left out. Lazy, so
    that a sharded model can hand its weights over one layer at a time (`atesd.train.sharding`)."""
    from peft.tuners.lora import LoraLayer

    adapter = model.active_adapter
    adapted = {name: module for name, module in model.get_base_model().named_modules()
               if isinstance(module, LoraLayer)}
    for key, value in weights:
        if ".lora_" in key:
            continue
        name = key.replace(".base_layer.", ".")
        module_name, _, kind = name.rpartition(".")
        module = adapted.get(module_name) if kind == "weight" else None
        # Every LoRA layer class defines get_delta_weight; peft's base class LoraLayer does not declare it.
        yield name, (value + module.get_delta_weight(adapter).to(value.dtype)  # type: ignore[attr-defined]
                     if module is not None else value)


def save_final_model(model: CausalLM, tokenizer: PreTrainedTokenizerBase, run_dir: Path,
                     save_merged: bool, *, state_dict: dict[str, torch.Tensor] | None = None,
                     merged: dict[str, torch.Tensor] | None = None) -> None:
    """``run_dir/final_model`` (the adapter for LoRA, else the full model) and, when asked for a LoRA run,
    ``run_dir/final_model_merged``, each written in full under a temporary name and then renamed into place, so
    that a final model directory is always complete (`atesd.files.publish_directory`). A sharded model's
    whole tensors are given as `state_dict` (the model's, or the adapter's for LoRA) and `merged`."""
    # a str: peft annotates save_pretrained's directory as one
    _publish(run_dir / "final_model", lambda directory: model.save_pretrained(str(directory), state_dict=state_dict),
             tokenizer)
    if save_merged and is_peft_model(model):
        _publish(run_dir / "final_model_merged", lambda directory: base_model(model).save_pretrained(
            directory, state_dict=merged if merged is not None else merged_state_dict(model)), tokenizer)


def _publish(target: Path, save_model: Callable[[Path], None], tokenizer: PreTrainedTokenizerBase) -> None:
    remove_strays(target.parent, target.name)  # what a killed save left
    temporary = temporary_path(target)
    save_model(temporary)
    tokenizer.save_pretrained(temporary)
    publish_directory(temporary, target)
