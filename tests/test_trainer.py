"""End-to-end training on the tiny embedded model: outputs, exact resume, guards, non-finite steps."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from atesd.config import ConfigError, load_config
from atesd.losses import divergence_from_hidden
from atesd.train.checkpoint import latest_checkpoint
from atesd.train.metrics import read_metrics
from atesd.train.recipe import Trainer
from atesd.train.update import NonFiniteLossError

pytestmark = pytest.mark.slow  # trains models end to end (`pytest -m "not slow"` skips it)

SPEC_STATISTICS = ["kl_mean", "kl_p90", "kl_p99", "top1_disagree", "confidence", "probe_nll", "teacher_ref_logp"]
LOGGED = SPEC_STATISTICS + ["loss", "rollout_accuracy", "completion_length", "alpha"]
TIMINGS = {"rollout_time", "teacher_time", "update_time", "probe_time", "exposure_time", "step_time"}


def same_weights(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> bool:
    return set(left) == set(right) and all(torch.equal(left[k], right[k]) for k in left)


# ---------------------------------------------------------------------------------------- a 4-step run

@pytest.fixture(scope="module")
def four_step_run(tiny_config, tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("four"), "run.name=four", "train.steps=4",
                         "train.checkpoint_every=2", "train.teacher_ref_logp_every=1")
    trainer = Trainer(config)
    start = trainer.trainable_state()
    run_dir = trainer.train()
    return config, trainer, run_dir, start


def test_run_writes_resolved_config(four_step_run):
    config, _, run_dir, _ = four_step_run
    assert run_dir == Path(config.run.output_dir) / "four"
    saved = load_config(run_dir / "config.yaml")
    assert saved == config
    assert saved.train.steps == 4 and saved.model.embedded.hidden_size == 32


def test_run_writes_metrics_with_every_statistic(four_step_run):
    _, trainer, run_dir, _ = four_step_run
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        missing = [key for key in LOGGED if key not in row]
        assert not missing, f"step {row['step']} lacks {missing}"
        for key in LOGGED:
            assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), (row["step"], key, row[key])
        assert row["alpha"] == 1.0
        assert row["kl_mean"] >= 0.0
        assert 0.0 <= row["kl_p90"] <= row["kl_p99"]
        assert 0.0 <= row["top1_disagree"] <= 1.0
        assert 0.0 < row["confidence"] <= 1.0
        assert row["probe_nll"] > 0.0
        assert row["teacher_ref_logp"] < 0.0
        assert 0.0 <= row["rollout_accuracy"] <= 1.0
        assert 0 < row["completion_length"] <= 16  # rollout.max_new_tokens
        assert row["loss"] == pytest.approx(row["kl_mean"], rel=1e-5, abs=1e-9)  # forward KL, unclipped
        assert row["skipped"] is False and row["skipped_steps"] == 0
        assert math.isfinite(row["grad_norm"]) and row["lr"] == pytest.approx(trainer.config.train.lr)
    # probe_nll_before chains: each step's "before" is the previous step's value
    for previous, row in itertools.pairwise(rows):
        assert row["probe_nll_before"] == previous["probe_nll"]
    assert trainer.step == 4 and trainer.updater.skipped_steps == 0


def test_run_writes_checkpoints_and_final_model(four_step_run):
    _, trainer, run_dir, start = four_step_run
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert checkpoints == ["step-0000002", "step-0000004"]
    latest = latest_checkpoint(run_dir)
    assert latest.name == "step-0000004"
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["skipped_steps"] == 0 and state["data_position"] == 16
    for name in ("model.safetensors", "optimizer.json", "optimizer.safetensors", "exposure.json", "rng.json",
                 "teacher.json"):
        assert (latest / name).is_file(), name

    final_state = trainer.trainable_state()
    assert same_weights(load_file(str(latest / "model.safetensors")), final_state)
    assert not same_weights(start, final_state), "four steps should have moved the weights"

    model = AutoModelForCausalLM.from_pretrained(run_dir / "final_model")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "final_model")
    loaded = dict(model.named_parameters())
    for name, tensor in final_state.items():
        assert torch.equal(loaded[name].detach(), tensor), name
    assert tokenizer.eos_token == trainer.tokenizer.eos_token
    assert tokenizer("1+2=3")["input_ids"] == trainer.tokenizer("1+2=3")["input_ids"]


def test_the_warm_start_ran_once(embedded_cache, four_step_run):
    assert len([p for p in embedded_cache.iterdir() if p.name.startswith("embedded-")]) == 1


def test_resume_with_changed_setting_is_refused(four_step_run):
    config, _, run_dir, _ = four_step_run
    changed = config.model_copy(deep=True)
    changed.train.lr = 1e-3
    with pytest.raises(ConfigError, match="train.lr") as excinfo:
        Trainer(changed, resume=True)
    assert "train.steps:" not in str(excinfo.value)  # the steps are not a difference
    assert read_metrics(run_dir / "metrics.jsonl")[-1]["step"] == 4  # untouched


def test_new_run_in_a_directory_with_checkpoints_is_refused(four_step_run):
    config, _, run_dir, _ = four_step_run
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(config)
    assert latest_checkpoint(run_dir).name == "step-0000004"
    assert len(read_metrics(run_dir / "metrics.jsonl")) == 4


def test_resume_without_checkpoint_is_an_error(tiny_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        Trainer(tiny_config(tmp_path, "run.name=nothing"), resume=True)


def test_g_t_is_measured_only_every_few_steps_when_the_policy_does_not_use_it(tiny_config, tmp_path):
    run_dir = Trainer(tiny_config(tmp_path, "train.steps=4", "train.teacher_ref_logp_every=2")).train()
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [row["teacher_ref_logp"] is None for row in rows] == [True, False, True, False]
    assert all(row["teacher_ref_logp"] < 0.0 for row in rows[1::2])
    # the controller's reward uses g_t (λ_gt > 0): measured at every step, whatever the cadence
    run_dir = Trainer(tiny_config(tmp_path, *SMALL_CONTROLLER, "run.name=atesd", "train.steps=3",
                                  "train.teacher_ref_logp_every=0")).train()
    assert all(row["teacher_ref_logp"] < 0.0 for row in read_metrics(run_dir / "metrics.jsonl"))


# ---------------------------------------------------------------------------------------- exact resume

@pytest.mark.parametrize("teacher", ["initial", "ema"])
def test_resume_matches_uninterrupted_run(tiny_config, tmp_path, teacher):
    # warmup: the learning rate changes at every step, so the scheduler state must be restored too
    common = ("train.checkpoint_every=3", "train.lr=3e-3", "train.warmup_steps=5", f"teacher.weights={teacher}",
              *(["teacher.ema_decay=0.5"] if teacher == "ema" else []))

    run_a = Trainer(tiny_config(tmp_path, "run.name=a", "train.steps=6", *common))
    run_a.train()

    first_half = Trainer(tiny_config(tmp_path, "run.name=b", "train.steps=3", *common))
    first_half.train()
    del first_half
    run_b = Trainer(tiny_config(tmp_path, "run.name=b", "train.steps=6", *common), resume=True)
    assert run_b.step == 3
    run_b.train()

    assert same_weights(run_a.trainable_state(), run_b.trainable_state())
    if teacher == "ema":
        assert same_weights(run_a.teacher.weights.state_dict(), run_b.teacher.weights.state_dict())
    rows_a = read_metrics(run_a.run_dir / "metrics.jsonl")
    rows_b = read_metrics(run_b.run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == [1, 2, 3, 4, 5, 6]
    for row_a, row_b in zip(rows_a, rows_b):
        assert row_a["loss"] == row_b["loss"], row_a["step"]
        assert {k: v for k, v in row_a.items() if k not in TIMINGS} == \
               {k: v for k, v in row_b.items() if k not in TIMINGS}
    assert len({row["loss"] for row in rows_a}) == 6  # the steps really differ from each other


# ---------------------------------------------------------------------------------------- non-finite steps

def nan_on_steps(config, bad_steps, **seams) -> Trainer:
    """A trainer whose distillation loss is NaN on the given (0-based) steps (all of them for None)."""
    trainer = None

    def divergence(*args, **kwargs):
        out = divergence_from_hidden(*args, **kwargs)
        if bad_steps is None or trainer.step in bad_steps:
            out.loss_sum = out.loss_sum * float("nan")
        return out

    trainer = Trainer(config, divergence=divergence, **seams)
    return trainer


def adam_moments(trainer: Trainer) -> dict[int, torch.Tensor]:
    return {k: v["exp_avg"].clone() for k, v in enumerate(trainer.optimizer.state.values())}


def test_non_finite_loss_never_reaches_the_weights(tiny_config, tmp_path):
    after_step = []  # (weights, Adam's first moments) after each step
    trainer = nan_on_steps(tiny_config(tmp_path, "run.name=nan-once", "train.steps=3", "train.lr=3e-3"), {1},
                           on_local_step=lambda record, local: after_step.append(
                               (trainer.trainable_state(), adam_moments(trainer))))
    start = trainer.trainable_state()
    trainer.train()

    (after0, adam0), (after1, adam1), (after2, _) = after_step
    before0, before1, before2, adam1_before = start, after0, after1, adam0
    assert not same_weights(before0, after0)
    assert same_weights(before1, after1), "the NaN step changed the weights"
    assert adam1.keys() == adam1_before.keys() and all(torch.equal(adam1[k], adam1_before[k]) for k in adam1)
    assert not same_weights(before2, after2), "training should go on after a skipped step"
    assert trainer.updater.skipped_steps == 1 and trainer.updater.consecutive_bad_steps == 0

    rows = read_metrics(trainer.run_dir / "metrics.jsonl")
    assert [(r["step"], r["skipped"], r["skipped_steps"]) for r in rows] == \
           [(1, False, 0), (2, True, 1), (3, False, 1)]
    assert rows[1]["loss"] is None and rows[1]["grad_norm"] is None  # NaN is written as null
    assert all(math.isfinite(rows[i]["loss"]) for i in (0, 2))


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
def test_non_finite_loss_on_every_step_stops_training(tiny_config, tmp_path):
    trainer = nan_on_steps(tiny_config(tmp_path, "run.name=nan-always", "train.steps=5",
                                       "train.max_consecutive_bad_steps=2"), None)
    start = trainer.trainable_state()
    with pytest.raises(NonFiniteLossError, match="2 steps in a row had a non-finite loss") as excinfo:
        trainer.train()
    assert "no update reached the weights" in str(excinfo.value)
    assert trainer.updater.skipped_steps == 2
    assert same_weights(start, trainer.trainable_state())


# ---------------------------------------------------------------------------------------- input errors

def test_missing_model_path_is_named(tiny_config, tmp_path):
    config = tiny_config(tmp_path, "model.name_or_path=/nonexistent/model")
    with pytest.raises(FileNotFoundError, match="/nonexistent/model"):
        Trainer(config)


# ---------------------------------------------------------------------------------------- ATESD

# A controller small and quick enough to update several times in a 10-step run (H = 2, L = 3, B = 2).
SMALL_CONTROLLER = ("method=atesd", "exposure.policy=controller", "exposure.hold_steps=2",
                    "exposure.controller.lookahead=3", "exposure.controller.decisions_per_update=2",
                    "exposure.controller.lr=0.1", "exposure.controller.hidden_sizes=[8]")


def resumed_after_a_crash_in_step_eight(tiny_config, tmp_path, overrides: tuple[str, ...]) -> Trainer:
    """Run ``b`` with `overrides`, interrupted (KeyboardInterrupt) in step 8; the Trainer that resumes it."""

    def crash_in_step_eight(record, local):
        if record["step"] == 8:
            raise KeyboardInterrupt

    crashing = Trainer(tiny_config(tmp_path, "run.name=b", *overrides), on_local_step=crash_in_step_eight)
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    return Trainer(tiny_config(tmp_path, "run.name=b", *overrides), resume=True)


def test_atesd_resumed_mid_window_after_a_crash_matches_an_uninterrupted_run(tiny_config, tmp_path):
    common = (*SMALL_CONTROLLER, "train.steps=10", "train.checkpoint_every=5", "train.lr=3e-3")
    run_a = Trainer(tiny_config(tmp_path, "run.name=a", *common))
    run_a.train()
    run_b = resumed_after_a_crash_in_step_eight(tiny_config, tmp_path, common)
    assert run_b.step == 5  # the checkpoint falls inside the hold window of updates 5 and 6
    assert run_b.exposure.current.step == 4 and run_b.exposure.waiting
    run_b.train()

    rows_a = read_metrics(run_a.run_dir / "metrics.jsonl")
    rows_b = read_metrics(run_b.run_dir / "metrics.jsonl")
    alphas = [row["alpha"] for row in rows_a]
    assert alphas == [row["alpha"] for row in rows_b]
    assert alphas[0::2] == alphas[1::2] and len(set(alphas)) == 5  # one new α per window of 2 updates
    updates = [row["step"] for row in rows_a if "controller_updates" in row]
    assert updates and min(updates) <= 5 < max(updates)  # the controller learned before and after the checkpoint
    assert [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows_a] == \
           [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows_b]
    decisions_a = read_metrics(run_a.run_dir / "decisions.jsonl")
    assert decisions_a == read_metrics(run_b.run_dir / "decisions.jsonl")
    assert [row["step"] for row in decisions_a] == [1, 3, 5, 7, 9]
    assert [row["alpha"] for row in decisions_a] == alphas[0::2]
    assert [row["R"] is None for row in decisions_a] == [False] * 4 + [True]  # the last window runs past the end
    assert same_weights(run_a.trainable_state(), run_b.trainable_state())
    for left, right in zip(run_a.exposure.net.parameters(), run_b.exposure.net.parameters()):
        assert torch.equal(left, right)


def test_atesd_statistics_reach_the_controller(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(tmp_path, *SMALL_CONTROLLER, "train.steps=4"))
    trainer.train()
    rows = read_metrics(trainer.run_dir / "metrics.jsonl")
    state = trainer.exposure.state
    assert state.normalizer.count == 4
    assert state.emas["probe_nll_ema"] is not None and state.confidence == rows[-1]["confidence"]
    assert sorted(trainer.exposure.losses) == [2, 3, 4]  # ℓ kept only from the oldest waiting decision (step 2) on
    assert trainer.exposure.losses[4] == rows[-1]["probe_nll"]


PER_PROBLEM = (*SMALL_CONTROLLER, "exposure.per_problem=true", "exposure.controller.credited_problems=3")


def per_problem_runs(tiny_config, tmp_path, common: tuple[str, ...], waiting: bool):
    """Run ``a`` uninterrupted and ``b`` crashed in step 8 and resumed from step 5, with a policy per problem
    (`waiting`: decisions still wait for their reward at the checkpoint); checks that the two are equal, that the
    teacher prompts used the decided α, and returns (a, b, a's metrics, a's decisions)."""
    run_a = Trainer(tiny_config(tmp_path, "run.name=a", *common))
    teacher_alphas = []
    original = run_a.prompts.teacher
    run_a.prompts.teacher = lambda problem, alpha: teacher_alphas.append(alpha) or original(problem, alpha)
    run_a.train()
    run_b = resumed_after_a_crash_in_step_eight(tiny_config, tmp_path, common)
    assert run_b.step == 5 and bool(run_b.exposure.pending_decisions()) == waiting
    run_b.train()

    rows_a = read_metrics(run_a.run_dir / "metrics.jsonl")
    assert [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows_a] == \
           [{k: v for k, v in r.items() if k not in TIMINGS} for r in read_metrics(run_b.run_dir / "metrics.jsonl")]
    decisions = read_metrics(run_a.run_dir / "decisions.jsonl")
    assert decisions == read_metrics(run_b.run_dir / "decisions.jsonl")
    assert same_weights(run_a.trainable_state(), run_b.trainable_state())
    assert [a for row in decisions for a in row["alpha"]] == teacher_alphas  # the teacher prompts used exactly those
    assert [row["alpha"] for row in rows_a] == pytest.approx([sum(r["alpha"]) / 4 for r in decisions])  # their mean
    assert all(row["bucket"][0].startswith("ops=") for row in decisions)
    return run_a, run_b, rows_a, decisions


def test_per_problem_exposure_resumed_after_a_crash_matches_an_uninterrupted_run(tiny_config, tmp_path):
    common = (*PER_PROBLEM, "train.steps=10", "train.checkpoint_every=5", "train.lr=3e-3")
    # groups still waiting for their credit at the checkpoint
    run_a, run_b, rows_a, decisions = per_problem_runs(tiny_config, tmp_path, common, waiting=True)
    for left, right in zip(run_a.exposure.net.parameters(), run_b.exposure.net.parameters()):
        assert torch.equal(left, right)
    # one row per step, one α per problem
    assert [row["step"] for row in decisions] == list(range(1, 11))
    assert all(len(row["alpha"]) == 4 and row["credited"] == 3 for row in decisions)
    assert any(len(set(row["alpha"])) > 1 for row in decisions)
    # rewarded once L = 3 updates have passed: the groups of steps 1-7; the last three run past the end
    assert [row["R"] is not None for row in decisions] == [True] * 7 + [False] * 3
    assert all(len(row["R"]) == 3 and all(math.isfinite(r) for r in row["R"]) for row in decisions[:7])
    updates = [row["step"] for row in rows_a if "controller_updates" in row]
    assert updates and min(updates) <= 5 < max(updates)  # the policy learned before and after the checkpoint


@pytest.mark.parametrize("rule", ["adaback", "seele", "paint"])
def test_a_peer_rule_resumed_after_a_crash_matches_an_uninterrupted_run(tiny_config, tmp_path, rule):
    # 20 steps of 4 problems go round the 64 tiny problems once and a quarter: the last steps revisit problems
    common = (f"exposure.policy={rule}", *(["exposure.seele.min_points=3"] if rule == "seele" else []),
              "train.steps=20", "train.checkpoint_every=5", "train.lr=3e-3")
    _, _, _, decisions = per_problem_runs(tiny_config, tmp_path, common, waiting=False)
    assert [row["step"] for row in decisions] == list(range(1, 21))
    if rule == "paint":
        assert all(row["alpha"] == pytest.approx([max(1 - o, 0.05) for o in row["overlap"]]) for row in decisions)
    else:  # the rollouts of the revisits (steps 17-20) complete the attempts of the first visits
        rewards = [reward for row in decisions for reward in row["reward"]]
        assert rewards[:64] == [None] * 64 and all(reward in (0.0, 1.0) for reward in rewards[64:])


def test_per_problem_exposure_refuses_a_policy_that_does_not_learn(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="exposure.per_problem: unknown key"):  # fixed exposure has one α
        tiny_config(tmp_path, "exposure.per_problem=true")


# ---------------------------------------------------------------------------------------- the baselines

BASELINE = {"grpo": ("method=grpo", "grpo.group_size=2", "train.batch_size=2"), "sft": ("method=sft",)}


class GradeByLength:
    """A stand-in grader that gives the tiny, barely trained model's rollouts mixed rewards: even lengths win."""

    def __init__(self, text: str, answer: str) -> None:
        self.correct = len(text) % 2 == 0


@pytest.mark.parametrize("method", ["grpo", "sft"])
def test_baseline_resume_matches_uninterrupted_run(tiny_config, tmp_path, method):
    common = (*BASELINE[method], "train.checkpoint_every=2", "train.lr=3e-3")
    run_a = Trainer(tiny_config(tmp_path, "run.name=a", "train.steps=4", *common), grader=GradeByLength)
    start = run_a.trainable_state()
    run_a.train()
    Trainer(tiny_config(tmp_path, "run.name=b", "train.steps=2", *common), grader=GradeByLength).train()
    run_b = Trainer(tiny_config(tmp_path, "run.name=b", "train.steps=4", *common), resume=True,
                    grader=GradeByLength)
    run_b.train()

    assert not same_weights(start, run_a.trainable_state())
    assert same_weights(run_a.trainable_state(), run_b.trainable_state())
    rows_a = read_metrics(run_a.run_dir / "metrics.jsonl")
    rows_b = read_metrics(run_b.run_dir / "metrics.jsonl")
    assert [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows_a] == \
           [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows_b]
    assert (run_a.run_dir / "final_model" / "model.safetensors").is_file()


def test_grpo_records_its_rollouts_and_costs(tiny_config, tmp_path):
    run_dir = Trainer(tiny_config(tmp_path, "train.steps=2", *BASELINE["grpo"])).train()
    for row in read_metrics(run_dir / "metrics.jsonl"):
        assert "alpha" not in row and "kl_mean" not in row  # no teacher at an exposure
        assert 0.0 <= row["rollout_accuracy"] <= 1.0 and 0.0 <= row["groups_without_signal"] <= 1.0
        assert row["clip_fraction"] == 0.0  # one update per batch: the ratio is exactly 1
        # 2 prompts x 2 rollouts of at most 16 tokens
        assert 4 <= row["generated_tokens"] == round(4 * row["completion_length"]) <= 64
        assert row["forward_tokens"] > row["generated_tokens"]
        assert math.isfinite(row["loss"]) and row["probe_nll"] > 0.0
        assert set(TIMINGS) <= set(row) and row["teacher_time"] == 0.0  # no KL term: no reference forward


def test_grpo_without_reward_differences_leaves_the_weights_alone(tiny_config, tmp_path):
    """Every rollout graded the same: all advantages are 0, so the gradient and (Adam, no decay) the update are 0;
    a KL term to the reference then is the only force, and it is 0 too while the weights equal the reference."""
    class AlwaysWrong:
        correct = False

    trainer = Trainer(tiny_config(tmp_path, "train.steps=2", "grpo.kl_coef=0.1", *BASELINE["grpo"]),
                      grader=lambda *args: AlwaysWrong())
    start = trainer.trainable_state()
    trainer.train()
    assert same_weights(start, trainer.trainable_state())
    rows = read_metrics(trainer.run_dir / "metrics.jsonl")
    assert all(row["groups_without_signal"] == 1.0 and row["kl_ref"] == 0.0 for row in rows)
    assert all(row["teacher_time"] > 0.0 for row in rows)


def test_sft_trains_on_references_without_rollouts(tiny_config, tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path, "train.steps=2", *BASELINE["sft"]))
    monkeypatch.setattr(trainer.sampler.engine, "generate", lambda *args: pytest.fail("SFT must not sample"))
    trainer.train()
    for row in read_metrics(trainer.run_dir / "metrics.jsonl"):
        assert row["generated_tokens"] == 0 and "rollout_accuracy" not in row
        assert row["loss"] > 0.0 and row["reference_tokens"] > 0
        assert row["forward_tokens"] > row["reference_tokens"]
