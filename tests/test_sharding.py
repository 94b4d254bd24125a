"""What `atesd.train.sharding` decides without a second process: which accelerate FSDP settings it honours or
refuses, and, in a one-process gloo group, that a vLLM weight sync of a sharded LoRA model streams the merged
weights one FSDP unit at a time, equal to `merged_state_dict` of the unsharded model, that the sync guard scores
the sharded model against vLLM, and that HF generate runs with every parameter gathered and leaves them sharded.
(Two processes: tests/test_fsdp.py.)"""

from __future__ import annotations

import contextlib
import copy
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from atesd.config import ConfigError
from atesd.models.export import merged_state_dict
from atesd.models.tiny import build_char_tokenizer, build_tiny_model
from atesd.rollout import HFGenerateEngine, SamplingParams
from atesd.train.sharding import Sharding, ShardingSettings, settings_from_plugin


def plugin(**changes) -> SimpleNamespace:
    """accelerate's FSDP plugin as configs/accelerate/fsdp.yaml makes it, with `changes`."""
    from torch.distributed.fsdp import OffloadPolicy

    def transformer_auto_wrap_policy():  # what accelerate puts there for TRANSFORMER_BASED_WRAP
        raise AssertionError("never called")

    settings = {"fsdp_version": 2, "auto_wrap_policy": transformer_auto_wrap_policy, "cpu_offload": OffloadPolicy(),
                "activation_checkpointing": False, "cpu_ram_efficient_loading": False,
                "state_dict_type": SimpleNamespace(name="FULL_STATE_DICT"), "mixed_precision_policy": None,
                "reshard_after_forward": True, "transformer_cls_names_to_wrap": None}
    return SimpleNamespace(**{**settings, **changes})


def test_the_shipped_settings_are_accepted():
    assert settings_from_plugin(plugin(), "no") == ShardingSettings(reshard_after_forward=True, layer_classes=())
    assert settings_from_plugin(plugin(transformer_cls_names_to_wrap=["Qwen3DecoderLayer"]), "no").layer_classes == \
        ("Qwen3DecoderLayer",)


@pytest.mark.parametrize(("changes", "mixed_precision", "message"), [
    ({"fsdp_version": 1}, "no", "set fsdp_version: 2"),
    ({"auto_wrap_policy": None}, "no", "set TRANSFORMER_BASED_WRAP"),
    ({"activation_checkpointing": True}, "no", "model.gradient_checkpointing"),
    ({"cpu_ram_efficient_loading": True}, "no", "fsdp_cpu_ram_efficient_loading"),
    ({"state_dict_type": SimpleNamespace(name="SHARDED_STATE_DICT")}, "no", "FULL_STATE_DICT"),
    ({}, "bf16", "model.dtype"),
])
def test_unsupported_settings_are_refused_with_the_setting_to_change(changes, mixed_precision, message):
    with pytest.raises(ConfigError, match=message):
        settings_from_plugin(plugin(**changes), mixed_precision)


@pytest.fixture
def one_process_group():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def tiny_base_model():
    return build_tiny_model(build_char_tokenizer(), hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1,
                            intermediate_size=32, max_positions=64, seed=0)


def tiny_lora_model():
    from peft import LoraConfig, get_peft_model

    tokenizer = build_char_tokenizer()
    model = get_peft_model(tiny_base_model(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    with torch.no_grad():  # a non-zero update, so that merging changes the adapted weights
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    return model, tokenizer


class StreamingVLLM:
    """Stands in for `VLLMEngine`: what each sync loaded, and whether every other unit was sharded meanwhile."""

    def __init__(self, model) -> None:
        self.model, self.loaded, self.whole_at_once = model, {}, 0

    def load_weights(self, weights) -> None:
        for name, tensor in weights:
            whole = sum(not isinstance(p, DTensor) for p in self.model.parameters())
            self.whole_at_once = max(self.whole_at_once, whole)
            self.loaded[name] = tensor


def test_a_vllm_sync_streams_the_merged_weights_one_unit_at_a_time(one_process_group):
    model, _ = tiny_lora_model()
    expected = merged_state_dict(copy.deepcopy(model))
    sharding = Sharding(ShardingSettings())
    sharding.shard(model)
    engine = StreamingVLLM(model)
    sharding.rollout_engine(engine, model).update_weights()
    assert engine.loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(engine.loaded[name], tensor, rtol=0, atol=1e-6)
    layer_parameters = sum(1 for _ in model.get_decoder().layers[0].parameters())
    assert 0 < engine.whole_at_once <= layer_parameters  # never more than one unit gathered
    assert all(isinstance(p, DTensor) for p in model.parameters())


def test_the_sync_guard_checks_vllm_against_the_sharded_model(one_process_group, tmp_path, monkeypatch):
    import vllm_stand_in

    from atesd.config.engines import VLLMConfig
    from atesd.rollout.sync_check import WeightSyncError
    from atesd.rollout.vllm import VLLMEngine

    vllm_stand_in.install(monkeypatch)
    model, tokenizer = tiny_lora_model()
    tiny_base_model().save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    sharding = Sharding(ShardingSettings())
    sharding.shard(model)
    for arrives in (True, False):
        engine = VLLMEngine(model, str(tmp_path), VLLMConfig(sync_check_tolerance=0.02),
                            eos_token_id=tokenizer.eos_token_id, dtype="float32", seed=0)
        engine.llm.worker.ignore_updates = not arrives  # an adapter that never arrives leaves vLLM on the base
        rollouts = sharding.rollout_engine(engine, model)
        rollouts.update_weights()
        with contextlib.nullcontext() if arrives else pytest.raises(WeightSyncError):
            rollouts.generate([list(range(5, 40))], SamplingParams(max_new_tokens=3), torch.Generator().manual_seed(0))


def test_hf_generate_runs_gathered_and_leaves_the_model_sharded(one_process_group):
    model, tokenizer = tiny_lora_model()
    reference = copy.deepcopy(model)
    sharding = Sharding(ShardingSettings())
    sharding.shard(model)
    sampling = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=5)
    outputs = []
    for candidate in (reference, model):
        engine = HFGenerateEngine(candidate, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        if candidate is model:
            engine = sharding.rollout_engine(engine, model)
        outputs.append(engine.generate([[5, 6, 7], [8, 9]], sampling, torch.Generator().manual_seed(0)))
    assert outputs[0].completion_ids == outputs[1].completion_ids
    assert all(isinstance(p, DTensor) for p in model.parameters())
