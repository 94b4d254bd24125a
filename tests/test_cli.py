"""The command line end to end on the tiny embedded setting: demo, train + resume, eval, and error exits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from atesd.cli import DEMO_CONFIG, main
from atesd.config import load_config, save_config

pytestmark = pytest.mark.slow  # trains models end to end (`pytest -m "not slow"` skips it)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _write(config, path: Path) -> Path:
    save_config(config, path)
    return path


def test_the_demo_trains_atesd_by_default():
    assert load_config(REPO_ROOT / DEMO_CONFIG).method == "atesd"


def test_demo_writes_table_plots_and_run_directory(tiny_config, tmp_path, capsys):
    # the main job: ATESD (a controller small enough to make and reward decisions in 6 steps)
    config = tiny_config(tmp_path, "method=atesd", "exposure.policy=controller", "exposure.hold_steps=2",
                         "exposure.controller.lookahead=3", "train.steps=6", "eval.num_samples=2",
                         "eval.max_problems=8", "eval.max_new_tokens=16")
    path = _write(config, tmp_path / "demo.yaml")
    assert main(["demo", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| model | Average@2 |" in out
    assert out.index("base model on embedded: student") < out.index("training atesd")  # the gap, before training
    assert "| base (student) |" in out and "| atesd (student) |" in out and "| base teacher (alpha=1) |" in out
    run = Path(config.run.output_dir) / "atesd-seed0"
    for name in ["config.yaml", "metrics.jsonl", "decisions.jsonl", "training.png", "alpha.png",
                 "accuracy-embedded.png", "summary.md", "final_model/config.json", "eval/base-embedded.json",
                 "eval/teacher-embedded.json", "eval/trained-embedded.json"]:
        assert (run / name).is_file(), name
    assert "alpha.png" in out and "3 controller decisions, policy mean 0.50 → " in out
    summary = (run / "summary.md").read_text()
    assert "exposure: α used" in summary and "torch " in summary and "transformers " in summary
    assert json.loads((run / "versions.json").read_text())["torch"] == torch.__version__
    decisions = [json.loads(line) for line in (run / "decisions.jsonl").read_text().splitlines()]
    assert [row["step"] for row in decisions] == [1, 3, 5]
    assert [row["R"] is not None for row in decisions] == [True, True, False]
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary) == {"base (student)", "base teacher (alpha=1)", "atesd (student)"}
    per_problem = json.loads((run / "eval/trained-embedded.json").read_text())
    assert len(per_problem["problems"]) == 8
    assert all(len(p["completions"]) == 2 for p in per_problem["problems"])


def test_train_resume_and_eval(tiny_config, tmp_path, capsys):
    config = tiny_config(tmp_path, "train.steps=2", "train.checkpoint_every=1", "eval.num_samples=1",
                         "eval.max_problems=4", "eval.max_new_tokens=8")
    path = _write(config, tmp_path / "run.yaml")
    assert main(["train", str(path)]) == 0
    run = Path(config.run.output_dir) / "opsd-seed0"
    assert (run / "checkpoints" / "latest").read_text() == "step-0000002"
    # Extending the run: --resume continues from step 2 to step 3.
    assert main(["train", str(path), "train.steps=3", "--resume"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    capsys.readouterr()
    assert main(["eval", str(path), "train.steps=3"]) == 0
    out = capsys.readouterr().out
    assert "final_model" in out and "| student |" in out
    assert (run / "eval" / "student-embedded.json").is_file()
    assert (run / "eval" / "student-config.yaml").is_file()


def test_errors_exit_2_with_a_message(tiny_config, tmp_path, capsys):
    path = _write(tiny_config(tmp_path), tmp_path / "run.yaml")
    assert main(["train", str(path), "train.stepz=3"]) == 2
    assert "train.stepz: unknown key" in capsys.readouterr().err
    assert main(["train", str(path), "exposure.alpha=2"]) == 2
    assert "exposure.alpha" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["train", str(path), "model.name_or_path=/nonexistent/model"]) == 2
    assert "/nonexistent/model" in capsys.readouterr().err


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_training_from_a_jsonl_file(tiny_config, tmp_path):
    rows = [{"id": f"q{i}", "problem": f"Compute {i}+{i + 1}.", "solution": f"{i}+{i + 1}={2 * i + 1}\n\\boxed{{{2 * i + 1}}}",
             "answer": str(2 * i + 1)} for i in range(1, 13)]
    data = _jsonl(tmp_path / "train.jsonl", rows)
    config = tiny_config(tmp_path, f"data.train={data}", "data.probe_size=4", "train.steps=2")
    path = _write(config, tmp_path / "run.yaml")
    assert main(["train", str(path)]) == 0
    run = Path(config.run.output_dir) / "opsd-seed0"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(row["probe_nll"] > 0 for row in metrics)


def test_a_bad_training_row_names_file_row_and_field(tiny_config, tmp_path, capsys):
    good = {"id": "a", "problem": "Compute 1+1.", "solution": "1+1=2\n\\boxed{2}", "answer": "2"}
    data = _jsonl(tmp_path / "bad.jsonl", [good, {**good, "id": "b", "answer": ""}])
    path = _write(tiny_config(tmp_path, f"data.train={data}", "data.probe_size=1"), tmp_path / "run.yaml")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "row 2" in err and "'answer'" in err
