"""Sharded training with FSDP2 (`torch.distributed.fsdp.fully_shard`): the model's layout, and every operation on
it that needs whole tensors (docs/scaling.md#fsdp2-sharded-training).

The accelerate config asks for it (``distributed_type: FSDP``, ``fsdp_version: 2``, as in
configs/accelerate/fsdp.yaml); atesd then shards the model itself rather than through ``accelerator.prepare``,
for three reasons: the frozen teacher copy of a full fine-tune must be sharded exactly like the student, without
an optimizer; rollouts and the losses need the parameters gathered at points of atesd's choosing (below); and on
a CPU accelerate falls back to plain multi-process DDP whatever the config says, so only `fully_shard` itself can
be tested on a machine without GPUs.

The layout: every decoder layer is one FSDP unit, the decoder (embeddings and final norm) the root unit, and an
untied output head a unit of its own (a tied one is the embedding's parameter). What needs whole tensors:

- the losses apply the output head outside the model's forward (`atesd.models.sequences.output_head` gathers
  it, never a ``[N, V]`` tensor);
- HF ``generate`` runs a data-dependent number of forwards on each process, so it runs with every unit gathered
  (`Sharding.gathered`) and no collective inside; a vLLM engine gets the weights one unit at a time;
- checkpoints and ``final_model`` hold whole tensors gathered on the main process, in the same safetensors and
  JSON files as a DDP run's (`atesd.train.checkpoint`), so either kind of run resumes the other.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from accelerate import Accelerator
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from transformers import PreTrainedTokenizerBase

from atesd.config import ConfigError
from atesd.models.causal_lm import CausalLM
from atesd.models.export import base_model, is_peft_model, merge_lora, save_final_model
from atesd.models.teacher import TeacherWeights
from atesd.rollout import Completions, HFGenerateEngine, RolloutEngine, SamplingParams
from atesd.train.checkpoint import TrainingState

WHOLE_PRECISION = "mixed precision under FSDP2 comes from model.dtype (e.g. bfloat16) and train.bf16_autocast"


@dataclass(frozen=True)
class ShardingSettings:
    """What the accelerate config's ``fsdp_config`` decides: whether units free their gathered parameters after
    forward, and which module classes are the units (empty: the model's own decoder-layer classes)."""

    reshard_after_forward: bool = True
    layer_classes: tuple[str, ...] = ()


def requested_sharding(accelerator: Accelerator) -> Sharding | None:
    """The run's `Sharding` when the accelerate config asks for FSDP, else None (DDP or one process).

    On GPUs accelerate itself reports FSDP; on a CPU it falls back to multi-process DDP, and the launcher's FSDP
    settings are read from the environment it set (``ACCELERATE_USE_FSDP``, ``FSDP_*``). A single process without
    a process group has nothing to shard with."""
    state = accelerator.state
    if state.distributed_type.name == "FSDP":
        plugin = state.fsdp_plugin
    elif os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()
    else:
        return None
    if not torch.distributed.is_initialized():
        return None
    return Sharding(settings_from_plugin(plugin, accelerator.mixed_precision))


def settings_from_plugin(plugin: Any, mixed_precision: str) -> ShardingSettings:
    """The settings of accelerate's FSDP plugin that atesd honours; a `ConfigError` for the ones it does not."""
    wrap = getattr(plugin.auto_wrap_policy, "__name__", plugin.auto_wrap_policy)
    refusals = [
        (plugin.fsdp_version != 2, (f"fsdp_version is {plugin.fsdp_version}: atesd shards with FSDP2, set "
                                    "fsdp_version: 2")),
        (wrap != "transformer_auto_wrap_policy", (f"fsdp_auto_wrap_policy is {wrap}: atesd shards per decoder "
                                                  "layer, set TRANSFORMER_BASED_WRAP")),
        (isinstance(plugin.cpu_offload, CPUOffloadPolicy) or plugin.cpu_offload is True,
         "fsdp_offload_params is not supported: set it false"),
        (plugin.activation_checkpointing, ("fsdp_activation_checkpointing is not supported: set it false and use "
                                           "model.gradient_checkpointing")),
        (plugin.cpu_ram_efficient_loading, ("fsdp_cpu_ram_efficient_loading is not supported (transformers would "
                                            "load the weights on process 0 only): set it false")),
        (plugin.state_dict_type.name != "FULL_STATE_DICT", ("atesd's checkpoints hold whole tensors "
                                                            "(docs/scaling.md): set fsdp_state_dict_type: "
                                                            "FULL_STATE_DICT")),
        (mixed_precision != "no" or plugin.mixed_precision_policy is not None,
         f"accelerate's mixed_precision is not used: set it \"no\"; {WHOLE_PRECISION}"),
    ]
    for refused, message in refusals:
        if refused:
            raise ConfigError(f"accelerate FSDP config: {message} (see configs/accelerate/fsdp.yaml)")
    return ShardingSettings(reshard_after_forward=bool(plugin.reshard_after_forward),
                            layer_classes=tuple(plugin.transformer_cls_names_to_wrap or ()))


def decoder_layer_classes(model: CausalLM) -> tuple[str, ...]:
    """The class names of a transformers model's decoder layers (its ``_no_split_modules``)."""
    base = model.get_base_model() if is_peft_model(model) else model
    return tuple(getattr(base, "_no_split_modules", None) or ())


def units(model: CausalLM) -> list[FSDPModule]:
    """The FSDP units of a sharded model, in module order (the layers come before the decoder that holds them)."""
    found: list[FSDPModule] = [module for module in model.modules() if isinstance(module, FSDPModule)]
    return [unit for unit in found if unit is not model.get_decoder()] + [model.get_decoder()]


def _tie_head(model: CausalLM) -> None:
    # The head is not part of the decoder unit, so FSDP swaps the embedding's parameter (sharded <-> gathered)
    # under the decoder only; pointing the head at whichever is current keeps the two one tensor.
    model.get_output_embeddings().weight = model.get_decoder().get_input_embeddings().weight


class Sharding:
    """Shards a run's models (the student, a teacher copy) and gathers their tensors where whole ones are needed.

    Every method that gathers is a collective: every process must call it, in the same order."""

    def __init__(self, settings: ShardingSettings) -> None:
        self.settings = settings
        self.tied: dict[int, bool] = {}  # id(model) -> whether its output head is its input embedding

    def shard(self, model: CausalLM, frozen: bool = False) -> CausalLM:
        """`model` sharded in place (and returned): its decoder layers, then its decoder, then an untied head.
        A `frozen` model (a teacher copy) frees even its root's gathered parameters after each forward."""
        decoder, head = model.get_decoder(), model.get_output_embeddings()
        tied = head.weight is decoder.get_input_embeddings().weight
        classes = set(self.settings.layer_classes or decoder_layer_classes(model))
        layers = [module for module in decoder.modules() if type(module).__name__ in classes]
        if not layers:
            raise ConfigError(f"FSDP: no decoder layer of {type(model).__name__} is one of {sorted(classes)}; set "
                              "fsdp_transformer_layer_cls_to_wrap in the accelerate config")
        for layer in layers:
            fully_shard(layer, reshard_after_forward=self.settings.reshard_after_forward)
        # The root: FSDP keeps its parameters gathered from forward to backward, which a frozen model never runs
        # (its EMA update also needs them sharded, like the student's).
        fully_shard(decoder, reshard_after_forward=True if frozen else None)
        if tied:
            _tie_head(model)
        else:
            fully_shard(head, reshard_after_forward=self.settings.reshard_after_forward)
        self.tied[id(model)] = tied
        return model

    def shard_student_and_teacher(self, student: CausalLM, teacher: TeacherWeights) -> CausalLM:
        """The student sharded, and the teacher's frozen copy (the initial weights of a full fine-tune, or the
        EMA), which `TeacherWeights` makes from the whole model, sharded the same way; returns the student."""
        if teacher.copy is not None:
            self.shard(teacher.copy, frozen=True)
        return self.shard(student)

    # ------------------------------------------------------------------ whole parameters for rollouts

    @contextlib.contextmanager
    def gathered(self, model: CausalLM) -> Iterator[None]:
        """Inside, every parameter of `model` is whole on every process and no forward gathers or frees any:
        what HF generate needs (memory: one whole model, docs/scaling.md#fsdp2-sharded-training)."""
        model_units = units(model)
        for unit in model_units:
            unit.unshard()
            unit.set_reshard_after_forward(False, recurse=False)
        if self.tied[id(model)]:
            _tie_head(model)
        try:
            yield
        finally:
            decoder = model.get_decoder()
            for unit in model_units:
                # The root keeps its parameters after forward (FSDP's own choice for a root); the others as set.
                unit.set_reshard_after_forward(unit is not decoder and self.settings.reshard_after_forward,
                                               recurse=False)
                unit.reshard()
            if self.tied[id(model)]:
                _tie_head(model)

    def whole_weights(self, model: CausalLM) -> Iterator[tuple[str, torch.Tensor]]:
        """`model`'s parameters as whole tensors named as in its ``state_dict`` (a tied head under both names),
        then its buffers, gathered one FSDP unit at a time, so that at most one unit is whole beyond the shards.
        Each tensor is a copy. Every process must consume the whole iterator (each unit is a collective)."""
        state_names = set(model.state_dict())  # (state_dict reshards every unit first)
        names_by_parameter: dict[int, list[str]] = {}
        for name, parameter in model.named_parameters(remove_duplicate=False):
            names_by_parameter.setdefault(id(parameter), []).append(name)
        owners: dict[int, list[list[str]]] = {}
        for names in names_by_parameter.values():
            owners.setdefault(id(self._owner(model, names[0])), []).append(names)
        for unit in units(model):
            unit.unshard()
            for names in owners.get(id(unit), []):
                whole = model.get_parameter(names[0]).detach().clone()
                yield from ((name, whole) for name in names if name in state_names)
            unit.reshard()
        parameters = {name for names in names_by_parameter.values() for name in names}
        yield from ((name, buffer.detach().clone()) for name, buffer in model.named_buffers()
                    if name in state_names and name not in parameters)

    def merged_weights(self, model: CausalLM) -> Iterator[tuple[str, torch.Tensor]]:
        """What `atesd.models.export.merged_state_dict` gives for an unsharded model, one unit at a time: the
        base model's weights with any LoRA update added in (for a vLLM weight sync, ``final_model_merged``)."""
        if not is_peft_model(model):
            return self.whole_weights(model)
        return merge_lora(model, self.whole_weights(base_model(model)))

    @staticmethod
    def _owner(model: torch.nn.Module, name: str) -> torch.nn.Module:
        """The innermost FSDP unit above the parameter `name`."""
        parts = name.split(".")[:-1]
        for depth in range(len(parts), -1, -1):
            module = model.get_submodule(".".join(parts[:depth]))
            if isinstance(module, FSDPModule):
                return module
        raise ValueError(f"FSDP: parameter {name} is in no FSDP unit")

    # ------------------------------------------------------------------ whole tensors for checkpoints

    @staticmethod
    def trainable_parameters(model: CausalLM) -> dict[str, torch.Tensor]:
        """`model`'s trainable parameters, sharded. Every unit is resharded first: after a forward without a
        backward, the root's gathered parameters are registered instead (and a tied head would be listed twice)."""
        for unit in units(model):
            unit.reshard()
        return {name: p for name, p in model.named_parameters() if p.requires_grad}

    def trainable_state(self, model: CausalLM, keep: bool = True) -> dict[str, torch.Tensor]:
        """Whole copies of `model`'s trainable parameters (see `gather`)."""
        return self.gather(self.trainable_parameters(model), keep)

    def gather(self, tensors: dict[str, torch.Tensor], keep: bool = True) -> dict[str, torch.Tensor]:
        """Whole copies on the CPU of possibly sharded `tensors`, one at a time; empty where `keep` is False (all
        processes join each gather; only the ones that keep the result hold it)."""
        gathered: dict[str, torch.Tensor] = {}
        for name, tensor in tensors.items():
            detached = tensor.detach()
            whole = detached.full_tensor() if isinstance(detached, DTensor) else detached
            if keep:
                gathered[name] = whole.cpu().clone()
        return gathered

    @torch.no_grad()
    def load(self, targets: dict[str, torch.Tensor], whole: dict[str, torch.Tensor]) -> None:
        """Copy the whole tensors into the (possibly sharded) `targets` of the same names: each process takes its
        own shard of the tensor it read itself, so no collective runs."""
        for name, value in whole.items():
            target = targets[name]
            if isinstance(target, DTensor):
                shard = distribute_tensor(value.to(target.device, target.dtype), target.device_mesh,
                                          target.placements, src_data_rank=None)
                target.to_local().copy_(shard.to_local())
            else:
                target.copy_(value)

    def checkpoint_tensors(self, model: CausalLM, optimizer: torch.optim.Optimizer, teacher: TeacherWeights,
                           keep: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
        """A checkpoint's tensors, whole, as a DDP run saves them: the trained parameters, the optimizer's state
        and the EMA teacher's weights (empty on processes that do not `keep` them)."""
        return (self.trainable_state(model, keep), self.optimizer_state(optimizer, keep),
                self.gather(teacher.state_dict(), keep))

    def load_checkpoint_tensors(self, model: CausalLM, optimizer: torch.optim.Optimizer, teacher: TeacherWeights,
                                state: TrainingState) -> None:
        """The reverse of `checkpoint_tensors`, from a checkpoint of an FSDP run or of a DDP one."""
        self.load(self.trainable_parameters(model), state.weights)
        self.load_optimizer_state(optimizer, state.optimizer)
        if state.teacher:  # the EMA teacher's weights
            assert teacher.copy is not None  # only an EMA teacher (a copy) saves its weights
            self.load(teacher.copy.state_dict(), state.teacher)

    def optimizer_state(self, optimizer: torch.optim.Optimizer, keep: bool) -> dict[str, Any]:
        """``optimizer.state_dict()`` with whole tensors: the same file a DDP run writes."""
        state = optimizer.state_dict()
        state["state"] = {index: self.gather(values, keep) for index, values in state["state"].items()}
        return state

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load an ``optimizer.state_dict()`` of whole tensors (from a DDP or an FSDP run): each moment is sharded
        like its parameter first (parameters are numbered in the optimizer's order, the same in both)."""
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        sharded = {}
        for index, values in state["state"].items():
            parameter = parameters[int(index)]
            sharded[index] = {key: self._like(value, parameter) for key, value in values.items()}
        optimizer.load_state_dict({**state, "state": sharded})

    @staticmethod
    def _like(value: Any, parameter: torch.Tensor) -> Any:
        # AdamW's moments have their parameter's shape; its step count is a plain scalar.
        if isinstance(parameter, DTensor) and isinstance(value, torch.Tensor) and value.shape == parameter.shape:
            return distribute_tensor(value.to(parameter.device, parameter.dtype), parameter.device_mesh,
                                     parameter.placements, src_data_rank=None)
        return value

    def save_final_model(self, model: CausalLM, tokenizer: PreTrainedTokenizerBase, run_dir: Path,
                         save_merged: bool, is_main: bool) -> None:
        """``final_model`` (and ``final_model_merged``) as a DDP run writes them, from whole tensors gathered on
        the main process (which alone writes). The adapter of a LoRA run is its trainable parameters."""
        lora = is_peft_model(model)
        state = self.trainable_state(model, is_main) if lora else self.gather(model.state_dict(), is_main)
        merged = {name: value.cpu() for name, value in self.merged_weights(model) if is_main} \
            if save_merged and lora else None
        if is_main:
            save_final_model(model, tokenizer, run_dir, save_merged, state_dict=state, merged=merged)

    def rollout_engine(self, engine: RolloutEngine, model: CausalLM) -> ShardedRollouts:
        return ShardedRollouts(engine, self, model)


@runtime_checkable
class HoldsWeights(Protocol):
    """A rollout engine holding its own whole copy of the weights (vLLM), which each sync fills with whole tensors."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None: ...


class ShardedRollouts:
    """A rollout engine over a sharded training model. HF generate samples from the model itself, with every
    parameter gathered for the call (each process stops when its own completions end, so no collective can run
    inside it); a vLLM engine holds its own whole copy, which each sync fills one FSDP unit at a time."""

    def __init__(self, engine: RolloutEngine, sharding: Sharding, model: CausalLM) -> None:
        self.engine, self.sharding, self.model = engine, sharding, model
        self.samples_from_model = isinstance(engine, HFGenerateEngine)

    def update_weights(self) -> None:
        if not self.samples_from_model:
            assert isinstance(self.engine, HoldsWeights)  # an engine of its own weights (vLLM)
            self.engine.load_weights(self.sharding.merged_weights(self.model))

    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingParams,
                 generator: torch.Generator | None = None) -> Completions:
        if not self.samples_from_model:
            return self.engine.generate(prompt_ids, sampling, generator)
        with self.sharding.gathered(self.model):
            return self.engine.generate(prompt_ids, sampling, generator)
