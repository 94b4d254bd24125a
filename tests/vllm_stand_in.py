"""A stand-in for the vLLM API at the versions atesd supports (`atesd.rollout.vllm.SUPPORTED_VLLM`), for the main
suite, which runs without vLLM; the same behaviour is tested against vLLM itself (its CPU build) by
tests/test_vllm_real.py in ``make test-vllm``.

It keeps the API's names, argument names and output structure, as vLLM 0.32 (its CPU build) showed them when run:
``LLM(model, *, tokenizer, trust_remote_code, tensor_parallel_size, dtype, seed, gpu_memory_utilization,
enforce_eager, **engine_args)`` (unknown engine args are a TypeError, as in vLLM's ``EngineArgs``; ``max_lora_rank``
must be one of vLLM's ranks; the seed must fit 32 bits), ``LLM.generate(prompts, sampling_params, *, use_tqdm,
lora_request, priority, tokenization_kwargs)`` returning one ``RequestOutput`` per prompt in order,
``SamplingParams`` as keyword fields (an unknown one is a TypeError), the i-th of a request's n samples seeded with
``seed + i``, ``prompt_logprobs`` as ``[None, {token id: Logprob}, ...]``, ``LLM.collective_rpc(method name,
kwargs=...)`` returning one result per worker, ``LLM.apply_model(func)``, ``LLM.reset_prefix_cache()``,
``vllm.platforms.current_platform.is_cpu()`` and ``vllm.lora.request.LoRARequest(lora_name, lora_int_id,
lora_path)``. Two failures of the real CPU build are kept too: a model's own ``load_weights`` after loading raises
(its post-load processing drops the weight loaders; ``reload_weights`` puts them back), and a seeded request whose
prompt is prefilled in chunks crashes ("CPU Generator does not use offset").

Behind it is a tiny transformers model loaded from the ``model`` directory: samples and prompt log-probs come
from its weights, so a test sees what a weight sync or a LoRA request really changed. ``reload_weights`` takes the
base model's parameter names (vLLM's loaders take a checkpoint's names); with ``ignore_updates`` it drops what it
receives, as a vLLM that never got the weights would.
"""
from __future__ import annotations

import copy
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import Any, ClassVar

import torch

__version__ = "0.32.0"

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The engine args atesd may pass on to vLLM's EngineArgs (any other is refused here, to catch a typo).
ENGINE_ARGS = {"max_model_len", "enable_prefix_caching", "enable_lora", "max_lora_rank", "max_loras",
               "kv_cache_memory_bytes", "enable_chunked_prefill", "max_num_batched_tokens"}
DEFAULT_BATCHED_TOKENS = 2048


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: tuple[int, ...]
    cumulative_logprob: float | None
    logprobs: Any
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    lora_request: Any = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput]
    finished: bool
    lora_request: Any = None


@dataclass(kw_only=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    max_tokens: int | None = 16
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True

    def __post_init__(self) -> None:  # vLLM's own checks of these fields
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}.")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < -1:
            raise ValueError(f"top_k must be 0 (disable), or at least 1, got {self.top_k}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.prompt_logprobs is not None and self.prompt_logprobs < -1:
            raise ValueError(f"prompt_logprobs must be non-negative or -1, got {self.prompt_logprobs}.")
        self.stop_token_ids = list(self.stop_token_ids or [])


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    base_model_name: str | None = None
    load_inplace: bool = False

    def __post_init__(self) -> None:
        if self.lora_int_id < 1:
            raise ValueError(f"id must be > 0, got {self.lora_int_id}")


@dataclass
class StandInModel:
    """The worker: its model, vLLM's weight-reload path, and the model's own ``load_weights``, which after loading
    fails as the CPU build's does."""

    model: torch.nn.Module
    ignore_updates: bool = False
    loads: list[dict[str, torch.Tensor]] = field(default_factory=list)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        raise AttributeError("'Parameter' object has no attribute 'weight_loader'")

    def reload_weights(self, weights_iterator: Iterable[tuple[str, torch.Tensor]] | None = None,
                       weights_path: str | None = None, is_checkpoint_format: bool = True) -> None:
        received = {name: tensor.detach().clone() for name, tensor in weights_iterator or ()}
        self.loads.append(received)
        if self.ignore_updates:
            return
        state = self.model.state_dict()
        unknown = sorted(set(received) - set(state))
        if unknown:
            raise KeyError(f"no parameter {unknown[0]} in the model")
        with torch.no_grad():
            for name, tensor in received.items():
                state[name].copy_(tensor)


class Platform:
    cpu: ClassVar[bool] = False  # a GPU unless a test says otherwise

    def is_cpu(self) -> bool:
        return Platform.cpu


current_platform = Platform()


class LLM:
    instances: ClassVar[list[LLM]] = []

    def __init__(self, model: str, *, tokenizer: str | None = None, trust_remote_code: bool = False,
                 tensor_parallel_size: int = 1, dtype: str = "auto", seed: int = 0,
                 gpu_memory_utilization: float = 0.92, enforce_eager: bool = False, **kwargs: Any) -> None:
        from transformers import AutoModelForCausalLM

        unknown = set(kwargs) - ENGINE_ARGS
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument '{min(unknown)}'")
        if not 0 <= seed <= 2**32 - 1:
            raise ValueError("Seed must be between 0 and 2**32 - 1")
        if kwargs.get("enable_lora") and kwargs.get("max_lora_rank", 16) not in MAX_LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {MAX_LORA_RANKS}, got {kwargs['max_lora_rank']}")
        self.init_kwargs = {"model": model, "tokenizer": tokenizer, "trust_remote_code": trust_remote_code,
                            "tensor_parallel_size": tensor_parallel_size, "dtype": dtype, "seed": seed,
                            "gpu_memory_utilization": gpu_memory_utilization, "enforce_eager": enforce_eager,
                            **kwargs}
        self.worker = StandInModel(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval())
        self.requests: list[tuple[list[int], SamplingParams, LoRARequest | None]] = []
        self.adapters: dict[int, torch.nn.Module] = {}
        self.keep_stop_token = True
        self.ignore_loras = False  # serve the base model whatever LoRA request comes: an adapter that never arrived
        self.prefix_cache_resets = 0
        self.rng = random.Random(seed)
        LLM.instances.append(self)

    # ----------------------------------------------------------------------------------------- the API

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None,
                 tokenization_kwargs=None) -> list[RequestOutput]:
        prompts = [prompts] if isinstance(prompts, dict) else list(prompts)
        params = sampling_params or SamplingParams()
        params = list(params) if isinstance(params, list | tuple) else [params] * len(prompts)
        loras = list(lora_request) if isinstance(lora_request, list | tuple) else [lora_request] * len(prompts)
        if not len(prompts) == len(params) == len(loras):
            raise ValueError(f"The lengths of prompts ({len(prompts)}) and params ({len(params)}) must be the same.")
        outputs = []
        for number, (prompt, param, lora) in enumerate(zip(prompts, params, loras)):
            ids = list(prompt["prompt_token_ids"])
            self.requests.append((ids, param, lora))
            chunked = self.init_kwargs.get("enable_chunked_prefill", True)
            budget = self.init_kwargs.get("max_num_batched_tokens") or DEFAULT_BATCHED_TOKENS
            if Platform.cpu and chunked and param.seed is not None and len(ids) > budget:
                raise RuntimeError("CPU Generator does not use offset")
            model = self._model(lora)
            completions = [self._sample(model, ids, param, index) for index in range(param.n)]
            logprobs = self._prompt_logprobs(model, ids, param.prompt_logprobs) \
                if param.prompt_logprobs is not None else None
            outputs.append(RequestOutput(str(number), None, ids, logprobs, completions, True, lora))
        return outputs

    def apply_model(self, func):
        return [func(self.worker)]

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        function = getattr(self.worker, method) if isinstance(method, str) else partial(method, self.worker)
        return [function(*args, **(kwargs or {}))]

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self.prefix_cache_resets += 1
        return True

    # ----------------------------------------------------------------------------------------- behind it

    def _model(self, lora: LoRARequest | None) -> torch.nn.Module:
        if lora is None or self.ignore_loras:
            return self.worker.model
        if not self.init_kwargs.get("enable_lora"):
            raise ValueError(f"LoRA is not enabled! Got lora_request {lora}")
        if lora.lora_int_id not in self.adapters:
            from peft import PeftConfig, PeftModel

            rank = PeftConfig.from_pretrained(lora.lora_path).r
            if rank > self.init_kwargs.get("max_lora_rank", 16):
                raise ValueError(f"LoRA rank {rank} is greater than max_lora_rank")
            adapted = PeftModel.from_pretrained(copy.deepcopy(self.worker.model), lora.lora_path)
            self.adapters[lora.lora_int_id] = adapted.merge_and_unload().eval()
        return self.adapters[lora.lora_int_id]

    @torch.no_grad()
    def _sample(self, model, prompt: list[int], param: SamplingParams, index: int) -> CompletionOutput:
        seed = param.seed + index if param.seed is not None else self.rng.randrange(2**31)
        generator = torch.Generator().manual_seed(seed)
        ids, reason = list(prompt), "length"
        while len(ids) - len(prompt) < (param.max_tokens or 16):
            logits = model(torch.tensor([ids])).logits[0, -1].float() / max(param.temperature, 1e-5)
            if param.top_k > 0:
                logits[logits < logits.topk(min(param.top_k, logits.numel())).values[-1]] = -float("inf")
            probs = torch.softmax(logits, -1)
            ordered, order = probs.sort(descending=True)
            outside = ordered.cumsum(0) - ordered > param.top_p
            probs[order[outside]] = 0
            token = int(torch.multinomial(probs, 1, generator=generator))
            if token in param.stop_token_ids:
                reason = "stop"
                if self.keep_stop_token:
                    ids.append(token)
                break
            ids.append(token)
        return CompletionOutput(index, "", tuple(ids[len(prompt):]), None, None, reason)

    @torch.no_grad()
    def _prompt_logprobs(self, model, ids: list[int], top: int) -> list[dict[int, Logprob] | None]:
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        result: list[dict[int, Logprob] | None] = [None]
        for position in range(1, len(ids)):
            row = logprobs[position - 1]
            ranks = (row > row[ids[position]]).sum().item() + 1
            entry = {int(t): Logprob(float(row[t]), r + 1) for r, t in enumerate(row.topk(max(top, 0)).indices)}
            entry[ids[position]] = Logprob(float(row[ids[position]]), int(ranks))
            result.append(entry)
        return result


def install(monkeypatch) -> ModuleType:
    """Make ``import vllm``, ``from vllm.lora.request import LoRARequest`` and ``from vllm.platforms import
    current_platform`` find this stand-in (on a GPU; ``Platform.cpu = True`` makes it the CPU build); returns it."""
    module = sys.modules[__name__]
    LLM.instances.clear()
    Platform.cpu = False
    lora = ModuleType("vllm.lora")
    lora.request = module
    platforms = ModuleType("vllm.platforms")
    platforms.current_platform = current_platform
    monkeypatch.setattr(module, "lora", lora, raising=False)
    monkeypatch.setattr(module, "platforms", platforms, raising=False)
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", module)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    return module
