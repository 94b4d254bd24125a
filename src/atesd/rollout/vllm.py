"""vLLM in atesd: the pinned versions, the calls into vLLM's public API that every vLLM engine makes, and the
colocated engine of training rollouts.

Install with ``pip install 'atesd[vllm]'`` (a CUDA GPU); vLLM is imported only when an engine is built, so nothing
else in atesd needs it. The versions atesd supports are the ones whose source its calls follow
(`SUPPORTED_VLLM`, the same range as the ``vllm`` extra in pyproject.toml): ``vllm.LLM(model=..., **engine
args)``, ``LLM.generate(prompts, sampling_params, use_tqdm=, lora_request=)`` with token-id prompts
(``{"prompt_token_ids": ids}``), `vllm.SamplingParams`, ``RequestOutput.outputs[i].token_ids`` /
``.finish_reason``, ``RequestOutput.prompt_logprobs`` (``[None, {token id: Logprob}, ...]``),
``LLM.apply_model`` and ``LLM.reset_prefix_cache``. Any other version is refused when the engine is built, with
one line naming both versions.

The training engine (`VLLMEngine`) loads the base model from disk once; before each step's rollouts the trainer
calls `update_weights`, which loads the training model's current weights into vLLM through ``LLM.apply_model``
(with LoRA, the adapter merged into a copy of the base weights, see `atesd.models.export.merged_state_dict`), so
rollouts are always sampled from the weights of the last optimizer step: on-policy, as with the HF engine. After
every sync the sync guard (`atesd.rollout.sync_check`) compares vLLM's log-probs with the training model's.

This engine has not run on a GPU in this project's tests: its contract is tested against a stand-in that follows
the pinned API (tests/vllm_stand_in.py). See docs/scaling.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

import torch

from atesd.config.engines import VLLMConfig, VLLMSettings
from atesd.errors import UserError
from atesd.models.export import merged_state_dict
from atesd.rollout.base import Completions, SamplingParams
from atesd.rollout.sync_check import SyncCheck

# The oldest and newest (major, minor) versions whose API the calls here follow: docs/scaling.md#vllm-rollouts says
# which source files they were read from. pyproject.toml's ``vllm`` extra pins the same range.
SUPPORTED_VLLM = ((0, 16), (0, 34))
VLLM_REQUIREMENT = "vllm>=0.16,<0.35"
# The values vLLM's max_lora_rank takes (its LoRAConfig's MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class VLLMUnavailableError(UserError, ImportError):
    """vLLM is not installed, or not at a version atesd supports."""


def supported_version(version: str) -> bool:
    match = re.match(r"(\d+)\.(\d+)", version)
    return match is not None and SUPPORTED_VLLM[0] <= (int(match[1]), int(match[2])) <= SUPPORTED_VLLM[1]


def import_vllm() -> ModuleType:
    """The `vllm` module, or one error that says what to install."""
    try:
        import vllm
    except ImportError as error:
        raise VLLMUnavailableError("the vllm engine needs vLLM: pip install 'atesd[vllm]' (on a machine with a CUDA "
                                   "GPU), or use the hf engine (rollout.engine=hf, eval.engine=hf)") from error
    version = str(getattr(vllm, "__version__", "unknown"))
    if not supported_version(version):
        raise VLLMUnavailableError(f"vLLM {version} is installed; atesd supports {VLLM_REQUIREMENT} (the versions "
                                   f"whose API it follows): pip install '{VLLM_REQUIREMENT}'")
    return vllm


def build_llm(vllm: ModuleType, model: str, settings: VLLMSettings, *, dtype: str, seed: int,
              trust_remote_code: bool, **engine_args: Any) -> Any:
    """A `vllm.LLM` on `model` (a directory or hub id) with the configured settings and any further engine args."""
    return vllm.LLM(model=model, dtype=dtype, seed=seed, gpu_memory_utilization=settings.gpu_memory_utilization,
                    max_model_len=settings.max_model_len, enforce_eager=settings.enforce_eager,
                    trust_remote_code=trust_remote_code, enable_prefix_caching=True, **engine_args)


def served_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM takes that serves an adapter of `rank`."""
    served = next((allowed for allowed in VLLM_LORA_RANKS if rank <= allowed), None)
    if served is None:
        raise UserError(f"a LoRA adapter of rank {rank} is above vLLM's largest max_lora_rank "
                        f"({VLLM_LORA_RANKS[-1]}): set eval.vllm.lora=merge")
    return served


def sampling_params(vllm: ModuleType, sampling: SamplingParams, *, eos_token_id: int, n: int = 1,
                    seed: int | None = None) -> Any:
    """`sampling` as vLLM's `SamplingParams`: n samples of one request, from `seed` (vLLM seeds the i-th with
    ``seed + i``), stopping at EOS, token ids only (atesd decodes what it needs). ``top_k = 0`` is vLLM's "no
    top-k" too."""
    return vllm.SamplingParams(n=n, seed=seed, temperature=sampling.temperature, top_p=sampling.top_p,
                               top_k=sampling.top_k, max_tokens=sampling.max_new_tokens,
                               stop_token_ids=[eos_token_id], detokenize=False)


def token_prompts(prompt_ids: Sequence[Sequence[int]]) -> list[dict[str, list[int]]]:
    """Prompts given as token ids (vLLM's ``TokensPrompt``)."""
    return [{"prompt_token_ids": list(ids)} for ids in prompt_ids]


def trimmed(token_ids: Sequence[int], finish_reason: str | None, eos_token_id: int) -> tuple[list[int], bool]:
    """A completion cut at its first EOS (kept), and whether the model stopped on its own. vLLM may leave the stop
    token out of the ids when it stopped on it; it is put back, since the trainer scores the EOS the model emitted."""
    ids = list(token_ids)
    if eos_token_id in ids:
        return ids[: ids.index(eos_token_id) + 1], True
    if finish_reason == "stop":
        return ids + [eos_token_id], True
    return ids, False


def served_logprobs(vllm: ModuleType, llm: Any, ids: Sequence[int], lora_request: Any = None) -> list[float]:
    """vLLM's log-probs of ``ids[1:]``, each given the tokens before it (its prompt log-probs: the first prompt
    token has none)."""
    params = vllm.SamplingParams(max_tokens=1, prompt_logprobs=1, detokenize=False)
    (output,) = llm.generate(token_prompts([ids]), params, use_tqdm=False, lora_request=lora_request)
    return [output.prompt_logprobs[position][token].logprob for position, token in enumerate(ids) if position > 0]


class VLLMEngine:
    """Samples with a colocated `vllm.LLM`; `update_weights` copies the training model's weights into it, and the
    first `generate` after a sync checks that they arrived (`SyncCheck`, ``rollout.vllm.sync_check``)."""

    def __init__(self, model: torch.nn.Module, model_path: str, settings: VLLMConfig, *, eos_token_id: int,
                 dtype: str, seed: int, trust_remote_code: bool = False) -> None:
        # In this process, so that `apply_model` hands the weights over without serialising them.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.vllm = import_vllm()
        self.model = model
        self.eos_token_id = eos_token_id
        self.sync_check = SyncCheck(settings.sync_check_tokens, settings.sync_check_tolerance) \
            if settings.sync_check else None
        self.syncs = 0
        self.unchecked = False
        self.llm = build_llm(self.vllm, model_path, settings, dtype=dtype, seed=seed,
                             trust_remote_code=trust_remote_code)

    def update_weights(self) -> None:
        """Load the training model's current weights (LoRA merged) into vLLM."""
        self.load_weights(merged_state_dict(self.model).items())

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load whole tensors under the base model's names into vLLM's model, as they come (a sharded training
        model hands them over one layer at a time, `atesd.train.sharding`), then drop the prefix cache, whose
        keys and values were computed with the old weights."""
        self.llm.apply_model(lambda vllm_model: vllm_model.load_weights(weights))
        self.llm.reset_prefix_cache()
        self.syncs += 1
        self.unchecked = self.sync_check is not None

    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingParams,
                 generator: torch.Generator | None = None) -> Completions:
        """One request per prompt, each with its own seed drawn from `generator`, so that rollouts are a function
        of (run seed, step)."""
        if self.unchecked and prompt_ids:
            self.sync_check.verify(lambda ids: served_logprobs(self.vllm, self.llm, ids), self.model, prompt_ids[0],
                                   sync=self.syncs)
            self.unchecked = False
        seeds: Iterable[int | None] = (
            torch.randint(0, 2**31 - 1, (len(prompt_ids),), generator=generator).tolist() if generator is not None
            else [None] * len(prompt_ids))
        params = [sampling_params(self.vllm, sampling, eos_token_id=self.eos_token_id, seed=seed) for seed in seeds]
        outputs = self.llm.generate(token_prompts(prompt_ids), params, use_tqdm=False)
        completions, finished = [], []
        for output in outputs:
            ids, done = trimmed(output.outputs[0].token_ids, output.outputs[0].finish_reason, self.eos_token_id)
            completions.append(ids)
            finished.append(done)
        return Completions([list(p) for p in prompt_ids], completions, finished)
