"""Evaluation's engines (`atesd.eval.engines`): HF generate, as before to the token, and vLLM
(``eval.engine: vllm``) driven through the stand-in of the vLLM API (tests/vllm_stand_in.py; vLLM itself:
tests/test_vllm_real.py): one request of n samples per problem, seeded per problem and so independent of batching,
the configured LLM settings, a LoRA adapter merged (the run's final_model_merged, or merged now) or served as a LoRA
request, and ``atesd eval`` loading no transformers model with vLLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import vllm_stand_in

from atesd.config import load_config
from atesd.data.problem import Problem
from atesd.eval.engines import build_eval_engine, hf_sample_engine
from atesd.eval.evaluate import evaluate, problem_seeds, write_results
from atesd.models.export import merged_state_dict
from atesd.models.tiny import build_char_tokenizer, build_tiny_model
from atesd.rollout import HFGenerateEngine, SamplingParams
from atesd.rollout.vllm import VLLMUnavailableError

PROBLEMS = [Problem(id=f"p{i}", question=f"{i} + {i}", solution=f"\\boxed{{{2 * i}}}", answer=str(2 * i))
            for i in range(6)]
SAMPLING = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=6)


@pytest.fixture
def stand_in(monkeypatch):
    return vllm_stand_in.install(monkeypatch)


def tiny_model():
    return build_tiny_model(build_char_tokenizer(), hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                            intermediate_size=64, max_positions=128, seed=0)


@pytest.fixture
def dirs(tmp_path) -> dict[str, Path]:
    """A base model, a LoRA run's final_model (the adapter, trained away from zero) and the adapted weights."""
    from peft import LoraConfig, get_peft_model

    tokenizer = build_char_tokenizer()
    tiny_model().save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = get_peft_model(tiny_model(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(generator=torch.Generator().manual_seed(1))
    model.save_pretrained(tmp_path / "run" / "final_model")
    tokenizer.save_pretrained(tmp_path / "run" / "final_model")
    torch.save(merged_state_dict(model), tmp_path / "adapted.pt")
    return {"base": tmp_path / "base", "adapter": tmp_path / "run" / "final_model", "adapted": tmp_path / "adapted.pt"}


def config(*overrides: str):
    return load_config(None, ["eval.engine=vllm", "eval.num_samples=3", *overrides])


def prompt_ids(problem: Problem) -> list[int]:
    return [10 + int(problem.id[1:]), 20, 21]


def run(engine, problems=PROBLEMS, batch_size=64, seed=0):
    return evaluate(problems, prompt_ids, engine, lambda ids: "".join(map(chr, ids)), SAMPLING, 3, seed=seed,
                    batch_size=batch_size)


# ------------------------------------------------------------------------------------ HF generate

def test_hf_evaluation_samples_exactly_as_before():
    """The loop evaluate ran before the engines: one generator for the benchmark, k copies of each prompt."""
    tokenizer = build_char_tokenizer()
    engine = hf_sample_engine(tiny_model(), tokenizer, batch_size=6)
    results = run(engine, batch_size=6)
    generator, expected = torch.Generator().manual_seed(0), []
    old = HFGenerateEngine(tiny_model(), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                           batch_size=6)
    for start in range(0, len(PROBLEMS), 2):
        prompts = [prompt_ids(p) for p in PROBLEMS[start : start + 2] for _ in range(3)]
        expected.extend(old.generate(prompts, SAMPLING, generator).completion_ids)
    assert [text for result in results for text in result.completions] == \
        ["".join(map(chr, ids)) for ids in expected]


# ------------------------------------------------------------------------------------ vLLM

def test_vllm_evaluation_is_one_request_of_k_samples_per_problem_seeded_per_problem(stand_in, dirs):
    engine = build_eval_engine(config("eval.vllm.max_model_len=512", "eval.vllm.tensor_parallel_size=2",
                                      "model.dtype=bfloat16", "run.seed=3"),
                               str(dirs["base"]), str(dirs["base"]), build_char_tokenizer())
    llm = engine.llm
    assert llm.init_kwargs == {"model": str(dirs["base"]), "tokenizer": None, "trust_remote_code": False,
                               "tensor_parallel_size": 2, "dtype": "bfloat16", "seed": 3,
                               "gpu_memory_utilization": 0.85, "max_model_len": 512, "enforce_eager": False,
                               "enable_prefix_caching": True}
    results = run(engine)
    assert [ids for ids, _, _ in llm.requests] == [prompt_ids(p) for p in PROBLEMS]  # every problem at once
    assert [params.n for _, params, _ in llm.requests] == [3] * len(PROBLEMS)
    assert [params.seed for _, params, _ in llm.requests] == problem_seeds(0, len(PROBLEMS))
    assert all(len(result.completions) == 3 for result in results)
    assert len({tuple(result.completions) for result in results}) == len(PROBLEMS)
    assert len(set(results[0].completions)) > 1  # the k samples differ (vLLM seeds the i-th with seed + i)
    # The same problems alone, or in another batching, sample the same; another seed samples otherwise.
    assert [r.completions for r in run(engine, PROBLEMS[:2])] == [r.completions for r in results[:2]]
    engine.schedules_itself = False
    assert [r.completions for r in run(engine, batch_size=3)] == [r.completions for r in results]
    assert [r.completions for r in run(engine, seed=1)] != [r.completions for r in results]


def test_vllm_results_are_written_as_hf_results_are(stand_in, dirs, tmp_path):
    engine = build_eval_engine(config(), str(dirs["base"]), str(dirs["base"]), build_char_tokenizer())
    hf = hf_sample_engine(tiny_model(), build_char_tokenizer(), batch_size=64)
    for name, sampler in (("vllm", engine), ("hf", hf)):
        write_results(run(sampler), 3, tmp_path / f"{name}.json")
    files = [json.loads((tmp_path / f"{name}.json").read_text()) for name in ("vllm", "hf")]
    assert files[0].keys() == files[1].keys() and files[0]["summary"].keys() == files[1]["summary"].keys()
    assert [p.keys() for p in files[0]["problems"]] == [p.keys() for p in files[1]["problems"]]


def adapted_logprobs(llm, lora_request=None) -> torch.Tensor:
    (output,) = llm.generate([{"prompt_token_ids": list(range(10, 30))}],
                             vllm_stand_in.SamplingParams(max_tokens=1, prompt_logprobs=0), lora_request=lora_request)
    return torch.tensor([entry[token].logprob for entry, token in zip(output.prompt_logprobs[1:], range(11, 30))])


def expected_logprobs(dirs) -> torch.Tensor:
    model = tiny_model()
    model.load_state_dict(torch.load(dirs["adapted"]))
    ids = torch.arange(10, 30)
    return torch.log_softmax(model(ids[None]).logits[0, :-1], -1).gather(1, ids[1:, None])[:, 0].detach()


def test_a_lora_adapter_is_merged_into_a_temporary_directory(stand_in, dirs):
    engine = build_eval_engine(config(), str(dirs["adapter"]), str(dirs["base"]), build_char_tokenizer())
    merged = Path(engine.llm.init_kwargs["model"])
    assert merged.is_dir() and merged != dirs["adapter"] and "enable_lora" not in engine.llm.init_kwargs
    assert list(merged.glob("*.safetensors"))
    torch.testing.assert_close(adapted_logprobs(engine.llm), expected_logprobs(dirs))
    engine.temporary.cleanup()
    assert not merged.exists()


def test_a_lora_run_s_final_model_merged_is_used_when_it_exists(stand_in, dirs):
    written = dirs["adapter"].with_name("final_model_merged")
    merged = tiny_model()
    merged.load_state_dict(torch.load(dirs["adapted"]))
    merged.save_pretrained(written)
    build_char_tokenizer().save_pretrained(written)
    engine = build_eval_engine(config(), str(dirs["adapter"]), str(dirs["base"]), build_char_tokenizer())
    assert engine.llm.init_kwargs["model"] == str(written) and engine.temporary is None


def test_a_lora_adapter_is_served_as_a_lora_request(stand_in, dirs):
    engine = build_eval_engine(config("eval.vllm.lora=request"), str(dirs["adapter"]), str(dirs["base"]),
                               build_char_tokenizer())
    kwargs = engine.llm.init_kwargs
    assert (kwargs["model"], kwargs["enable_lora"], kwargs["max_lora_rank"]) == (str(dirs["base"]), True, 8)  # r=2
    assert (engine.lora_request.lora_int_id, engine.lora_request.lora_path) == (1, str(dirs["adapter"]))
    requested = run(engine)
    assert all(lora is engine.lora_request for _, _, lora in engine.llm.requests)
    torch.testing.assert_close(adapted_logprobs(engine.llm, engine.lora_request), expected_logprobs(dirs))
    merged = build_eval_engine(config(), str(dirs["adapter"]), str(dirs["base"]), build_char_tokenizer())
    assert [r.completions for r in run(merged)] == [r.completions for r in requested]  # the same model either way


def test_eval_with_vllm_needs_vllm(monkeypatch, dirs):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(VLLMUnavailableError, match=r"pip install 'atesd\[vllm\]'"):
        build_eval_engine(config(), str(dirs["base"]), str(dirs["base"]), build_char_tokenizer())


@pytest.mark.slow
def test_atesd_eval_with_vllm_loads_no_transformers_model(tiny_config, tmp_path, stand_in, monkeypatch, capsys):
    from peft import LoraConfig, get_peft_model

    from atesd.cli import main
    from atesd.config import save_config
    from atesd.eval import engines
    from atesd.models.loading import load_model_and_tokenizer
    from atesd.train.base_model import base_model_path

    config = tiny_config(tmp_path, "eval.engine=vllm", "eval.vllm.lora=request", "eval.num_samples=2",
                         "eval.max_problems=4", "eval.max_new_tokens=8")
    base = base_model_path(config)
    model, tokenizer = load_model_and_tokenizer(config, base)
    adapter = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    run_dir = Path(config.run.output_dir) / "opsd-seed0"
    adapter.save_pretrained(run_dir / "final_model")
    tokenizer.save_pretrained(run_dir / "final_model")
    save_config(config, tmp_path / "eval.yaml")

    def refused(*args, **kwargs):
        raise AssertionError("a transformers model was loaded for a vLLM evaluation")

    monkeypatch.setattr(engines, "load_model_and_tokenizer", refused)
    assert main(["eval", str(tmp_path / "eval.yaml")]) == 0
    assert "| student |" in capsys.readouterr().out
    results = json.loads((run_dir / "eval" / "student-embedded.json").read_text())
    assert len(results["problems"]) == 4 and all(len(p["completions"]) == 2 for p in results["problems"])
    (llm,) = stand_in.LLM.instances
    assert llm.init_kwargs["model"] == base and llm.init_kwargs["max_lora_rank"] == 8
