"""vLLM itself (its CPU build, ``make test-vllm``): the engines atesd builds on it, run for real.

Rollouts: seeds, long seeded prompts, the tokens vLLM samples scored by the training model as the same
distribution, the weight sync (full weights through vLLM's reload path, a LoRA adapter as a request, or merged) and
the sync guard against a sync that was skipped. Training and evaluation end to end through the command line:
``atesd train`` with ``rollout.engine=vllm`` (the sync gap in metrics.jsonl), ``atesd eval``, ``eval --checkpoints``
and ``eval.every`` with ``eval.engine=vllm``. And SmolLM2-135M-Instruct, a real pretrained model, served with LoRA.

The tiny model here has a head size of 32 (hidden 64, two heads): vLLM's CPU attention serves head sizes from 32 on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import EMBEDDED_CONFIG, TINY_MODEL_OVERRIDES, TINY_RUN_OVERRIDES

from atesd.cli import main
from atesd.config import load_config, save_config
from atesd.config.engines import VLLMConfig
from atesd.models.loading import load_model_and_tokenizer
from atesd.rollout import SamplingParams
from atesd.rollout.sync_check import WeightSyncError, training_logprobs
from atesd.rollout.vllm import VLLMEngine, served_logprobs
from atesd.train.base_model import base_model_path
from atesd.train.metrics import read_metrics
from atesd.train.problems import step_seed

pytestmark = pytest.mark.real_vllm

# vLLM's CPU attention needs a head size of at least 32; a small KV cache keeps several engines in one process.
VLLM_MODEL_OVERRIDES = (*TINY_MODEL_OVERRIDES, "model.embedded.hidden_size=64")
ENGINE = ("rollout.vllm.kv_cache_gib=0.0625", "eval.vllm.kv_cache_gib=0.0625")
# float32 on both sides: vLLM's and transformers' kernels differ only in the order of their sums.
SAME_WEIGHTS_GAP = 1e-4


@pytest.fixture(scope="module")
def vllm_config(tmp_path_factory):
    """``vllm_config(tmp_path, *overrides)``: the tiny embedded config with a head size vLLM serves."""
    cache = tmp_path_factory.mktemp("vllm-embedded-cache")

    def make(tmp_path: Path, *overrides: str):
        return load_config(EMBEDDED_CONFIG, [f"model.embedded.cache_dir={cache}", *VLLM_MODEL_OVERRIDES,
                                             *TINY_RUN_OVERRIDES, *ENGINE, f"run.output_dir={tmp_path / 'runs'}",
                                             *overrides])

    return make


def engine_on(config, model: torch.nn.Module, **settings) -> VLLMEngine:
    """A colocated engine on the config's base model, sampling for `model`."""
    vllm_settings = config.rollout.vllm.model_copy(update=settings)
    return VLLMEngine(model, base_model_path(config), vllm_settings, eos_token_id=2, dtype="float32",
                      seed=step_seed(config.run.seed, 0))


def base_model(config) -> torch.nn.Module:
    model, _ = load_model_and_tokenizer(config, base_model_path(config))
    return model


def nudge(model: torch.nn.Module, scale: float = 0.02, seed: int = 0) -> None:
    """An "update": every trainable weight moved by Gaussian noise of `scale`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


PROMPTS = [[10 + (i * 7 + j) % 80 for j in range(12 + 5 * i)] for i in range(8)]


def test_seeded_rollouts_repeat_and_a_63_bit_run_seed_is_taken(vllm_config, tmp_path):
    config = vllm_config(tmp_path)
    engine = engine_on(config, base_model(config))  # the engine seed is a 63-bit step_seed
    sampling = SamplingParams(temperature=1.0, top_p=0.95, top_k=20, max_new_tokens=16)
    first = engine.generate(PROMPTS, sampling, torch.Generator().manual_seed(0))
    again = engine.generate(PROMPTS, sampling, torch.Generator().manual_seed(0))
    other = engine.generate(PROMPTS, sampling, torch.Generator().manual_seed(1))
    assert first.completion_ids == again.completion_ids != other.completion_ids
    for ids, finished in zip(first.completion_ids, first.finished):
        assert 0 < len(ids) <= 17 and (ids[-1] == 2) == finished and 2 not in ids[:-1]


def test_seeded_prompts_longer_than_a_prefill_chunk_run(vllm_config, tmp_path):
    # vLLM prefills in chunks of 2,048 tokens by default; a seeded request prefilled in chunks crashed the CPU
    # build ("CPU Generator does not use offset"). The engine takes whole prompts instead.
    config = vllm_config(tmp_path, "model.embedded.max_positions=4096", "rollout.vllm.max_model_len=4096")
    engine = engine_on(config, base_model(config))
    long = [[10 + (i + j) % 80 for j in range(2500)] for i in range(3)]
    out = engine.generate([*long, *PROMPTS], SamplingParams(max_new_tokens=4), torch.Generator().manual_seed(0))
    assert len(out.completion_ids) == 3 + len(PROMPTS)


def test_sampled_tokens_are_scored_by_the_training_model_as_the_same_distribution(vllm_config, tmp_path):
    """vLLM's log-probability of each token it sampled equals the training model's within float32 rounding: the
    rollouts come from the distribution the loss assumes (at temperature 1, top-p 1, no top-k)."""
    config = vllm_config(tmp_path)
    model = base_model(config)
    nudge(model)
    engine = engine_on(config, model, sync_check=False)
    engine.update_weights()
    import vllm

    params = [vllm.SamplingParams(seed=seed, max_tokens=24, logprobs=0, temperature=1.0, detokenize=False)
              for seed in range(len(PROMPTS))]
    outputs = engine.llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    gaps = []
    for prompt, output in zip(PROMPTS, outputs):
        sample = output.outputs[0]
        served = torch.tensor([entry[token].logprob for entry, token in zip(sample.logprobs, sample.token_ids)])
        scored = training_logprobs(model, prompt + list(sample.token_ids))[len(prompt) - 1:]
        gaps.append((served - scored.double()).abs())
    gap = torch.cat(gaps)
    assert gap.numel() > 100 and float(gap.mean()) < SAME_WEIGHTS_GAP and float(gap.max()) < 10 * SAME_WEIGHTS_GAP


def test_full_weights_sync_and_the_guard_catches_a_skipped_sync(vllm_config, tmp_path):
    config = vllm_config(tmp_path)
    model = base_model(config)
    engine = engine_on(config, model)
    nudge(model, seed=1)
    engine.update_weights()
    out = engine.generate(PROMPTS, SamplingParams(max_new_tokens=4), torch.Generator().manual_seed(0))
    assert out.sync_gap < SAME_WEIGHTS_GAP
    nudge(model, seed=2)  # an update whose sync is skipped: vLLM still holds the previous weights
    engine.unchecked = True
    with pytest.raises(WeightSyncError, match="after weight sync 1"):
        engine.generate(PROMPTS, SamplingParams(max_new_tokens=4), torch.Generator().manual_seed(0))


@pytest.mark.parametrize("lora", ["request", "merge"])
def test_lora_reaches_vllm_and_a_dropped_adapter_is_caught(lora, vllm_config, tmp_path):
    from peft import LoraConfig, get_peft_model

    config = vllm_config(tmp_path)
    model = get_peft_model(base_model(config), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    engine = engine_on(config, model, lora=lora)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
    engine.update_weights()
    assert (engine.lora_request is not None) == (lora == "request")
    out = engine.generate(PROMPTS, SamplingParams(max_new_tokens=4), torch.Generator().manual_seed(0))
    assert out.sync_gap < SAME_WEIGHTS_GAP
    base = served_logprobs(engine.vllm, engine.llm, PROMPTS[-1], None if lora == "request" else engine.lora_request)
    adapted = training_logprobs(model, PROMPTS[-1])
    if lora == "request":  # the base weights in vLLM never change: without the request, the adapter is missing
        assert float((torch.tensor(base) - adapted).abs().mean()) > 100 * SAME_WEIGHTS_GAP


def test_atesd_train_with_vllm_rollouts_logs_its_sync_gap_and_evaluates_along(vllm_config, tmp_path):
    config = vllm_config(tmp_path, "train.steps=2", "train.lr=1e-3", "rollout.engine=vllm", "eval.engine=vllm",
                         "eval.every=1", "eval.num_samples=2", "eval.max_problems=6", "eval.max_new_tokens=8",
                         "model.lora={r: 8, alpha: 16}", "run.name=run")
    save_config(config, tmp_path / "run.yaml")
    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    run = tmp_path / "runs" / config.run.name
    rows = read_metrics(run / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2]
    assert all(0 <= row["sync_gap"] < SAME_WEIGHTS_GAP for row in rows)
    evaluations = read_metrics(run / "eval_along_training.jsonl")
    assert [row["step"] for row in evaluations] == [0, 1, 2]
    assert (run / "final_model" / "adapter_config.json").is_file()


def test_atesd_eval_and_eval_checkpoints_run_on_vllm(vllm_config, tmp_path):
    """Full fine-tuning for 2 steps, then: its last checkpoint evaluated by ``eval --checkpoints`` (one engine,
    weights reloaded) samples exactly what ``atesd eval`` of its final model samples (an engine loaded from disk):
    the same weights, the same per-problem seeds."""
    evaluation = ("eval.num_samples=2", "eval.max_problems=6", "eval.max_new_tokens=8", "eval.engine=vllm")
    config = vllm_config(tmp_path, "train.steps=2", "train.lr=1e-2", "train.checkpoint_every=1", "run.name=run",
                         *evaluation)
    save_config(config, tmp_path / "run.yaml")
    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    run = tmp_path / "runs" / config.run.name
    assert main(["eval", "--checkpoints", str(run), "--out", str(tmp_path / "along"), *evaluation]) == 0
    rows = [json.loads(line) for line in (tmp_path / "along" / "checkpoints.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert main(["eval", str(tmp_path / "run.yaml"), "--model", str(run / "final_model"), "--out",
                 str(tmp_path / "final")]) == 0

    def completions(folder: Path) -> list[list[str]]:
        (path,) = folder.glob("*embedded*.json")
        return [problem["completions"] for problem in json.loads(path.read_text())["problems"]]

    assert completions(tmp_path / "final") == completions(tmp_path / "along" / "step-0000002")
    assert completions(tmp_path / "along" / "step-0000000") != completions(tmp_path / "along" / "step-0000002")


def test_smollm2_is_served_with_lora_and_its_sync_is_checked(smollm2_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    settings = VLLMConfig(max_model_len=1024, kv_cache_gib=0.25)
    engine = VLLMEngine(model, str(smollm2_dir), settings, eos_token_id=tokenizer.eos_token_id, dtype="float32",
                        seed=0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    engine.update_weights()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 7 + 5? Answer with a number."}],
                                           add_generation_prompt=True, tokenize=True, return_dict=False)
    out = engine.generate([prompt] * 4, SamplingParams(temperature=0.7, max_new_tokens=16),
                          torch.Generator().manual_seed(0))
    assert out.sync_gap < 1e-3 and all(len(ids) > 0 for ids in out.completion_ids)
    text = tokenizer.decode(out.completion_ids[0], skip_special_tokens=True)
    assert text.strip(), text


def test_a_lora_run_is_evaluated_alike_as_a_request_and_merged(vllm_config, tmp_path):
    """A LoRA run's final_model (an adapter) on vLLM: as a LoRA request on the base model, and merged into it;
    float32 both ways, the same weights in effect, so the same samples."""
    config = vllm_config(tmp_path, "train.steps=2", "train.lr=1e-2", "run.name=lora", "model.lora={r: 8, alpha: 16}",
                         "eval.num_samples=2", "eval.max_problems=6", "eval.max_new_tokens=8", "eval.engine=vllm")
    save_config(config, tmp_path / "run.yaml")
    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    texts = {}
    for lora in ("request", "merge"):
        assert main(["eval", str(tmp_path / "run.yaml"), f"eval.vllm.lora={lora}", "--out", str(tmp_path / lora)]) == 0
        (path,) = (tmp_path / lora).glob("student-*.json")
        texts[lora] = [p["completions"] for p in json.loads(path.read_text())["problems"]]
    assert texts["request"] == texts["merge"]


def test_compare_evaluates_its_runs_on_vllm(vllm_config, tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    save_config(vllm_config(tmp_path, "train.steps=2", "eval.num_samples=2", "eval.max_problems=6",
                            "eval.max_new_tokens=8", "eval.engine=vllm", "rollout.engine=vllm",
                            "eval.teacher_alpha=null"), recipes / "opsd.yaml")
    assert main(["compare", "--recipes", str(recipes), "--methods", "base", "opsd", "--seeds", "1", "--out",
                 str(tmp_path / "compare")]) == 0
    for run in ("base-seed0", "opsd-seed0"):
        result = json.loads((tmp_path / "compare" / "runs" / run / "result.json").read_text())
        assert 0 <= result["benchmarks"]["embedded"]["summary"]["all"]["average@2"] <= 1
    assert all(0 <= row["sync_gap"] < SAME_WEIGHTS_GAP
               for row in read_metrics(tmp_path / "compare" / "runs" / "opsd-seed0" / "metrics.jsonl"))
