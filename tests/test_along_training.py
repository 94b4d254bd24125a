"""Evaluation along training and over seeds: ``eval.every`` during a run (without changing what the run
trains, resumed without duplicates), ``atesd eval --checkpoints RUN`` afterwards, ``eval.seeds``, and the report
that keeps the last checkpoint and the best per benchmark apart."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from atesd.cli import main
from atesd.config import ConfigError, save_config
from atesd.eval.metrics import combine_seeds
from atesd.experiments.along_training import along_training_report
from atesd.train.along_training import EVAL_LOG, AlongTrainingEvaluator
from atesd.train.metrics import read_metrics
from atesd.train.recipe import Trainer

TIMINGS = {"rollout_time", "teacher_time", "update_time", "probe_time", "exposure_time", "step_time"}
EVAL = ("eval.num_samples=2", "eval.max_new_tokens=8", "eval.max_problems=6")


def untimed(rows):
    return [{key: value for key, value in row.items() if key not in TIMINGS} for row in rows]


@pytest.mark.slow
def test_eval_every_evaluates_along_the_run_without_changing_it(tiny_config, tmp_path):
    plain = Trainer(tiny_config(tmp_path, "run.name=plain", "train.steps=4", *EVAL))
    plain.train()
    evaluated = Trainer(tiny_config(tmp_path, "run.name=evaluated", "train.steps=4", "eval.every=3", *EVAL))
    evaluated.train()
    # the evaluations sample from the training model, and the run trains exactly as without them
    assert untimed(read_metrics(plain.run_dir / "metrics.jsonl")) == \
        untimed(read_metrics(evaluated.run_dir / "metrics.jsonl"))
    rows = read_metrics(evaluated.run_dir / EVAL_LOG)
    assert [(row["step"], row["benchmark"]) for row in rows] == [(0, "embedded"), (3, "embedded"), (4, "embedded")]
    assert all(row["num_problems"] == 6 and row["k"] == 2 and 0 <= row["average@2"] <= 1 for row in rows)
    for step in (0, 3, 4):
        results = json.loads((evaluated.run_dir / "eval" / f"step-{step:07d}" / "student-embedded.json").read_text())
        assert results["summary"]["all"]["average@2"] == rows[[0, 3, 4].index(step)]["average@2"]


@pytest.mark.slow
def test_eval_every_resumed_keeps_its_rows_and_adds_the_rest(tiny_config, tmp_path):
    common = ("run.name=r", "eval.every=2", "train.checkpoint_every=2", *EVAL)
    Trainer(tiny_config(tmp_path, "train.steps=2", *common)).train()
    resumed = Trainer(tiny_config(tmp_path, "train.steps=4", *common), resume=True)
    resumed.train()
    assert [row["step"] for row in read_metrics(resumed.run_dir / EVAL_LOG)] == [0, 2, 4]


def test_eval_every_under_fsdp2_is_refused_with_what_to_do_instead(tiny_config, tmp_path):
    config = tiny_config(tmp_path, "eval.every=2")
    with pytest.raises(ConfigError, match="eval --checkpoints"):
        AlongTrainingEvaluator(config, None, None, tmp_path, None, None, resumed_at=None, sharded=True, rollouts=None)


def test_eval_every_on_vllm_needs_the_runs_vllm_engine(tiny_config, tmp_path, capsys):
    from atesd.cli import main
    from atesd.config import save_config

    save_config(tiny_config(tmp_path), tmp_path / "run.yaml")
    assert main(["train", str(tmp_path / "run.yaml"), "eval.every=2", "eval.engine=vllm"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("atesd: error: ") and "eval.every with eval.engine=vllm samples from the run's colocated "\
        "vLLM engine: set rollout.engine=vllm too" in error and "\n" not in error


@pytest.mark.slow
def test_eval_checkpoints_matches_evaluating_the_final_model(tiny_config, tmp_path, capsys):
    config = tiny_config(tmp_path, "train.steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=5", *EVAL)
    path = tmp_path / "run.yaml"
    save_config(config, path)
    assert main(["train", str(path)]) == 0
    run = Path(config.run.output_dir) / "opsd-seed0"
    capsys.readouterr()
    assert main(["eval", "--checkpoints", str(run), "eval.seeds=2"]) == 0
    out_dir = run / "eval" / "checkpoints"
    rows = read_metrics(out_dir / "checkpoints.jsonl")
    assert [row["step"] for row in rows] == [0, 2, 4] and all(row["seeds"] == 2 for row in rows)
    report = (out_dir / "report.md").read_text()
    assert "## Last checkpoint (step 4)" in report and "selected on the benchmark itself" in report
    assert report in capsys.readouterr().out
    # the last checkpoint loaded onto the base model is the final model: the same samples, the same grades
    assert main(["eval", str(path), "eval.seeds=2", "--out", str(tmp_path / "final")]) == 0
    for seed in (0, 1):
        from_checkpoint = json.loads((out_dir / "step-0000004" / f"student-embedded-seed{seed}.json").read_text())
        from_final = json.loads((tmp_path / "final" / f"student-embedded-seed{seed}.json").read_text())
        assert from_checkpoint["problems"] == from_final["problems"]
        assert from_checkpoint["summary"] == from_final["summary"]
        assert from_checkpoint["evaluated"]["model"].endswith("checkpoints/step-0000004")
    # the base model (step 0) is the run's starting point, not a trained one
    base = json.loads((out_dir / "step-0000000" / "student-embedded-seeds.json").read_text())
    assert base["summary"]["all"]["average@2"] == rows[0]["average@2"]
    # the guards every command shares: the same folder with other settings, a setting that is not eval.*, a file
    capsys.readouterr()
    assert main(["eval", "--checkpoints", str(run), "eval.seeds=3"]) == 2
    assert "was made with other settings (eval.seeds: 2 there, 3 now)" in capsys.readouterr().err
    assert main(["eval", "--checkpoints", f"{run}/", "eval.seeds=2"]) == 0  # the same run, the same settings
    assert main(["eval", "--checkpoints", str(run), "train.lr=0.1"]) == 2
    assert "train.lr=0.1 would change it; give only eval.* overrides" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert main(["eval", "--checkpoints", str(run), "--out", str(tmp_path / "a-file")]) == 2
    assert "--out" in capsys.readouterr().err


def test_eval_checkpoints_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "--checkpoints", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    assert main(["eval", "configs/embedded/opsd.yaml", "--checkpoints", str(tmp_path)]) == 2
    assert "only key=value" in capsys.readouterr().err
    assert main(["eval"]) == 2
    assert "needs CONFIG" in capsys.readouterr().err


def test_several_seeds_give_mean_and_std_per_metric():
    per_seed = [{"all": {"average@4": a, "pass@4": p, "num_problems": 10, "num_samples": 40}}
                for a, p in ((0.2, 0.5), (0.4, 0.7), (0.3, 0.9))]
    combined = combine_seeds(per_seed)["all"]
    assert combined["average@4"] == pytest.approx(0.3)
    assert combined["average@4_std"] == pytest.approx(statistics.stdev([0.2, 0.4, 0.3]))
    assert combined["pass@4_std"] == pytest.approx(0.2)
    assert combined["num_problems"] == 10 and combined["seeds"] == 3
    assert combine_seeds(per_seed[:1])["all"]["average@4_std"] == 0.0


@pytest.mark.slow
def test_eval_seeds_write_one_file_per_seed_and_their_summary(tiny_config, tmp_path, capsys):
    config = tiny_config(tmp_path, *EVAL)
    path = tmp_path / "eval.yaml"
    save_config(config, path)
    assert main(["eval", str(path), "eval.seeds=3", "--out", str(tmp_path / "three")]) == 0
    per_seed = [json.loads((tmp_path / "three" / f"student-embedded-seed{s}.json").read_text())["summary"]
                for s in (0, 1, 2)]
    combined = json.loads((tmp_path / "three" / "student-embedded-seeds.json").read_text())
    assert combined["seeds"] == [0, 1, 2] and combined["summary"] == combine_seeds(per_seed)
    assert " ± " in capsys.readouterr().out
    # one seed: the file names and contents of before
    assert main(["eval", str(path), "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "student-embedded.json").read_text())
    assert one["summary"] == per_seed[0]


def test_report_keeps_the_last_and_the_best_apart():
    rows = [{"step": step, "benchmark": name, "k": 4, "seeds": 1, "average@4": value, "pass@4": value,
             "maj@4": value} for step, name, value in
            ((0, "aime24", 0.50), (25, "aime24", 0.58), (50, "aime24", 0.55),
             (0, "hmmt25", 0.30), (25, "hmmt25", 0.29), (50, "hmmt25", 0.33))]
    report = along_training_report(rows, "r")
    last, best = report.split("## Best checkpoint per benchmark")
    assert "## Last checkpoint (step 50)" in last and "| aime24 | 55.0 | 55.0 | 55.0 |" in last
    # each benchmark's own best step, and how far above the last checkpoint it is
    assert "| aime24 | 25 | 58.0 | +3.0 |" in best and "| hmmt25 | 50 | 33.0 | +0.0 |" in best
    assert "optimistic" in best


def test_report_of_a_run_resumed_with_another_number_of_samples_compares_only_the_latest():
    """A resume may change eval.num_samples: the report (made after a finished run) compares the evaluations at the
    latest k, and says how many it left out, instead of failing the run on a missing average@k."""
    rows = [{"step": step, "benchmark": "embedded", "k": k, "seeds": 1, f"average@{k}": value, f"pass@{k}": value,
             f"maj@{k}": value} for step, k, value in ((0, 4, 0.40), (2, 4, 0.42), (4, 2, 0.45), (6, 2, 0.47))]
    report = along_training_report(rows, "r")
    assert "Average@2" in report and "## Last checkpoint (step 6)" in report and "| embedded | 47.0 |" in report
    assert "2 evaluations with another number of samples" in report and "\n| 2 |" not in report


@pytest.mark.slow
def test_a_report_that_cannot_be_made_is_a_warning_and_the_finished_run_ends_with_rc_0(tiny_config, tmp_path,
                                                                                         monkeypatch, capsys):
    from atesd.experiments import diagnose_report

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for -: 'list' and 'float'")

    monkeypatch.setattr(diagnose_report, "run_section", broken)
    path = tmp_path / "run.yaml"
    save_config(tiny_config(tmp_path, "train.steps=2", "exposure.policy=random"), path)
    assert main(["train", str(path)]) == 0
    err = capsys.readouterr().err
    assert "atesd: warning: the run's diagnosis could not be made (TypeError: unsupported operand" in err
    assert (tmp_path / "runs" / "opsd-seed0" / "final_model").is_dir()
