"""No setting is accepted without effect, over the whole schema (docs/reliability.md#settings-accepted-without-effect).

Every settings key is enumerated from the config models (each exposure policy's under that policy, AR-OPD's and
LoRA's with their section on). For each, a 2-step run of the tiny embedded model with the key changed must compute
something else than the same run without the change (its metrics.jsonl but the timings, decisions.jsonl, the
evaluations along training, the final weights), or the change must be refused (or warned about) at start. The keys
that change only speed, logging or where files go, and those this run cannot exercise, are in `ALLOWED` with the
reason; docs/reliability.md lists them.
"""

from __future__ import annotations

import json
import logging
import re
import typing
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import annotated_types
import pytest
from pydantic import BaseModel

from atesd.config import Config, ConfigError
from atesd.exposure import REGISTRY
from atesd.train.recipe import Trainer

pytestmark = pytest.mark.slow  # about 200 tiny runs

# The run every change is compared with: 2 updates, evaluated before and after them (so eval.* keys act).
RUN = ("train.steps=2", "train.checkpoint_every=1", "eval.every=1", "eval.max_problems=2", "eval.num_samples=1",
       "eval.max_new_tokens=4", "eval.batch_size=2", "eval.teacher_alpha=null")
TIMING = re.compile(r"(_time|_seconds|_s)$")
# Changes that would not bind in a tiny run (whose losses and gradients are small) at the value `changed_value` picks.
VALUES = {"loss.clip": 1e-6, "train.max_grad_norm": 1e-4, "train.warmup_steps": 2,
          "teacher.anchored_residual.residual_clip": 1e-3, "exposure.clip": 1e-4,  # the per-token gates' clip
          # the untrained tiny teacher's NLL of a reference is about 4.6 nats: the gate's defaults show it everything
          "exposure.target_nll": 4.65, "exposure.rate": 0.05,
          # a reward is one rollout's grade, 0 or 1: thresholds in (0, 1] decide alike (AdaBackConfig says so)
          "exposure.adaback.threshold": 0.0,
          # the population's window over the 16 attempts a 12-step run of 32 problems completes
          "exposure.seele.population_window": 5,
          # the parity grader's accuracy near 0.5 already puts the population's alpha for a* = 0.5 at alpha_min
          "exposure.seele.target_accuracy": 0.9,
          # bounds and windows that bind in a 12-step run of 4 problems a step
          "exposure.alpha_min": 0.6, "exposure.hold_steps": 1, "exposure.controller.baseline_window": 3,
          "exposure.controller.feature_clip": 0.1, "exposure.controller.credited_problems": 1,
          # the tiny teacher's mismatch rises about 1.5x from the ladder's first rung to its second
          "exposure.cap": 1.2,
          # values `changed_value` cannot make: a list, pairs
          "exposure.rungs": [0.0, 0.5, 1.0], "exposure.controller.hidden_sizes": [32],
          "exposure.controller.initial_beta": [3.0, 1.5],
          "exposure.adaback.start_bounds": [0.2, 0.6]}
# The rules per problem learn from a problem's next visit, and the controller first learns after 10 updates: their
# runs take 12 updates of 4 problems from 32, so that every problem comes back after 8.
REVISITS = ("train.steps=12", "eval.every=12", "data.task.train_size=32")

# key (or key prefix ending in ".") -> why a change of it computes the same 2-step run
ALLOWED = {
    # where files go, and what is logged besides metrics.jsonl
    "run.output_dir": "where the run directory is made",
    "run.name": "the run directory's name",
    "run.report_to": "trackers besides metrics.jsonl (logging only)",
    "model.embedded.cache_dir": "where the warm-started base model is cached",
    "train.checkpoint_every": "when checkpoints are written; resume is exact from any of them",
    "train.keep_checkpoints": "how many checkpoints are kept on disk",
    # speed only: the same numbers, computed in another order or another number of pieces
    "loss.chunk_size": "positions per chunk of the loss: the same sums (tests/test_divergence.py)",
    "train.micro_batch_size": "gradient accumulation: the same update up to float rounding, not bit-identical, "
                              "tested to tolerance in tests/test_trainer.py",
    "eval.batch_size": "prompts per generate call: the same samples (tests/test_eval_engines.py)",
    "rollout.sampler": "how the HF engine samples, not what: the same tokens (tests/test_decode.py)",
    "rollout.loop.cache": "the decode loop's cache: the same tokens (tests/test_decode.py)",
    "rollout.loop.drop_finished": "finished rows leave the batch: the same tokens (tests/test_decode.py)",
    "model.gradient_checkpointing": "recomputes activations in the backward: the same gradients",
    "train.max_consecutive_bad_steps": "when non-finite steps stop the run; a finite run never reaches it",
    "train.teacher_ref_logp_every": "when g_t is measured for the log; the fixed policy's updates never read it",
    # what this tiny run cannot exercise, and the tests that do
    "model.name_or_path": "another model: tests/test_model_loading.py, tests/test_real_model.py",
    "model.trust_remote_code": "a hub repository's own code; the embedded model has none",
    "model.chat_template": "a template for a tokenizer without one; the embedded tokenizer has its own",
    "model.student_chat_kwargs": "arguments of a chat template that reads them (Qwen3's enable_thinking); the "
                                 "embedded template reads none (tests/test_prompts.py)",
    "model.teacher_chat_kwargs": "as model.student_chat_kwargs",
    "model.lora.save_merged": "also writes final_model_merged at the end: the run computes the same",
    "model.lora.target_modules": "LoRA's layers by name; the change tried names no other layer of the tiny model",
    "data.train": "another data source: tests/test_data_sources.py, tests/test_loaders.py",
    "data.columns.": "the column names of a JSONL or datasets source; the embedded task has none",
    "data.skip_invalid_rows": "rows that cannot be read or do not fit are skipped instead of refused; the embedded "
                              "task has none (tests/test_reliability.py)",
    "data.probe_seed": "which problems of a file or dataset form the probe set; the embedded task draws its own",
    "data.answer": "how answers are graded (boxed or last number): the tiny model's rollouts are graded the same",
    "eval.benchmarks": "other benchmarks: tests/test_data_sources.py",
    "eval.engine": "vLLM evaluation: tests/test_vllm_engine.py, tests/test_vllm_real.py",
    "eval.vllm.": "vLLM's evaluation engine, used only with eval.engine: vllm",
    "rollout.engine": "vLLM rollouts: tests/test_vllm_engine.py, tests/test_vllm_real.py",
    "rollout.vllm.": "vLLM's training engine, used only with rollout.engine: vllm",
    "rollout.loop.compile": "torch.compile of the decode step, for GPUs (not bit-identical by design)",
    "train.bf16_autocast": "bf16 autocast; the CPU's float32 numbers of the tiny model round alike",
    "grpo.": "GRPO's settings act with method: grpo (tests/test_policy_losses.py, tests/test_trainer.py)",
    "model.embedded.health_": "the health check's band and sample; the tiny model's warm start skips it",
    "model.embedded.warm_start_target_accuracy": "stops the warm start early; the tiny one's 5 steps end first",
    "model.embedded.warm_start_check_every": "how often the warm start checks its target; the tiny one never does",
    "model.embedded.teacher_answer_above": "refused without teacher_answer_share (tests/test_config.py)",
    "model.embedded.teacher_leap_above": "refused without teacher_leap_share (tests/test_config.py)",
    "model.embedded.max_positions": "the model's longest sequence: a longer one computes the same short ones",
    "eval.teacher_alpha": "the teacher's row of atesd eval and atesd demo; evaluation along training evaluates the "
                          "student",
    "data.train_split": "a datasets split; the embedded task has none",
    "data.task.test_size": "the embedded benchmark's size: the run compared evaluates its first 2 problems",
    "exposure.seele.history": "a problem's own attempts kept; a problem needs min_points of them (4 epochs) "
                              "before they decide (tests/test_peer_rules.py, on a simulated learner)",
    "templates.think_open": "opens a think block for a chat template that has one (Qwen3's); the embedded one "
                            "has none",
    "train.probe_every": "how often probe_nll is measured; the fixed policy's updates never read it, and it is "
                         "logged as measured",
    # read by `atesd diagnose` only: the reward windows a control run's exposures are credited with
    "random:exposure.controller.lookahead": "diagnose's reward window (tests/test_diagnose.py)",
    "random:exposure.controller.discount": "diagnose's reward discount (tests/test_diagnose.py)",
    "random:exposure.controller.teacher_grounded_weight": "diagnose's reward weight (tests/test_diagnose.py)",
    "random:exposure.controller.progress_signal": "diagnose's progress signal; style_nll also has the run measure "
                                                  "the style probe, which changes its metrics",
}


def allowed(key: str, select: tuple[str, ...] = ()) -> bool:
    """Whether `key` is in ALLOWED, by itself or as ``policy:key`` under the policy `select` chooses."""
    policy = next((part.split("=")[1] for part in select if part.startswith("exposure.policy=")), None)
    return any(candidate == name or name.endswith((".", "_")) and candidate.startswith(name)
               for name in ALLOWED for candidate in (key, f"{policy}:{key}"))


def options(annotation: Any) -> tuple[Any, ...]:
    return typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, type(int | None)) \
        else (annotation,)


def changed_value(field: Any, default: Any) -> Any:
    """A value of the field's type other than `default`, within its bounds; None when there is none to try."""
    kinds = [kind for kind in options(field.annotation) if kind is not type(None)]
    low = next((m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)), None)
    low = next((m.gt for m in field.metadata if isinstance(m, annotated_types.Gt)), low)
    high = next((m.le for m in field.metadata if isinstance(m, annotated_types.Le)), None)
    high = next((m.lt for m in field.metadata if isinstance(m, annotated_types.Lt)), high)
    kind = kinds[0] if kinds else None
    if typing.get_origin(kind) is Literal:
        return next((value for value in typing.get_args(kind) if value != default), None)
    if kind is bool:
        return not default
    if kind is int:
        value = 2 if default is None else default + 1
        return value if high is None or value <= high else default - 1
    if kind is float:
        if default is None:
            return 0.5 if high is None or high >= 0.5 else high / 2
        value = default * 0.5 if default else 0.1
        return value if (low is None or value >= low) and (high is None or value <= high) else (default + high) / 2
    if kind is str:
        return None if default is None else f"{default} (changed)"
    return None


def leaves(model: type[BaseModel], prefix: str) -> list[tuple[str, Any, Any]]:
    """(dotted key, field, default) of every setting below `model`, sections opened."""
    found = []
    instance = model.model_construct()
    for name, field in model.model_fields.items():
        subs = [kind for kind in options(field.annotation) if isinstance(kind, type) and issubclass(kind, BaseModel)]
        if subs:
            if getattr(instance, name, None) is not None:
                found += leaves(subs[0], f"{prefix}{name}.")
            continue
        if name != "policy":
            found.append((f"{prefix}{name}", field, getattr(instance, name, field.default)))
    return found


def cases() -> list[tuple[tuple[str, ...], str, Any, Any]]:
    """(the overrides of the run compared with, the key, its field, its schema default)."""
    from atesd.exposure.rules import ProblemRule

    found = []
    for name, field in Config.model_fields.items():
        if name == "exposure":
            continue
        for kind in options(field.annotation):
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                found += [((), key, leaf, default) for key, leaf, default in leaves(kind, f"{name}.")]
    for policy, settings in REGISTRY.items():
        learns_late = isinstance(settings().build(1, 0), ProblemRule) or bool(settings().warnings(2, 32))
        select = (f"exposure.policy={policy}", *(["method=atesd"] if "atesd" in settings.methods else []),
                  *(REVISITS if learns_late else ()))
        found += [(select, key, leaf, default) for key, leaf, default in leaves(settings, "exposure.")]
        if "per_problem" in settings.model_fields:  # per problem, the controller's settings are read otherwise
            found += [((*select, "exposure.per_problem=true"), key, leaf, default)
                      for key, leaf, default in leaves(settings, "exposure.") if key.startswith("exposure.controller.")]
    teacher = type(Config().teacher).model_fields["anchored_residual"].annotation.__args__[0]
    lora = type(Config().model).model_fields["lora"].annotation.__args__[0]
    found += [(("teacher.anchored_residual={}",), f"teacher.anchored_residual.{key}", leaf, default)
              for key, leaf, default in leaves(teacher, "")]
    found += [(("model.lora={}",), f"model.lora.{key}", leaf, default) for key, leaf, default in leaves(lora, "")]
    return found


def value_at(config: Config, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def parity(text: str, gold: str) -> SimpleNamespace:
    """A grader the untrained tiny model passes about half the time (its real grades are all 0), so that what the
    policies learn from grades has something to read."""
    return SimpleNamespace(correct=len(text) % 2 == 0)


def outputs(run_dir: Path) -> dict[str, Any]:
    """What a run computed: its logs but the timings, and its final weights."""
    def rows(name: str) -> list[dict]:
        path = run_dir / name
        return [{k: v for k, v in json.loads(line).items() if not TIMING.search(k)}
                for line in path.read_text().splitlines()] if path.is_file() else []

    def evaluated(path: Path) -> dict:
        return {k: v for k, v in json.loads(path.read_text()).items() if k != "evaluated"}  # names the run

    weights = {path.name: path.read_bytes() for path in sorted((run_dir / "final_model").glob("*.safetensors"))}
    samples = {str(path.relative_to(run_dir)): evaluated(path) for path in sorted((run_dir / "eval").rglob("*.json"))}
    return {"metrics": rows("metrics.jsonl"), "decisions": rows("decisions.jsonl"),
            "eval": rows("eval_along_training.jsonl"), "samples": samples, "weights": weights}


@pytest.fixture(scope="module")
def run(tiny_config, tmp_path_factory):
    """``run(select, key, value)``: "same", "changed", "refused: ..." or "crashed: ..." for the run of `select`
    with `key` set to `value`, against the run of `select` alone; ``run.base(select)``: that run's config."""
    folder = tmp_path_factory.mktemp("noops")
    done: dict[tuple[str, ...], tuple[Config, dict[str, Any]]] = {}
    tried: list[str] = []
    # its own cache: each changed model.embedded.* setting warm-starts a tiny model, which no other test is to find
    cache = f"model.embedded.cache_dir={folder / 'cache'}"

    def train(overrides: tuple[str, ...], name: str) -> dict[str, Any] | str:
        try:
            config = tiny_config(folder, *RUN, cache, *overrides, f"run.name={name}")
        except ConfigError as error:
            return f"refused: {error}"
        try:
            return outputs(Trainer(config, grader=parity).train())
        except ConfigError as error:
            return f"refused: {error}"
        except Exception as error:  # noqa: BLE001  (a crash is a defect of its own: reported, not fatal here)
            return f"crashed: {type(error).__name__}: {error}"

    def base(select: tuple[str, ...]) -> Config:
        if select not in done:
            outcome = train(select, f"base{len(done)}")
            assert isinstance(outcome, dict), outcome
            done[select] = (tiny_config(folder, *RUN, cache, *select), outcome)
        return done[select][0]

    def compare(select: tuple[str, ...], key: str, value: Any) -> str:
        base(select)
        override = f"{key}={json.dumps(value)}"
        changed = train((*select, override), f"case{len(tried)}")  # one directory each: no clash refused
        tried.append(override)
        if isinstance(changed, str):
            return changed
        return "same" if changed == done[select][1] else "changed"

    compare.base = base  # type: ignore[attr-defined]
    return compare


def test_every_setting_changes_what_a_run_computes_or_is_refused(run, caplog):
    silent, crashed, untried = [], [], []
    with caplog.at_level(logging.WARNING):
        for select, key, field, _ in cases():
            if allowed(key, select):
                continue
            value = VALUES.get(key, changed_value(field, value_at(run.base(select), key)))
            where = f"{key}" + (f" (with {' '.join(select)})" if select else "")
            if value is None:
                untried.append(where)
                continue
            caplog.clear()
            outcome = run(select, key, value)
            where = f"{key}={value!r}" + (f" (with {' '.join(select)})" if select else "")
            # a refusal or warning counts only when it names the setting (not a clash of run directories)
            name = key.rsplit(".", 1)[-1]
            warned = any(name in record.getMessage() for record in caplog.records)
            if outcome == "same" and not warned or outcome.startswith("refused") and name not in outcome:
                silent.append(f"{where}: {outcome[:300]}")
            elif outcome.startswith("crashed"):
                crashed.append(f"{where}: {outcome}")
    assert not silent and not crashed and not untried, (
        "accepted without effect:\n" + "\n".join(silent) + "\ncrashed:\n" + "\n".join(crashed)
        + "\nno value to try (add one to VALUES):\n" + "\n".join(untried))


def test_the_allowlist_names_only_keys_of_the_schema():
    keys = {key for _, key, _, _ in cases()} | {f"{policy}:{key}" for policy, settings in REGISTRY.items()
                                                for key, _, _ in leaves(settings, "exposure.")}
    stale = [name for name in ALLOWED if not any(key == name or key.startswith(name) for key in keys)]
    assert not stale, stale


def test_the_allowlist_is_in_the_reliability_page():
    page = (Path(__file__).parents[1] / "docs" / "reliability.md").read_text()
    missing = [name for name in ALLOWED
               if f"`{name.removeprefix('random:')}{'*' if name.endswith(('.', '_')) else ''}`" not in page]
    assert not missing, f"docs/reliability.md does not list {missing}"
