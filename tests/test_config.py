"""Config loading: strict keys, range checks, YAML overrides, file errors, save/load round trip."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from atesd.config import Config, ConfigError, apply_override, load_config, save_config
from atesd.files import read_yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
# configs/accelerate/ holds accelerate's configs, not atesd's (tests/test_recipes.py reads them with accelerate).
CONFIG_FILES = [p for p in sorted((REPO_ROOT / "configs").rglob("*.y*ml")) if p.parent.name != "accelerate"]


def error_lines(excinfo: pytest.ExceptionInfo) -> list[str]:
    """The problems a one-line config error lists: ``invalid config (<source>): <key>: <problem>; ...``."""
    message = str(excinfo.value)
    assert "\n" not in message
    return message.split("): ", 1)[1].split("; ")


@pytest.mark.parametrize("override,key", [
    ("stepz=3", "stepz"),
    ("train.stepz=3", "train.stepz"),
    ("model.embedded.hidden_sise=8", "model.embedded.hidden_sise"),
])
def test_unknown_override_key_names_full_path(override, key):
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, [override])
    assert f"{key}: unknown key" in error_lines(excinfo)


def test_unknown_key_in_file_names_full_path_and_file(tmp_path):
    # From a file, the key path is not in the source text: the message itself must name it.
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  steps: 3\n  lr_sheduler: cosine\nmodle:\n  dtype: float32\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    lines = error_lines(excinfo)
    assert "train.lr_sheduler: unknown key" in lines
    assert "modle: unknown key" in lines
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize("value", ["1.5", "-0.1"])
def test_alpha_outside_unit_interval_is_rejected(value):
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, [f"exposure.alpha={value}"])
    matching = [line for line in error_lines(excinfo) if line.startswith("exposure.alpha:")]
    assert len(matching) == 1
    assert "than or equal to" in matching[0]


@pytest.mark.parametrize("value", ["0.0", "1.0", "0.5"])
def test_alpha_inside_unit_interval_is_accepted(value):
    assert load_config(None, [f"exposure.alpha={value}"]).exposure.alpha == float(value)


def test_out_of_range_value_names_key():
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, ["train.lr=-1.0"])
    assert any(line.startswith("train.lr:") for line in error_lines(excinfo))


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found") as excinfo:
        load_config(missing)
    assert str(missing) in str(excinfo.value)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: {steps: 3\n  lr: [\n")
    with pytest.raises(ConfigError, match="not valid YAML") as excinfo:
        load_config(path)
    assert str(path) in str(excinfo.value)


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_file_gives_defaults_with_a_warning(tmp_path, caplog, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with caplog.at_level(logging.WARNING):
        assert load_config(path) == Config()
    assert f"{path} holds no settings" in caplog.text


def test_a_key_given_twice_is_an_error_naming_file_and_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  steps: 3\n  lr: 0.1\n  steps: 5\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: not valid YAML: line 4: duplicate key 'steps' \(first "
                                          r"on line 2\)"):
        load_config(path)
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        load_config(None, ["model.student_chat_kwargs={a: 1, a: 2}"])


def test_yaml_merge_keys_are_not_duplicates():
    assert read_yaml("a: &x {b: 1}\nc:\n  <<: *x\n  b: 2\n", "text") == {"a": {"b": 1}, "c": {"b": 2}}


@pytest.mark.parametrize("value,expected", [("1e3", 1000), ("2E2", 200), ("1_000", 1000), ("1.5e3", 1500)])
def test_scientific_notation_is_a_number(value, expected):
    assert load_config(None, [f"train.steps={value}"]).train.steps == expected
    assert load_config(None, [f"train.lr={value}"]).train.lr == float(expected)


@pytest.mark.parametrize("override", ["train.lr=.inf", "train.lr=.nan", "train.max_grad_norm=.inf",
                                      "exposure.controller.lr=.nan"])
def test_no_setting_takes_a_non_finite_number(override):
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, ["exposure.policy=random", override])
    assert error_lines(excinfo) == [f"{override.split('=')[0]}: Input should be a finite number"]


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".", "", "a\\b"])
def test_the_run_name_is_one_directory_name(name):
    with pytest.raises(ConfigError, match="run.name: must be one directory name"):
        load_config(None, [f"run.name={json.dumps(name)}"])


def test_benchmarks_are_known_and_write_distinct_result_files():
    with pytest.raises(ConfigError, match="eval.benchmarks: unknown benchmark 'aime2O'"):
        load_config(None, ["eval.benchmarks=[aime2O]"])
    with pytest.raises(ConfigError, match=r"'a/test.jsonl' and 'b/test.jsonl' would write the same result files "
                                          r"\(<label>-test.json\)"):
        load_config(None, ["eval.benchmarks=[a/test.jsonl, b/test.jsonl]"])
    with pytest.raises(ConfigError, match="same result files"):
        load_config(None, ["eval.benchmarks=[aime24, aime24]"])


@pytest.mark.parametrize("bad", ["train.lr", "train.lr.x=1"])
def test_malformed_overrides(bad):
    with pytest.raises(ConfigError):
        load_config(None, [bad])


def test_overrides_parse_yaml_values():
    config = load_config(None, [
        "train.lr=1e-4",
        "eval.benchmarks=[aime24, data/a.jsonl]",
        "train.steps=7",
        "train.bf16_autocast=true",
        "run.name=null",
        "loss.clip=0.05",
        "model.teacher_chat_kwargs={enable_thinking: true}",
        "model.student_chat_kwargs.enable_thinking=false",
    ])
    assert isinstance(config.train.lr, float) and config.train.lr == 1e-4
    assert config.eval.benchmarks == ["aime24", "data/a.jsonl"]
    assert config.train.steps == 7 and isinstance(config.train.steps, int)
    assert config.train.bf16_autocast is True
    assert config.run.name is None
    assert config.loss.clip == 0.05
    assert config.model.teacher_chat_kwargs == {"enable_thinking": True}
    assert config.model.student_chat_kwargs == {"enable_thinking": False}


def test_override_value_keeps_equals_signs():
    tree: dict = {}
    apply_override(tree, "run.name=a=b")
    assert tree == {"run": {"name": "a=b"}}


def test_overrides_apply_on_top_of_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 3\n  lr: 0.5\n")
    config = load_config(path, ["train.steps=9"])
    assert (config.train.steps, config.train.lr) == (9, 0.5)


def test_save_then_load_round_trips(tmp_path):
    config = load_config(REPO_ROOT / "configs" / "embedded" / "opsd.yaml", [
        "train.lr=2.5e-5", "eval.benchmarks=[aime24, /data/x.jsonl]", "run.name=round-trip",
        "model.teacher_chat_kwargs.enable_thinking=true", "loss.top_k=5", "teacher.weights=ema",
    ])
    path = tmp_path / "saved.yaml"
    save_config(config, path)
    loaded = load_config(path)
    assert loaded == config
    assert loaded.model_dump() == config.model_dump()
    assert loaded.templates.answer_line == "Answer: \\boxed{{answer}}"


def test_defaults_round_trip(tmp_path):
    path = tmp_path / "defaults.yaml"
    save_config(Config(), path)
    assert load_config(path) == Config()


def test_config_files_exist():
    assert REPO_ROOT / "configs" / "embedded" / "opsd.yaml" in CONFIG_FILES


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[str(p.relative_to(REPO_ROOT)) for p in CONFIG_FILES])
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.method in type(config.exposure).methods


def test_sampled_token_refuses_top_k_and_clip():
    with pytest.raises(ConfigError, match="loss: top_k and clip"):
        load_config(None, ["loss.divergence=sampled_token", "loss.clip=0.05"])
    assert load_config(None, ["loss.divergence=sampled_token"]).loss.clip is None


def test_extends_merges_the_parent_file_under_the_child(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  steps: 7\n  lr: 0.5\nrun:\n  seed: 3\n")
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("extends: ../base.yaml\ntrain:\n  lr: 0.25\n")
    config = load_config(child, ["run.seed=4"])
    assert (config.train.steps, config.train.lr, config.run.seed) == (7, 0.25, 4)


def test_extends_errors_name_the_files(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing.yaml \(extended by .*child.yaml\)"):
        load_config(child)
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(loop)


def test_embedded_atesd_recipe_has_the_documented_defaults():
    config = load_config(REPO_ROOT / "configs" / "embedded" / "atesd.yaml")
    opsd = load_config(REPO_ROOT / "configs" / "embedded" / "opsd.yaml")
    assert config.method == "atesd" and config.exposure.policy == "controller"
    exposure, controller = config.exposure, config.exposure.controller
    assert (exposure.alpha_min, exposure.alpha_max, exposure.hold_steps) == (0.05, 1.0, 2)
    assert controller.hidden_sizes == [64, 64] and controller.initial_beta == (2.0, 2.0)
    assert (controller.lookahead, controller.discount, controller.teacher_grounded_weight) == (4, 0.9, 0.1)
    assert (controller.decisions_per_update, controller.lr) == (4, 1e-2)
    assert (controller.baseline, controller.baseline_window) == ("progress_trend", 16)
    assert (controller.entropy_coef, controller.entropy_target, config.data.probe_size) == (0.01, -0.5, 32)
    # everything but the exposure is OPSD's recipe
    assert config.model_dump(exclude={"method", "exposure"}) == opsd.model_dump(exclude={"method", "exposure"})
    assert controller == type(controller)()  # the file spells out the defaults of config.py


def test_a_mapping_override_merges_into_its_section():
    config = load_config(None, ["teacher.anchored_residual.anchor_alpha=0.3", "teacher.anchored_residual={}"])
    assert config.teacher.anchored_residual is not None and config.teacher.anchored_residual.anchor_alpha == 0.3
    assert load_config(None, ["teacher.anchored_residual.anchor_alpha=0.3",
                              "teacher.anchored_residual=null"]).teacher.anchored_residual is None


def _numeric_keys():
    """(overrides that select the section, dotted key) of every int or float setting of the schema, the exposure
    policies' included."""
    import typing

    from pydantic import BaseModel

    from atesd.exposure import REGISTRY
    from atesd.settings import takes_a_number_not_a_boolean

    found = []

    def walk(model, prefix, select):
        for name, field in model.model_fields.items():
            subs = [a for a in (typing.get_args(field.annotation) or (field.annotation,))
                    if isinstance(a, type) and issubclass(a, BaseModel)]
            for sub in subs:
                walk(sub, f"{prefix}{name}.", select)
            if not subs and takes_a_number_not_a_boolean(field.annotation):
                found.append((select, f"{prefix}{name}"))

    for name, model in Config.model_fields.items():
        if name != "exposure":
            for sub in [a for a in (typing.get_args(model.annotation) or (model.annotation,)) if isinstance(a, type)]:
                walk(sub, f"{name}.", ())
    for policy, settings in REGISTRY.items():
        walk(settings, "exposure.", (f"exposure.policy={policy}", *(["method=atesd"] if "atesd" in settings.methods
                                                                     else [])))
    return found


@pytest.mark.parametrize("select,key", _numeric_keys())
def test_no_number_takes_a_yaml_boolean(select, key):
    with pytest.raises(ConfigError, match=re.escape(f"{key}: a number is expected, not the boolean true")):
        load_config(None, [*select, f"{key}=on"])


# Every setting that sizes a list, a batch or a tensor allocated up front: a value far beyond any real run is refused
# (eval.seeds=1e9 used to be accepted and would have run a billion evaluations).
LIST_SIZES = ["eval.seeds", "eval.num_samples", "eval.batch_size", "eval.max_problems", "eval.max_new_tokens",
              "rollout.max_new_tokens", "train.batch_size", "train.micro_batch_size", "train.keep_checkpoints",
              "grpo.group_size", "data.probe_size", "data.task.train_size", "data.task.test_size",
              "model.embedded.health_problems", "model.embedded.health_samples", "model.embedded.warm_start_batch_size",
              "model.embedded.hidden_size", "model.embedded.num_layers", "model.embedded.max_positions",
              "eval.vllm.tensor_parallel_size", "eval.vllm.max_model_len"]
CONTROLLER_SIZES = ["lookahead", "decisions_per_update", "baseline_window", "credited_problems",
                    "style_probe_samples"]


@pytest.mark.parametrize("select,key", [((), key) for key in LIST_SIZES]
                         + [(("method=atesd", "exposure.policy=controller"), f"exposure.controller.{key}")
                            for key in CONTROLLER_SIZES]
                         + [(("exposure.policy=seele",), f"exposure.seele.{key}")
                            for key in ("history", "min_points", "population_window")])
def test_a_number_that_sizes_a_list_is_bounded(select, key):
    with pytest.raises(ConfigError, match=re.escape(f"{key}: Input should be less than or equal to")):
        load_config(None, [*select, f"{key}=1000000000"])


def test_the_controllers_network_is_bounded():
    with pytest.raises(ConfigError, match="exposure.controller.hidden_sizes"):
        load_config(None, ["method=atesd", "exposure.policy=controller",
                           f"exposure.controller.hidden_sizes={[8] * 17}"])
    with pytest.raises(ConfigError, match="exposure.controller.hidden_sizes"):
        load_config(None, ["method=atesd", "exposure.policy=controller", "exposure.controller.hidden_sizes=[1000000]"])


@pytest.mark.parametrize("overrides,message", [
    # AR-OPD's anchor at or above the exposure: OPSD at the cost of a second forward, or the method inverted
    (["teacher.anchored_residual={}", "exposure.alpha=0.5"],
     "anchor_alpha 0.5 is not below the exposure (exposure.policy fixed gives 0.5)"),
    (["teacher.anchored_residual.anchor_alpha=0.9", "exposure.policy=random", "exposure.alpha_max=0.8"],
     "anchor_alpha 0.9 is not below the exposure (exposure.policy random gives from 0.05 to 0.8)"),
    # a policy that can choose an exposure below the anchor inverts AR-OPD at those steps
    (["teacher.anchored_residual={}", "exposure.policy=random"], "random gives from 0.05 to 1"),
    (["teacher.anchored_residual={}", "exposure.policy=mismatch_ladder"], "mismatch_ladder gives from 0 to 1"),
    (["method=atesd", "exposure.policy=controller", "teacher.anchored_residual={}"], "controller gives from 0.05 to 1"),
    (["teacher.anchored_residual={}", "exposure.policy=schedule"], "schedule gives from 0.05 to 1"),
    # a SEELE whose population curve never forms draws at random
    (["exposure.policy=seele", "exposure.seele.population_window=3"], "population_window 3 below min_points 4"),
    # a setting that only changes the warm start's cache key
    (["model.embedded.teacher_answer_above=0.5"], "teacher_answer_above places the examples teacher_answer_share"),
    (["model.embedded.teacher_leap_above=0.25"], "teacher_leap_above places the examples teacher_leap_share"),
    # decode-loop options that contradict each other
    (["rollout.loop.compile=true"], "compile: true runs a static cache and keeps finished sequences"),
    # a rule per problem given a method without a teacher prompt
    (["exposure.policy=paint", "method=grpo"], "method 'grpo' takes exposure.policy fixed, not 'paint'"),
    # settings the other branch reads: divergences, teachers, the controller's modes, a control run that learns nothing
    (["loss.divergence=reverse_kl", "loss.beta=0.3"], "divergence 'reverse_kl' does not read it"),
    (["teacher.ema_decay=0.9"], "weights 'initial' do not read it"),
    (["method=atesd", "exposure.policy=controller", "exposure.controller.credited_problems=4"],
     "controller.credited_problems: not read by the batch-level controller"),
    (["method=atesd", "exposure.policy=controller", "exposure.per_problem=true", "exposure.controller.baseline=none"],
     "controller.baseline: not read by the controller per problem"),
    (["method=atesd", "exposure.policy=controller", "exposure.per_problem=true", "exposure.controller.credit=alignment",
      "exposure.controller.lookahead=2"], "controller.lookahead: not read by the controller per problem"),
    (["exposure.policy=random", "exposure.controller.lr=0.1", "exposure.controller.hidden_sizes=[8]"],
     "controller.hidden_sizes, controller.lr: not read by random exposure"),
    (["model.embedded.num_heads=3"], "num_heads (3) must divide hidden_size"),
])
def test_settings_accepted_without_effect_are_refused_at_start(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, ["model.embedded.teacher_answer_share=0", *overrides])
