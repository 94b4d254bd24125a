"""Rollouts with vLLM, colocated: a vLLM engine in the training process, on the training GPU.

Install with ``pip install 'atesd[vllm]'``; vLLM is imported only when this engine is built, so nothing else
in atesd needs it. The engine loads the base model from disk once; before each step's rollouts the trainer
calls `update_weights`, which copies the training model's current weights into vLLM (with LoRA, the adapter
merged into a copy of the base weights, see `atesd.models.export.merged_state_dict`), so rollouts are always
sampled from the weights of the last optimizer step: on-policy, as with the HF engine.

Sampling maps onto vLLM's `SamplingParams` (``top_k = 0`` becomes vLLM's "no top-k", -1), one request per
prompt with its own seed drawn from the caller's generator, so rollouts are a function of (run seed, step).
Completions end at the first EOS token, which is kept, as in the HF engine.

This engine has not run on a GPU in this project's tests: its contract (sampling parameters, EOS handling,
seeding, weight sync) is tested against a stand-in for the vLLM API. See docs/scaling.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

import torch

from atesd.models.export import merged_state_dict
from atesd.rollout.base import Completions, SamplingParams

# vLLM versions 0.6-0.10 (V0 engine) and later (V1 engine run in-process) keep the model at different paths.
_MODEL_PATHS = (
    ("llm_engine", "model_executor", "driver_worker", "worker", "model_runner", "model"),
    ("llm_engine", "model_executor", "driver_worker", "model_runner", "model"),
)


def import_vllm() -> ModuleType:
    """The `vllm` module, or an error that says how to install it."""
    try:
        import vllm
    except ImportError as error:
        raise ImportError("rollout.engine 'vllm' needs vLLM: pip install 'atesd[vllm]' (on a machine with a CUDA "
                          "GPU), or set rollout.engine=hf") from error
    return vllm


class VLLMEngine:
    """Samples with a colocated `vllm.LLM`; `update_weights` copies the training model's weights into it.

    `vllm` is the vLLM module (default: imported now); tests pass a stand-in with the same `LLM` and
    `SamplingParams` names.
    """

    def __init__(self, model: torch.nn.Module, model_path: str, *, eos_token_id: int, dtype: str, seed: int,
                 gpu_memory_utilization: float, max_model_len: int | None, enforce_eager: bool,
                 vllm: Any = None) -> None:
        # The V1 engine must run in this process for its model to be reachable by `update_weights`.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.vllm = vllm or import_vllm()
        self.model = model
        self.eos_token_id = eos_token_id
        self.llm = self.vllm.LLM(model=model_path, dtype=dtype, seed=seed,
                                 gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                                 enforce_eager=enforce_eager, enable_prefix_caching=True)

    def update_weights(self) -> None:
        """Load the training model's current weights (LoRA merged) into vLLM."""
        self.load_weights(merged_state_dict(self.model).items())

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load whole tensors under the base model's names into vLLM, as they come: a sharded training model
        hands them over one layer at a time (`atesd.train.sharding`)."""
        _vllm_model(self.llm).load_weights(weights)

    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingParams,
                 generator: torch.Generator | None = None) -> Completions:
        seeds: Iterable[int | None] = (
            torch.randint(0, 2**31 - 1, (len(prompt_ids),), generator=generator).tolist() if generator is not None
            else [None] * len(prompt_ids))
        params = [self.vllm.SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k or -1,
            max_tokens=sampling.max_new_tokens,
            seed=seed,
            stop_token_ids=[self.eos_token_id],
            detokenize=False,  # the trainer decodes what it needs
        ) for seed in seeds]
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        completions, finished = [], []
        for output in outputs:
            ids, done = self._trim(list(output.outputs[0].token_ids), output.outputs[0].finish_reason)
            completions.append(ids)
            finished.append(done)
        return Completions([list(p) for p in prompt_ids], completions, finished)

    def _trim(self, ids: list[int], finish_reason: str | None) -> tuple[list[int], bool]:
        """Cut at the first EOS (kept). vLLM may leave the stop token out of the ids when it stopped on it; it
        is put back, since the trainer scores the EOS the model emitted."""
        if self.eos_token_id in ids:
            return ids[: ids.index(self.eos_token_id) + 1], True
        if finish_reason == "stop":
            return ids + [self.eos_token_id], True
        return ids, False


def _vllm_model(llm: Any) -> Any:
    """The model object inside a `vllm.LLM` that has `load_weights`."""
    for path in _MODEL_PATHS:
        node = llm
        for name in path:
            node = getattr(node, name, None)
            if node is None:
                break
        if node is not None and hasattr(node, "load_weights"):
            return node
    raise RuntimeError("cannot find the model inside this vLLM version's LLM object to sync weights into; "
                       "known paths: " + ", ".join(".".join(p) for p in _MODEL_PATHS))
