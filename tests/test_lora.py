"""LoRA through peft on the tiny embedded model: adapter-only training, exact resume, the `initial` teacher as
the adapter disabled, merged weights, gradient checkpointing, and a wrong target module."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from atesd.models.export import merged_state_dict
from atesd.models.loading import load_training_model
from atesd.train.base_model import base_model_path, load_model
from atesd.train.metrics import read_metrics
from atesd.train.recipe import Trainer

pytestmark = pytest.mark.slow  # trains models end to end (`pytest -m "not slow"` skips it)

# Dropout draws random numbers, so exact resume also covers the RNG; alpha/r = 4 makes updates visible.
LORA = ("model.lora={r: 4, alpha: 16, dropout: 0.1, target_modules: [q_proj, v_proj, up_proj]}",)
TIMINGS = {"rollout_time", "teacher_time", "update_time", "probe_time", "exposure_time", "step_time"}


def test_lora_run_resumes_exactly_and_checkpoints_only_the_adapter(tiny_config, tmp_path):
    common = (*LORA, "train.checkpoint_every=2", "train.lr=1e-2", "train.warmup_steps=3")
    run_a = Trainer(tiny_config(tmp_path, "run.name=a", "train.steps=4", *common))
    start = run_a.trainable_state()
    run_a.train()
    Trainer(tiny_config(tmp_path, "run.name=b", "train.steps=2", *common)).train()
    run_b = Trainer(tiny_config(tmp_path, "run.name=b", "train.steps=4", *common), resume=True)
    assert run_b.step == 2
    run_b.train()

    state_a, state_b = run_a.trainable_state(), run_b.trainable_state()
    assert set(state_a) == set(start) and all("lora_" in name for name in state_a)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert any(not torch.equal(state_a[k], start[k]) for k in state_a)
    rows_a, rows_b = (read_metrics(run.run_dir / "metrics.jsonl") for run in (run_a, run_b))
    assert [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows_a] == \
           [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows_b]
    assert set(load_file(str(run_a.run_dir / "checkpoints" / "step-0000004" / "model.safetensors"))) == set(start)


def test_initial_teacher_is_the_base_model_with_the_adapter_disabled(tiny_config, tmp_path):
    config = tiny_config(tmp_path, *LORA, "train.steps=2", "train.lr=5e-2", "run.name=teacher")
    trainer = Trainer(config)
    trainer.train()
    base, _ = load_model(config)
    trainer.unwrapped.eval()  # no LoRA dropout
    ids = torch.tensor([trainer.prompts.student(trainer.train_problems[0])])
    with torch.no_grad(), trainer.teacher.weights.scoring() as teacher_model:
        assert trainer.teacher.weights.copy is None and teacher_model is trainer.unwrapped
        teacher_logits = teacher_model(ids).logits
    with torch.no_grad():
        assert torch.allclose(teacher_logits, base(ids).logits, atol=1e-6)
        student_logits = trainer.unwrapped(ids).logits
    assert not torch.allclose(student_logits, teacher_logits, atol=1e-4)

    # the merged weights are the student: as base-model weights, with no adapter names
    merged = merged_state_dict(trainer.unwrapped)
    assert set(merged) == set(base.state_dict())
    base.load_state_dict(merged)
    with torch.no_grad():
        assert torch.allclose(base(ids).logits, student_logits, atol=1e-5)
    # and the exported final model, loaded as an adapter directory, is that model too
    exported, _ = load_model(config, str(trainer.run_dir / "final_model"))
    with torch.no_grad():
        assert torch.allclose(exported(ids).logits, student_logits, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config, tmp_path):
    def adapter_grads(*overrides: str) -> dict[str, torch.Tensor]:
        config = tiny_config(tmp_path, "model.lora={r: 4, alpha: 16, dropout: 0.0}", *overrides)
        torch.manual_seed(0)  # the adapters' random initialisation
        model, tokenizer = load_training_model(config, base_model_path(config))
        model.train()
        ids = torch.tensor([tokenizer("Compute 1+2-3.", add_special_tokens=False)["input_ids"]])
        # LoRA's B starts at zero, which would make A's gradient zero: give B a value.
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.1)
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain = adapter_grads()
    checkpointed = adapter_grads("model.gradient_checkpointing=true")
    assert set(plain) == set(checkpointed)
    bad = [k for k in plain if not torch.allclose(plain[k], checkpointed[k], atol=1e-6)]
    assert not bad, bad
    assert all(g.abs().sum() > 0 for g in plain.values()), [k for k, g in plain.items() if g.abs().sum() == 0]


def test_unknown_target_module_names_the_key_and_the_layers(tiny_config, tmp_path):
    config = tiny_config(tmp_path, "model.lora={target_modules: [q_proj, c_attn]}")
    with pytest.raises(ValueError, match=r"model\.lora\.target_modules: \['c_attn'\].*'down_proj'"):
        load_training_model(config, base_model_path(config))


def test_full_fine_tuning_keeps_a_frozen_copy_as_initial_teacher(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "run.name=full"))
    assert trainer.teacher.weights.copy is not None
    assert all(not p.requires_grad for p in trainer.teacher.weights.copy.parameters())
    assert all(p.requires_grad for p in trainer.unwrapped.parameters())

