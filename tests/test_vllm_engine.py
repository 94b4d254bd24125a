"""The rollout-engine contract, for the HF engine and for the vLLM engine driven through a stand-in for the
vLLM API (vLLM itself needs a CUDA GPU and is never installed here): sampling-parameter mapping, EOS
trimming, seeding, and the weight sync into vLLM before each step's rollouts (LoRA merged)."""

from __future__ import annotations

import random
import sys
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch

import atesd.rollout.vllm as vllm_module
from atesd.models.export import merged_state_dict
from atesd.models.tiny import build_char_tokenizer, build_tiny_model
from atesd.rollout import HFGenerateEngine, SamplingParams
from atesd.rollout.vllm import VLLMEngine

EOS = 2
VOCAB = 101


class FakeVLLMModel:
    """What `load_weights` received, call by call."""

    def __init__(self) -> None:
        self.loads: list[dict[str, torch.Tensor]] = []

    def load_weights(self, weights) -> None:
        self.loads.append({name: tensor.detach().clone() for name, tensor in weights})


class FakeSamplingParams:
    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs


class FakeLLM:
    """Samples tokens from each request's seed; like vLLM, may leave the stop token out of the ids."""

    instances: ClassVar[list[FakeLLM]] = []

    def __init__(self, **kwargs) -> None:
        self.init_kwargs = kwargs
        self.requests: list[tuple[list[int], dict]] = []
        self.keep_stop_token = True
        self.model = FakeVLLMModel()
        worker = SimpleNamespace(model_runner=SimpleNamespace(model=self.model))
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(worker=worker)))
        FakeLLM.instances.append(self)

    def generate(self, prompts, params, use_tqdm=True):
        outputs = []
        for prompt, param in zip(prompts, params):
            self.requests.append((prompt["prompt_token_ids"], param.kwargs))
            rng = random.Random(param.kwargs["seed"])
            ids, reason = [], "length"
            while len(ids) < param.kwargs["max_tokens"]:
                token = EOS if rng.random() < 0.15 else rng.randrange(5, VOCAB)
                if token in param.kwargs["stop_token_ids"]:
                    reason = "stop"
                    if self.keep_stop_token:
                        ids.append(token)
                    break
                ids.append(token)
            outputs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=tuple(ids), finish_reason=reason)]))
        return outputs


FAKE_VLLM = SimpleNamespace(LLM=FakeLLM, SamplingParams=FakeSamplingParams)


def tiny_model() -> torch.nn.Module:
    tokenizer = build_char_tokenizer()
    assert tokenizer.eos_token_id == EOS and len(tokenizer) == VOCAB
    return build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                            intermediate_size=64, max_positions=128, seed=0)


def vllm_engine(model: torch.nn.Module | None = None) -> VLLMEngine:
    return VLLMEngine(model or tiny_model(), "/models/base", eos_token_id=EOS, dtype="bfloat16", seed=7,
                      gpu_memory_utilization=0.25, max_model_len=2048, enforce_eager=True, vllm=FAKE_VLLM)


def hf_engine() -> HFGenerateEngine:
    return HFGenerateEngine(tiny_model(), pad_token_id=0, eos_token_id=EOS, batch_size=3)


# ------------------------------------------------------------------------------------ the shared contract

@pytest.mark.parametrize("make_engine", [hf_engine, vllm_engine], ids=["hf", "vllm"])
def test_engine_contract(make_engine):
    engine = make_engine()
    engine.update_weights()
    prompts = [[10, 11, 12], [13], [14, 15, 16, 17, 18], [19, 20]]
    sampling = SamplingParams(temperature=1.0, top_p=0.95, top_k=20, max_new_tokens=12)
    out = engine.generate(prompts, sampling, torch.Generator().manual_seed(0))
    assert out.prompt_ids == prompts
    assert len(out.completion_ids) == len(out.finished) == len(prompts)
    for ids, finished in zip(out.completion_ids, out.finished):
        assert 0 < len(ids) <= 12 + 1  # a stop token vLLM left out is put back
        assert (EOS in ids) == finished
        if finished:
            assert ids.index(EOS) == len(ids) - 1
    again = engine.generate(prompts, sampling, torch.Generator().manual_seed(0))
    other = engine.generate(prompts, sampling, torch.Generator().manual_seed(1))
    assert again.completion_ids == out.completion_ids
    assert other.completion_ids != out.completion_ids


# ------------------------------------------------------------------------------------ vLLM specifics

def test_vllm_engine_is_built_colocated_with_the_configured_settings():
    engine = vllm_engine()
    assert engine.llm.init_kwargs == {"model": "/models/base", "dtype": "bfloat16", "seed": 7,
                                      "gpu_memory_utilization": 0.25, "max_model_len": 2048, "enforce_eager": True,
                                      "enable_prefix_caching": True}


@pytest.mark.parametrize(("top_k", "expected"), [(0, -1), (20, 20)])
def test_sampling_parameters_map_onto_vllm(top_k, expected):
    engine = vllm_engine()
    engine.generate([[10, 11], [12]], SamplingParams(temperature=1.1, top_p=0.95, top_k=top_k, max_new_tokens=9),
                    torch.Generator().manual_seed(0))
    (first_prompt, first), (second_prompt, second) = engine.llm.requests
    assert (first_prompt, second_prompt) == ([10, 11], [12])
    for params in (first, second):
        assert {k: v for k, v in params.items() if k != "seed"} == {
            "n": 1, "temperature": 1.1, "top_p": 0.95, "top_k": expected, "max_tokens": 9,
            "stop_token_ids": [EOS], "detokenize": False}
    assert isinstance(first["seed"], int) and first["seed"] != second["seed"]  # one seed per request


def test_eos_is_kept_once_whether_or_not_vllm_returns_it():
    engine = vllm_engine()
    prompts = [[10 + i] for i in range(16)]
    sampling = SamplingParams(max_new_tokens=8)
    with_stop = engine.generate(prompts, sampling, torch.Generator().manual_seed(5))
    engine.llm.keep_stop_token = False
    without_stop = engine.generate(prompts, sampling, torch.Generator().manual_seed(5))
    assert with_stop.completion_ids == without_stop.completion_ids
    assert any(with_stop.finished) and not all(with_stop.finished)
    assert engine._trim([5, 6, EOS, 7, EOS], "stop") == ([5, 6, EOS], True)
    assert engine._trim([5, 6], "length") == ([5, 6], False)


def test_weight_sync_sends_the_merged_lora_weights_under_base_names():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    base_names = set(tiny_model().state_dict())
    engine = vllm_engine(model)
    engine.update_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)  # an "optimizer step" on the adapter
    engine.update_weights()
    first, second = engine.llm.model.loads
    assert set(first) == set(second) == base_names
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    assert torch.equal(first[q_proj], layer.base_layer.weight)  # B = 0 at the start: the base weight
    expected = layer.base_layer.weight + layer.get_delta_weight("default")
    assert torch.allclose(second[q_proj], expected) and not torch.equal(second[q_proj], first[q_proj])
    assert all(torch.equal(second[k], v) for k, v in merged_state_dict(model).items())
    assert not model.get_base_model().model.layers[0].self_attn.q_proj.merged  # the training model is untouched


def test_missing_vllm_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(ImportError, match=r"pip install 'atesd\[vllm\]'.*rollout.engine=hf"):
        VLLMEngine(tiny_model(), "/models/base", eos_token_id=EOS, dtype="float32", seed=0,
                   gpu_memory_utilization=0.3, max_model_len=None, enforce_eager=False)


@pytest.mark.slow
def test_trainer_syncs_vllm_before_every_step(tiny_config, tmp_path, monkeypatch):
    from atesd.train.base_model import base_model_path
    from atesd.train.trainer import Trainer

    FakeLLM.instances.clear()
    monkeypatch.setattr(vllm_module, "import_vllm", lambda: FAKE_VLLM)
    config = tiny_config(tmp_path, "rollout.engine=vllm", "model.lora={r: 2, alpha: 8}", "train.steps=2",
                         "train.lr=5e-2")
    trainer = Trainer(config)
    llm = FakeLLM.instances[-1]
    assert llm.init_kwargs["model"] == base_model_path(config)  # vLLM loads the base model from disk
    trainer.train_step()
    after_first_step = merged_state_dict(trainer.unwrapped)
    trainer.train_step()
    assert len(llm.model.loads) == 2
    assert all(torch.equal(llm.model.loads[1][k], v) for k, v in after_first_step.items())
    assert any(not torch.equal(llm.model.loads[0][k], llm.model.loads[1][k]) for k in after_first_step)
    assert len(llm.requests) == 2 * config.train.batch_size
