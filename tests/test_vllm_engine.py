"""The rollout-engine contract, for the HF engine and for the vLLM engine driven through a stand-in that follows the
vLLM API as the real engine showed it (tests/vllm_stand_in.py; the same behaviour against vLLM itself is
tests/test_vllm_real.py, in ``make test-vllm``): the version pin, the engine's arguments on the CPU build,
sampling-parameter mapping, EOS trimming, seeding, the weight sync before each step's rollouts (vLLM's
``reload_weights`` for full weights, a new LoRA request per sync for an adapter, or the adapter merged), and the sync
guard that catches weights or an adapter that never arrived."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
import vllm_stand_in
from transformers import AutoModelForCausalLM

from atesd.config.engines import VLLMConfig
from atesd.errors import UserError
from atesd.models.export import merged_state_dict
from atesd.models.tiny import build_char_tokenizer, build_tiny_model
from atesd.rollout import HFGenerateEngine, SamplingParams
from atesd.rollout.sync_check import WeightSyncError
from atesd.rollout.vllm import VLLM_REQUIREMENT, VLLMEngine, VLLMUnavailableError, supported_version, trimmed
from atesd.train.problems import step_seed

EOS = 2
VOCAB = 101
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def stand_in(monkeypatch):
    return vllm_stand_in.install(monkeypatch)


@pytest.fixture
def base_dir(tmp_path) -> Path:
    """The tiny model and its tokenizer on disk: the base model vLLM loads."""
    tokenizer = build_char_tokenizer()
    tiny_model().save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def tiny_model() -> torch.nn.Module:
    tokenizer = build_char_tokenizer()
    assert tokenizer.eos_token_id == EOS and len(tokenizer) == VOCAB
    return build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                            intermediate_size=64, max_positions=128, seed=0)


def tiny_lora_model() -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(tiny_model(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))


def train_adapter(model: torch.nn.Module) -> None:
    """An "optimizer step" on the adapter that moves the adapted model measurably away from the base model."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.5)


def vllm_engine(base: Path, model: torch.nn.Module | None = None, **settings) -> VLLMEngine:
    settings = {"gpu_memory_utilization": 0.25, "max_model_len": 2048, "enforce_eager": True, **settings}
    return VLLMEngine(model or tiny_model(), str(base), VLLMConfig(**settings),
                      eos_token_id=EOS, dtype="bfloat16", seed=7)


PROMPTS = [[10, 11, 12], [13], [14, 15, 16, 17, 18], [19, 20]]


# ------------------------------------------------------------------------------------ the shared contract

@pytest.mark.parametrize("kind", ["hf", "vllm"])
def test_engine_contract(kind, stand_in, base_dir):
    engine = HFGenerateEngine(tiny_model(), pad_token_id=0, eos_token_id=EOS, batch_size=3) if kind == "hf" \
        else vllm_engine(base_dir)
    engine.update_weights()
    sampling = SamplingParams(temperature=1.0, top_p=0.95, top_k=20, max_new_tokens=12)
    out = engine.generate(PROMPTS, sampling, torch.Generator().manual_seed(0))
    assert out.prompt_ids == PROMPTS
    assert len(out.completion_ids) == len(out.finished) == len(PROMPTS)
    for ids, finished in zip(out.completion_ids, out.finished):
        assert 0 < len(ids) <= 12 + 1  # a stop token vLLM left out is put back
        assert (EOS in ids) == finished
        if finished:
            assert ids.index(EOS) == len(ids) - 1
    again = engine.generate(PROMPTS, sampling, torch.Generator().manual_seed(0))
    other = engine.generate(PROMPTS, sampling, torch.Generator().manual_seed(1))
    assert again.completion_ids == out.completion_ids
    assert other.completion_ids != out.completion_ids


# ------------------------------------------------------------------------------------ vLLM specifics

def test_vllm_engine_is_built_colocated_with_the_configured_settings(stand_in, base_dir, tmp_path):
    engine = vllm_engine(base_dir)  # on a GPU: vLLM's own defaults
    assert engine.llm.init_kwargs == {
        "model": str(base_dir), "tokenizer": None, "trust_remote_code": False, "tensor_parallel_size": 1,
        "dtype": "bfloat16", "seed": 7, "gpu_memory_utilization": 0.25, "max_model_len": 2048,
        "enforce_eager": True, "enable_prefix_caching": True}
    on_gpu = VLLMEngine(tiny_model(), str(base_dir), VLLMConfig(), eos_token_id=EOS, dtype="bfloat16",
                        seed=step_seed(3, 0))  # a 63-bit seed, folded into the 32 bits vLLM takes
    assert on_gpu.llm.init_kwargs["seed"] == step_seed(3, 0) % 2**32
    assert on_gpu.llm.init_kwargs["enforce_eager"] is False
    # The CPU build: no chunked prefill (a seeded request prefilled in chunks crashes it), a whole prompt per step,
    # a KV cache of 1 GiB unless kv_cache_gib says otherwise, eager, and only the head sizes it serves.
    stand_in.Platform.cpu = True
    with pytest.raises(UserError, match="vLLM's CPU build serves attention head sizes 32, 64, .* has 16: use the hf"):
        vllm_engine(base_dir)
    wide = wide_base_dir(tmp_path)
    assert VLLMEngine(tiny_model(), str(wide), VLLMConfig(), eos_token_id=EOS, dtype="bfloat16", seed=7
                      ).llm.init_kwargs == {
        "model": str(wide), "tokenizer": None, "trust_remote_code": False, "tensor_parallel_size": 1,
        "dtype": "bfloat16", "seed": 7, "gpu_memory_utilization": 0.3, "max_model_len": None,
        "enforce_eager": True, "enable_prefix_caching": True, "kv_cache_memory_bytes": 2**30,
        "enable_chunked_prefill": False, "max_num_batched_tokens": 2048}
    assert VLLMEngine(tiny_model(), str(wide), VLLMConfig(kv_cache_gib=2), eos_token_id=EOS, dtype="bfloat16",
                      seed=0).llm.init_kwargs["kv_cache_memory_bytes"] == 2 * 2**30
    # The sync guard's tolerance follows the weights' dtype unless it is set (measured gaps: docs/scaling.md).
    tolerances = [VLLMEngine(tiny_model(), str(wide), VLLMConfig(**settings), eos_token_id=EOS, dtype=dtype,
                             seed=0).sync_check.tolerance
                  for dtype, settings in [("float32", {}), ("bfloat16", {}),
                                          ("float32", {"sync_check_tolerance": 0.5})]]
    assert tolerances == [1e-3, 0.1, 0.5]


def wide_base_dir(tmp_path: Path) -> Path:
    """A tiny model whose heads are 32 wide, a size vLLM's CPU build serves."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                             intermediate_size=64, max_positions=128, seed=0)
    model.save_pretrained(tmp_path / "wide")
    tokenizer.save_pretrained(tmp_path / "wide")
    return tmp_path / "wide"


def test_seeded_long_prompts_run_on_the_cpu_build(stand_in, tmp_path):
    stand_in.Platform.cpu = True
    wide = wide_base_dir(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(wide)
    long_prompt = [10 + i % 80 for i in range(300)]
    engine = VLLMEngine(model, str(wide), VLLMConfig(max_model_len=256 + 64), eos_token_id=EOS, dtype="float32",
                        seed=0)  # the context a step holds: max(context, 2048) tokens
    out = engine.generate([long_prompt] * 2, SamplingParams(max_new_tokens=2), torch.Generator().manual_seed(0))
    assert len(out.completion_ids) == 2
    chunked = stand_in.LLM(str(wide), max_num_batched_tokens=256)  # vLLM's default: prefill in chunks
    with pytest.raises(RuntimeError, match="CPU Generator does not use offset"):
        chunked.generate([{"prompt_token_ids": long_prompt}], stand_in.SamplingParams(seed=1, max_tokens=2))


@pytest.mark.parametrize("top_k", [0, 20])
def test_sampling_parameters_map_onto_vllm(top_k, stand_in, base_dir):
    engine = vllm_engine(base_dir)
    engine.generate([[10, 11], [12]], SamplingParams(temperature=1.1, top_p=0.95, top_k=top_k, max_new_tokens=9),
                    torch.Generator().manual_seed(0))
    (first_prompt, first, _), (second_prompt, second, _) = engine.llm.requests
    assert (first_prompt, second_prompt) == ([10, 11], [12])
    for params in (first, second):
        assert (params.n, params.temperature, params.top_p, params.top_k, params.max_tokens, params.stop_token_ids,
                params.detokenize) == (1, 1.1, 0.95, top_k, 9, [EOS], False)  # top_k 0: no top-k in vLLM too
    assert isinstance(first.seed, int) and first.seed != second.seed  # one seed per request


def test_eos_is_kept_once_whether_or_not_vllm_returns_it(stand_in, base_dir):
    engine = vllm_engine(base_dir)
    prompts = [[10 + i] for i in range(16)]
    sampling = SamplingParams(max_new_tokens=8)
    with_stop = engine.generate(prompts, sampling, torch.Generator().manual_seed(5))
    engine.llm.keep_stop_token = False
    without_stop = engine.generate(prompts, sampling, torch.Generator().manual_seed(5))
    assert with_stop.completion_ids == without_stop.completion_ids
    assert trimmed([5, 6, EOS, 7, EOS], "stop", EOS) == ([5, 6, EOS], True)
    assert trimmed((5, 6), "length", EOS) == ([5, 6], False)
    assert trimmed((5, 6), "stop", EOS) == ([5, 6, EOS], True)


def test_full_weights_go_through_vllms_reload_path(stand_in, base_dir):
    model = tiny_model()
    engine = vllm_engine(base_dir, model)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.add_(1.0)
    engine.update_weights()
    (loaded,) = engine.llm.worker.loads
    assert set(loaded) == set(model.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    assert engine.lora_request is None and engine.llm.prefix_cache_resets == 1  # nothing cached is reused
    with pytest.raises(AttributeError, match="weight_loader"):  # why: the model's own loader fails after loading
        engine.llm.apply_model(lambda vllm_model: vllm_model.load_weights(model.state_dict().items()))


def test_lora_merged_weights_sync(stand_in, base_dir):
    model = tiny_lora_model()
    base_names = set(tiny_model().state_dict())
    engine = vllm_engine(base_dir, model, lora="merge")
    engine.update_weights()
    train_adapter(model)
    engine.update_weights()
    first, second = engine.llm.worker.loads
    assert set(first) == set(second) == base_names
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    assert torch.equal(first[q_proj], layer.base_layer.weight)  # B = 0 at the start: the base weight
    expected = layer.base_layer.weight + layer.get_delta_weight("default")
    assert torch.allclose(second[q_proj], expected) and not torch.equal(second[q_proj], first[q_proj])
    assert all(torch.equal(second[k], v) for k, v in merged_state_dict(model).items())
    assert not layer.merged  # the training model is untouched
    assert engine.llm.prefix_cache_resets == 2


def test_lora_adapter_sync_serves_a_new_request_per_sync(stand_in, base_dir):
    model = tiny_lora_model()
    engine = vllm_engine(base_dir, model)  # lora: request, the default
    assert engine.llm.init_kwargs["enable_lora"] and engine.llm.init_kwargs["max_lora_rank"] == 8
    prompts = [list(range(10, 30))]
    engine.update_weights()
    first = engine.lora_request
    engine.generate(prompts, SamplingParams(max_new_tokens=4), torch.Generator().manual_seed(0))
    train_adapter(model)
    engine.update_weights()
    second = engine.lora_request
    out = engine.generate(prompts, SamplingParams(max_new_tokens=4), torch.Generator().manual_seed(0))
    assert (first.lora_int_id, second.lora_int_id) == (1, 2) and not engine.llm.worker.loads  # base never reloaded
    assert not Path(first.lora_path).exists() and (Path(second.lora_path) / "adapter_config.json").is_file()
    assert engine.llm.requests[-1][2] == second and out.sync_gap is not None and out.sync_gap < 1e-4


# ------------------------------------------------------------------------------------ the sync guard

def test_the_sync_guard_passes_a_sync_and_catches_an_adapter_that_never_arrived(stand_in, base_dir):
    # The tiny model is near uniform: its trained adapter moves the prompt's log-probs by about 0.1 nats per
    # token, a synced float32 stand-in by about 1e-7; the tolerance sits between them.
    model = tiny_lora_model()
    train_adapter(model)
    sampling = SamplingParams(max_new_tokens=4)
    prompts = [list(range(10, 40)), [13]]
    engine = vllm_engine(base_dir, model, sync_check_tokens=16, sync_check_tolerance=0.05)
    engine.update_weights()
    checked_out = engine.generate(prompts, sampling, torch.Generator().manual_seed(0))  # checked: it arrived
    assert 0 <= checked_out.sync_gap < 1e-4
    checked = engine.llm.requests[0]
    assert checked[0] == prompts[0][:16] and checked[1].prompt_logprobs is not None
    engine.generate(prompts, sampling, torch.Generator().manual_seed(0))
    assert len(engine.llm.requests) == 1 + 2 * len(prompts)  # once per sync, not per call
    dropped = vllm_engine(base_dir, model, sync_check_tokens=16, sync_check_tolerance=0.05)
    dropped.llm.ignore_loras = True  # the adapter never reaches vLLM's model
    dropped.update_weights()
    with pytest.raises(WeightSyncError, match=r"after weight sync 1, vLLM's log-probs of 15 prompt tokens differ .*"
                       r"adapter: rollouts would sample the base model.*rollout\.vllm\.sync_check=false"):
        dropped.generate(prompts, sampling, torch.Generator().manual_seed(0))
    assert len(dropped.llm.requests) == 1  # stopped before any rollout


def test_the_sync_guard_measures_rounding_as_small_and_a_dropped_adapter_as_large(stand_in, base_dir):
    from atesd.rollout.sync_check import SyncCheck
    from atesd.rollout.vllm import served_logprobs

    model = tiny_lora_model()
    engine = vllm_engine(base_dir, model, sync_check=False, lora="merge")
    train_adapter(model)
    prompt = list(range(10, 40))
    check = SyncCheck(tokens=64, tolerance=0.05)

    def gap() -> float:
        return check.verify(lambda ids: served_logprobs(stand_in, engine.llm, ids, engine.lora_request), model,
                            prompt, sync=1)

    engine.update_weights()
    assert gap() < 1e-4  # float32 on both sides: the same model
    engine.llm.worker.model.load_state_dict(tiny_model().state_dict())  # vLLM back on the base weights
    with pytest.raises(WeightSyncError) as caught:
        gap()
    assert float(re.search(r"by (\S+) nats", str(caught.value))[1]) > 0.05


def test_the_sync_guard_can_be_turned_off(stand_in, base_dir):
    model = tiny_lora_model()
    engine = vllm_engine(base_dir, model, sync_check=False)
    train_adapter(model)
    engine.llm.ignore_loras = True
    engine.update_weights()
    engine.generate(PROMPTS, SamplingParams(max_new_tokens=4), torch.Generator().manual_seed(0))
    assert all(params.prompt_logprobs is None for _, params, _ in engine.llm.requests)


# ------------------------------------------------------------------------------------ the version pin

def test_missing_vllm_says_how_to_install_it(monkeypatch, base_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(VLLMUnavailableError, match=r"pip install 'atesd\[vllm\]'.*rollout.engine=hf"):
        vllm_engine(base_dir)


@pytest.mark.parametrize("version", ["0.10.2", "0.24.1", "0.35.0", "1.0.0", "unknown"])
def test_a_vllm_outside_the_pin_is_refused_in_one_line(version, stand_in, monkeypatch, base_dir):
    monkeypatch.setattr(stand_in, "__version__", version)
    with pytest.raises(VLLMUnavailableError) as caught:
        vllm_engine(base_dir)
    message = str(caught.value)
    assert f"vLLM {version} is installed; atesd supports {VLLM_REQUIREMENT}" in message and "\n" not in message
    assert isinstance(caught.value, ImportError)


def test_the_pin_is_the_extra_of_pyproject():
    extra = re.search(r'^vllm = \["(.+)"\]$', (REPO_ROOT / "pyproject.toml").read_text(), re.MULTILINE)[1]
    assert extra == VLLM_REQUIREMENT
    assert all(supported_version(v) for v in ["0.25.0", "0.32.0", "0.33.0", "0.34.0", "0.34.1.dev3+gabc"])
    assert not any(supported_version(v) for v in ["0.16.0", "0.24.1", "0.35.0", "0.8.5", "2.0"])


def test_the_stand_in_refuses_what_the_pinned_api_refuses(stand_in, base_dir):
    with pytest.raises(TypeError):
        stand_in.SamplingParams(max_new_tokens=4)  # vLLM's name is max_tokens
    with pytest.raises(TypeError):
        stand_in.LLM(str(base_dir), max_seq_len=16)  # and max_model_len
    with pytest.raises(ValueError, match="max_lora_rank"):
        stand_in.LLM(str(base_dir), enable_lora=True, max_lora_rank=2)
    with pytest.raises(ValueError, match="Seed must be between 0 and 2"):
        stand_in.LLM(str(base_dir), seed=2**40)


@pytest.mark.slow
def test_trainer_syncs_and_checks_vllm_before_every_step(tiny_config, tmp_path, stand_in):
    from atesd.train.base_model import base_model_path
    from atesd.train.recipe import Trainer

    config = tiny_config(tmp_path, "rollout.engine=vllm", "model.lora={r: 2, alpha: 8}", "train.steps=2",
                         "train.lr=5e-2", "rollout.vllm.lora=merge")
    trainer = Trainer(config)
    llm = stand_in.LLM.instances[-1]
    assert llm.init_kwargs["model"] == base_model_path(config)  # vLLM loads the base model from disk
    assert 0 <= llm.init_kwargs["seed"] < 2**32  # the run's 63-bit seed, folded
    records = [trainer.train_step()]
    after_first_step = merged_state_dict(trainer.unwrapped)
    records.append(trainer.train_step())
    trainer.release()
    loads = llm.worker.loads
    assert len(loads) == 2
    assert all(torch.equal(loads[1][k], v) for k, v in after_first_step.items())
    assert any(not torch.equal(loads[0][k], loads[1][k]) for k in after_first_step)
    checks = [params for _, params, _ in llm.requests if params.prompt_logprobs is not None]
    assert len(checks) == 2  # one sync guard per step
    assert len(llm.requests) == 2 * config.train.batch_size + len(checks)
    assert all(0 <= record["sync_gap"] < 1e-4 for record in records)  # logged each step: float32 on both sides
