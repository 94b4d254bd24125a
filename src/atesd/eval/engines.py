"""The engines evaluation samples with, behind one method: ``generate_samples(prompt_ids, n, sampling, seeds,
generator)`` gives n completions (token ids, ending with EOS where the model stopped) for each prompt.

- `HFSampleEngine` (``eval.engine: hf``): transformers ``generate`` on a loaded model (`HFGenerateEngine`),
  ``eval.batch_size`` prompts x samples per call. ``generate`` samples a whole batch from one RNG, so per-problem
  seeds cannot apply: each batch's RNG is drawn from the evaluation's `generator`, as it always was, and results
  are a function of the eval seed and ``eval.batch_size``.
- `VLLMSampleEngine` (``eval.engine: vllm``): the n samples of a problem are one vLLM request (``SamplingParams(n=
  ...)``) seeded with that problem's own seed (`atesd.eval.evaluate.problem_seeds`), so results do not depend on
  how problems are batched; vLLM gets every problem of a benchmark at once and schedules them itself. No
  transformers copy of the model is loaded onto the GPU.

`build_eval_engine` builds the configured one for a model directory: a full model (a ``final_model`` of full
fine-tuning, the base model, a hub id) or a LoRA adapter (``adapter_config.json``), which vLLM serves merged
(``eval.vllm.lora: merge``: the run's ``final_model_merged``, else merged now on the CPU into a temporary
directory of safetensors) or as a LoRA request on the base model (``lora: request``). A vLLM engine can also take
new weights (`VLLMSampleEngine.load_weights`: a run's checkpoints, one after another, `atesd eval --checkpoints`)
or share the training run's colocated engine (`VLLMSampleEngine.sharing`: ``eval.every``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypedDict

import torch
from transformers import PreTrainedTokenizerBase

from atesd.config import Config
from atesd.errors import UserError
from atesd.models.causal_lm import CausalLM
from atesd.models.export import merged_state_dict
from atesd.models.loading import ADAPTER_CONFIG, context_length, is_adapter_dir, load_model_and_tokenizer
from atesd.rollout import HFGenerateEngine, SamplingParams
from atesd.rollout.vllm import (
    VLLMEngine,
    build_llm,
    import_vllm,
    model_context,
    reload_weights,
    run_in_process,
    sampling_params,
    served_lora_rank,
    token_prompts,
    trimmed,
)

Samples = list[list[list[int]]]  # per prompt, its n completions' token ids


class SampleEngine(Protocol):
    schedules_itself: bool  # True: give it every problem at once; False: eval.batch_size prompts x samples a call
    context_length: int | None  # the most tokens a prompt and its completion may hold (None: unknown)

    def generate_samples(self, prompt_ids: Sequence[Sequence[int]], n: int, sampling: SamplingParams,
                         seeds: Sequence[int], generator: torch.Generator) -> Samples:
        """n completions of each prompt: from that prompt's seed (an engine that seeds each request), or from
        `generator`, the evaluation's RNG (an engine that samples a batch from one RNG)."""
        ...


class HFSampleEngine:
    """transformers ``generate``: the prompts' n samples in batches, the RNG of each drawn from `generator`."""

    schedules_itself = False

    def __init__(self, engine: HFGenerateEngine) -> None:
        self.engine = engine
        self.context_length = context_length(engine.model)

    def generate_samples(self, prompt_ids: Sequence[Sequence[int]], n: int, sampling: SamplingParams,
                         seeds: Sequence[int], generator: torch.Generator) -> Samples:
        repeated = [ids for ids in prompt_ids for _ in range(n)]
        completions = self.engine.generate(repeated, sampling, generator).completion_ids
        return [completions[index * n : (index + 1) * n] for index in range(len(prompt_ids))]


def hf_sample_engine(model: CausalLM, tokenizer: PreTrainedTokenizerBase, batch_size: int) -> HFSampleEngine:
    """HF generate on `model`. A model still on the CPU is moved to the GPU when there is one (`atesd eval` loads
    it on the CPU); a model already on a device (a training process's) stays there."""
    if torch.cuda.is_available() and next(model.parameters()).device.type == "cpu":
        # transformers wraps `to` with functools.wraps, whose stub expects nn.Module.to's unbound arguments
        model.to("cuda")  # type: ignore[arg-type]
    return HFSampleEngine(HFGenerateEngine(model, pad_token_id=tokenizer.pad_token_id,
                                           eos_token_id=tokenizer.eos_token_id, batch_size=batch_size))


class VLLMSampleEngine:
    """A `vllm.LLM` (with a LoRA request when it serves an adapter): one request of n samples per prompt."""

    schedules_itself = True

    def __init__(self, llm: Any, vllm: Any, eos_token_id: int, lora_request: Any = None,
                 temporary: tempfile.TemporaryDirectory | None = None, context: int | None = None) -> None:
        self.llm, self.vllm, self.eos_token_id = llm, vllm, eos_token_id
        self.lora_source: Callable[[], Any] = lambda: lora_request
        self.context_length = context
        self.temporary = temporary  # a merged model's directory: removed with this engine (or at exit)

    @classmethod
    def sharing(cls, rollouts: VLLMEngine, context: int | None) -> VLLMSampleEngine:
        """Evaluation on a training run's colocated engine: its `vllm.LLM`, with the LoRA request of its last
        sync (the caller syncs first)."""
        engine = cls(rollouts.llm, rollouts.vllm, rollouts.eos_token_id, context=context)
        engine.lora_source = lambda: rollouts.lora_request
        return engine

    @property
    def lora_request(self) -> Any:
        """The LoRA request every request of this engine carries (None: the model as loaded)."""
        return self.lora_source()

    def load_weights(self, model: torch.nn.Module) -> None:
        """Serve `model`'s weights (LoRA merged) from now on: a run's checkpoints, one after another."""
        reload_weights(self.llm, merged_state_dict(model).items())

    def generate_samples(self, prompt_ids: Sequence[Sequence[int]], n: int, sampling: SamplingParams,
                         seeds: Sequence[int], generator: torch.Generator | None = None) -> Samples:
        params = [sampling_params(self.vllm, sampling, eos_token_id=self.eos_token_id, n=n, seed=seed)
                  for seed in seeds]
        outputs = self.llm.generate(token_prompts(prompt_ids), params, use_tqdm=False,
                                    lora_request=self.lora_request)
        return [[trimmed(sample.token_ids, sample.finish_reason, self.eos_token_id)[0]
                 for sample in sorted(output.outputs, key=lambda sample: sample.index)] for output in outputs]


class LLMArgs(TypedDict):
    """The `build_llm` arguments every evaluation engine of a config shares."""

    dtype: str
    seed: int
    trust_remote_code: bool
    tensor_parallel_size: int


def build_eval_engine(config: Config, model_path: str, base_path: str,
                      tokenizer: PreTrainedTokenizerBase) -> SampleEngine:
    """The ``eval.engine`` for the model at `model_path` (a LoRA adapter applies to the base model at
    `base_path`); `tokenizer` is the model's."""
    if config.eval.engine == "hf":
        model, _ = load_model_and_tokenizer(config, model_path, base_path)
        return hf_sample_engine(model, tokenizer, config.eval.batch_size)
    run_in_process("eval.engine=vllm")  # a run of `atesd compare --jobs N` is a pool worker, which starts no process
    vllm = import_vllm()
    settings = config.eval.vllm
    common: LLMArgs = {"dtype": config.model.dtype, "seed": config.run.seed,
                       "trust_remote_code": config.model.trust_remote_code,
                       "tensor_parallel_size": settings.tensor_parallel_size}
    eos = tokenizer.eos_token_id
    context = served_context(config, base_path if is_adapter_dir(model_path) else model_path)
    if not is_adapter_dir(model_path):
        return VLLMSampleEngine(build_llm(vllm, model_path, settings, **common), vllm, eos, context=context)
    if settings.lora == "request":
        from vllm.lora.request import LoRARequest

        rank = served_lora_rank(adapter_rank(Path(model_path)))
        llm = build_llm(vllm, base_path, settings, enable_lora=True, max_lora_rank=rank, **common)
        return VLLMSampleEngine(llm, vllm, eos, LoRARequest(lora_name="atesd-adapter", lora_int_id=1,
                                                            lora_path=str(model_path)), context=context)
    merged, temporary = merged_model_dir(config, Path(model_path), base_path)
    return VLLMSampleEngine(build_llm(vllm, str(merged), settings, **common), vllm, eos, temporary=temporary,
                            context=context)


def reloadable_eval_engine(config: Config, base_path: str, tokenizer: PreTrainedTokenizerBase) -> VLLMSampleEngine:
    """``eval.engine: vllm`` on the base model at `base_path`, in this process, ready to take other weights
    (`VLLMSampleEngine.load_weights`): one engine for every checkpoint of a run."""
    if config.eval.vllm.tensor_parallel_size > 1:
        raise UserError("atesd eval --checkpoints with eval.engine=vllm loads each checkpoint into one in-process "
                        "engine: set eval.vllm.tensor_parallel_size=1")
    engine = build_eval_engine(config, base_path, base_path, tokenizer)
    assert isinstance(engine, VLLMSampleEngine)  # eval.engine is vllm, and a base model is no adapter
    return engine


def served_context(config: Config, model_path: str) -> int | None:
    """The context vLLM serves: ``eval.vllm.max_model_len``, else the model's own (its config.json alone)."""
    if config.eval.vllm.max_model_len is not None:
        return config.eval.vllm.max_model_len
    return model_context(model_path, config.model.trust_remote_code)


def adapter_rank(adapter: Path) -> int:
    """The largest LoRA rank of a peft adapter directory (its ``r``, or a larger one in ``rank_pattern``)."""
    settings = json.loads((adapter / ADAPTER_CONFIG).read_text())
    return max([int(settings.get("r") or 0), *(int(r) for r in (settings.get("rank_pattern") or {}).values())])


def merged_model_dir(config: Config, adapter: Path, base_path: str
                     ) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """A plain model directory with `adapter` merged into the base model: the run's own (``final_model_merged``
    beside ``final_model``, written with ``model.lora.save_merged``), else one merged now on the CPU and saved as
    safetensors in a temporary directory (returned too: it lives as long as that object)."""
    written = adapter.with_name(f"{adapter.name}_merged")
    if (written / "config.json").is_file():
        return written, None
    temporary = tempfile.TemporaryDirectory(prefix="atesd-merged-")
    model, tokenizer = load_model_and_tokenizer(config, str(adapter), base_path)
    model.save_pretrained(temporary.name)
    tokenizer.save_pretrained(temporary.name)
    return Path(temporary.name), temporary
