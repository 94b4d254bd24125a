"""The command line end to end on the tiny embedded setting: demo, train + resume, eval, and error exits (every
user error one line, ``atesd: error: ...``, exit code 2, no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from atesd.cli import DEMO_CONFIG, main
from atesd.config import changed_keys, load_config, save_config
from atesd.packaged import resolve_config

pytestmark = pytest.mark.slow  # trains models end to end (`pytest -m "not slow"` skips it)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _write(config, path: Path) -> Path:
    save_config(config, path)
    return path


def test_the_demo_trains_atesd_by_default():
    assert load_config(resolve_config(DEMO_CONFIG)).method == "atesd"


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
    # what the reward says about α: two rewarded windows, too few to fit, and the rebuild equals the logged rewards
    assert "## What the reward says about α" in summary and "2 points: too few for 3 parameters" in summary
    assert "the rebuilt R, G_lp, G_gt equal the 2 logged rewards" in summary
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
    assert "missing.yaml': no such file, and no packaged config" in capsys.readouterr().err
    assert main(["train", str(path), "model.name_or_path=/nonexistent/model"]) == 2
    assert "/nonexistent/model" in capsys.readouterr().err


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_training_from_a_jsonl_file(tiny_config, tmp_path):
    rows = [{"id": f"q{i}", "problem": f"Compute {i}+{i + 1}.",
             "solution": f"{i}+{i + 1}={2 * i + 1}\n\\boxed{{{2 * i + 1}}}",
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


# ---------------------------------------------------------------------------------------- user errors: one line, rc 2

def error_line(capsys) -> str:
    """The error line the last command printed: the last line of stderr, after no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("atesd: error: "), err
    return last


def _bad_data(tmp_path: Path) -> dict[str, Path]:
    good = {"problem": "Compute 1+1.", "solution": "1+1=2\n\\boxed{2}", "answer": "2"}
    csv = tmp_path / "train.csv"
    csv.write_text("problem,solution,answer\nCompute 1+1.,1+1=2,2\n")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(json.dumps({**good, "id": "a"}).encode() + b"\n"
                       + json.dumps({**good, "id": "b", "problem": "Compute \u00e9."}).encode("latin-1")
                       .replace(b"\\u00e9", "\u00e9".encode("latin-1")) + b"\n")
    three = _jsonl(tmp_path / "three.jsonl", [{**good, "id": str(i)} for i in range(3)])
    return {"csv": csv, "latin1": latin1, "three": three}


@pytest.mark.parametrize("case", ["teacher alpha", "unknown benchmark", "csv file", "not utf-8", "probe size",
                                  "missing model directory", "run directory in use", "demo engine"])
def test_user_errors_are_one_line_with_exit_code_2(tiny_config, tmp_path, capsys, case):
    from atesd.train.run_dir import RunLock, run_directory

    config = tiny_config(tmp_path)
    path = _write(config, tmp_path / "run.yaml")
    data = _bad_data(tmp_path)
    command, expected = {
        "teacher alpha": (["eval", str(path), "--teacher-alpha", "2"], "--teacher-alpha must be an exposure in [0, 1]"),
        "unknown benchmark": (["eval", str(path), "eval.benchmarks=[aime2O]"], "unknown benchmark 'aime2O'"),
        "csv file": (["train", str(path), f"data.train={data['csv']}"], "train.csv: cannot read '.csv' files"),
        "not utf-8": (["train", str(path), f"data.train={data['latin1']}"], "latin1.jsonl, row 2: not valid UTF-8"),
        "probe size": (["train", str(path), f"data.train={data['three']}", "data.probe_size=3"],
                       "data.probe_size 3 leaves no training problems out of the 3"),
        "missing model directory": (["eval", str(path), "--model", "runs/nowhere/final_model"],
                                    "--model: 'runs/nowhere/final_model' does not exist"),
        "run directory in use": (["train", str(path)], "is in use by PID"),
        # the demo evaluates with HF: an eval.engine it would not use is refused, never recorded and ignored
        "demo engine": (["demo", str(path), "eval.engine=vllm"], "atesd demo evaluates with transformers"),
    }[case]
    run_dir = run_directory(config)
    run_dir.mkdir(parents=True)
    lock = RunLock.acquire(run_dir) if case == "run directory in use" else None
    try:
        assert main(command) == 2
    finally:
        if lock:
            lock.release()
    assert expected in error_line(capsys)


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
def test_non_finite_steps_stop_the_run_with_one_line(tiny_config, tmp_path, capsys):
    # one Adam step at this rate leaves weights of 1e30: finite, but every forward after it overflows
    path = _write(tiny_config(tmp_path, "train.lr=1e30", "train.max_consecutive_bad_steps=2"), tmp_path / "run.yaml")
    assert main(["train", str(path)]) == 2
    line = error_line(capsys)
    assert "2 steps in a row had a non-finite loss or gradient (steps 2 to 3 of metrics.jsonl)" in line
    assert "--resume train.lr=<lower>" in line


def test_damaged_checkpoints_and_final_model_are_named(tiny_config, tmp_path, capsys):
    config = tiny_config(tmp_path, "train.steps=2", "train.checkpoint_every=1", "eval.num_samples=1",
                         "eval.max_problems=2", "eval.max_new_tokens=4")
    path = _write(config, tmp_path / "run.yaml")
    assert main(["train", str(path)]) == 0
    run = Path(config.run.output_dir) / "opsd-seed0"
    weights = run / "final_model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # what an interrupted save of an older atesd left
    capsys.readouterr()
    assert main(["eval", str(path)]) == 2
    assert f"cannot load the model '{run / 'final_model'}'" in error_line(capsys)

    for step in (1, 2):
        (run / "checkpoints" / f"step-000000{step}" / "optimizer.json").write_text("{")
    assert main(["train", str(path), "train.steps=3", "--resume"]) == 2
    line = error_line(capsys)
    assert "no checkpoint of" in line and "step-0000002: " in line and "optimizer.json cannot be read" in line


@pytest.mark.parametrize("recipe", ["configs/embedded/adaptive.yaml", "configs/embedded/strong-teacher/adaptive.yaml",
                                    "configs/embedded/low-exposure/adaptive.yaml"])
def test_the_recommended_adaptive_exposure_runs_as_the_demo_on_every_regime(recipe, tmp_path, capsys):
    from conftest import TINY_MODEL_OVERRIDES, TINY_RUN_OVERRIDES

    # a cache of its own: the second regime's warm start is another base model, and the session's cache holds one
    overrides = [f"model.embedded.cache_dir={tmp_path / 'cache'}", *TINY_MODEL_OVERRIDES, *TINY_RUN_OVERRIDES,
                 f"run.output_dir={tmp_path / 'runs'}", "train.steps=4", "exposure.hold_steps=1",
                 "eval.num_samples=1", "eval.max_problems=4", "eval.max_new_tokens=8"]
    assert main(["demo", str(REPO_ROOT / recipe), *overrides]) == 0
    # named apart from a plain OPSD run, whose method it shares
    assert "| opsd with exposure mismatch_ladder (student) |" in capsys.readouterr().out
    config = load_config(REPO_ROOT / recipe, overrides)
    run = Path(config.run.output_dir) / "opsd-seed0"
    assert load_config(run / "config.yaml").exposure == config.exposure
    assert config.exposure.policy == "mismatch_ladder" and config.exposure.accuracy_drop == 0.06
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4] and rows[0]["alpha"] == 0.0  # the ladder's lowest rung
    # one configuration for every regime: a twin changes only the base model (and, without the overrides, the folder)
    regime_keys = {"strong-teacher": ["model.embedded.teacher_answer_above", "model.embedded.teacher_answer_share"],
                   "low-exposure": ["model.embedded.teacher_leap_above", "model.embedded.teacher_leap_share"]}
    # (the low-exposure regime's longer warm start is the tiny model's here)
    for regime, keys in regime_keys.items():
        if regime in recipe:
            default = load_config(REPO_ROOT / "configs/embedded/adaptive.yaml", overrides)
            assert changed_keys(default, config) == keys
