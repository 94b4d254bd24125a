"""What the experiment commands and evaluation promise (docs/reliability.md#experiments-and-evaluation), one test
or more per class of defect found when they were tried as a demanding user would: folders reused with other
settings, lengths past the context, settings recorded before validation, flags that meant something else,
settings that cannot learn, result files written in place, tracebacks for user errors, workers outliving their
parent, evaluations that mislabel, and the smaller ones (locks, limits, a log that stops short)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atesd.cli import main
from atesd.config import ConfigError, load_config, save_config
from atesd.data.arithmetic import embedded_splits
from atesd.errors import UserError
from atesd.eval.evaluate import write_results
from atesd.eval.metrics import ProblemResult
from atesd.experiments.guards import EXPERIMENT_LOCK, read_json
from atesd.experiments.runs import log_reaches_checkpoint
from atesd.experiments.tables import write_csv
from atesd.train.base_model import base_model_path
from atesd.train.preflight import learning_warnings
from atesd.train.run_dir import RunLock

EMBEDDED = Path(__file__).resolve().parents[1] / "configs" / "embedded" / "opsd.yaml"
SMALL = ("train.steps=2", "train.checkpoint_every=1", "eval.num_samples=2", "eval.max_problems=4",
         "eval.max_new_tokens=8", "eval.teacher_alpha=null")


def one_line_error(capsys) -> str:
    """The error line of a command: one line, once, and the last thing it wrote (progress bars may precede it)."""
    err = capsys.readouterr().err
    assert err.count("atesd: error: ") == 1, err
    line = "atesd: error: " + err.split("atesd: error: ")[1]
    assert "\n" not in line.strip(), line
    return line


@pytest.fixture(scope="module")
def recipes(tiny_config, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("recipes")
    save_config(tiny_config(folder, *SMALL), folder / "opsd.yaml")
    return folder


def compare(recipes: Path, out: Path, *extra: str) -> list[str]:
    return ["compare", "--recipes", str(recipes), "--methods", "base", "--seeds", "1", "--out", str(out), *extra]


# ---------------------------------------------------------------- 1. a folder reused with other settings

def test_testbed_refuses_a_folder_measured_with_other_settings(recipes, tmp_path, capsys):
    config = str(recipes / "opsd.yaml")
    out = str(tmp_path / "testbed")
    assert main(["testbed", config, "--base-models", "1", "--out", out]) == 0
    capsys.readouterr()
    assert main(["testbed", config, "eval.num_samples=3", "--base-models", "1", "--out", out]) == 2
    error = one_line_error(capsys)
    assert "other settings" in error and "resolved.eval.num_samples: 2 there, 3 now" in error


def test_compare_refuses_another_mismatch_problem_count(recipes, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(compare(recipes, out, "--alphas", "0.5")) == 0
    capsys.readouterr()
    assert main(compare(recipes, out, "--alphas", "0.5", "--mismatch-problems", "5")) == 2
    assert "mismatch_problems: 64 there, 5 now" in one_line_error(capsys)


# ---------------------------------------------------------------- 2. evaluation against the context

def test_eval_checks_each_problem_against_the_context(recipes, tmp_path, capsys):
    bench = tmp_path / "long.jsonl"
    rows = [{"id": "short", "problem": "Compute 1+2.", "answer": "3"},
            {"id": "huge", "problem": "Compute " + "1+" * 1500 + "1.", "answer": "1501"}]
    bench.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = str(recipes / "opsd.yaml")
    capsys.readouterr()
    assert main(["eval", config, f"eval.benchmarks=[{bench}]", "--out", str(tmp_path / "e1")]) == 2
    error = one_line_error(capsys)
    assert "'huge'" in error and "context of 512" in error and "skip_invalid_rows" in error
    assert main(["eval", config, f"eval.benchmarks=[{bench}]", "data.skip_invalid_rows=true",
                 "--out", str(tmp_path / "e2")]) == 0
    results = json.loads((tmp_path / "e2" / "student-long.json").read_text())
    assert [problem["problem_id"] for problem in results["problems"]] == ["short"]


# ---------------------------------------------------------------- 3. settings recorded only once validated

@pytest.mark.parametrize("bad", ["5", "nan"])
def test_a_refused_best_alpha_leaves_nothing_behind(recipes, tmp_path, capsys, bad):
    out = tmp_path / "cmp"
    capsys.readouterr()
    assert main(compare(recipes, out, "--best-alpha", bad)) == 2
    assert "--best-alpha" in one_line_error(capsys)
    assert not (out / "compare.json").exists()
    assert main(compare(recipes, out)) == 0


# ---------------------------------------------------------------- 4. flags that silently meant something else

@pytest.mark.parametrize("args,said", [
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--alphas", "1", "1"], "--alphas: 1 given more than once"),
    (["--reuse", "no-such-folder"], "--reuse no-such-folder: no such folder"),
    (["--continue-from", "no-such-folder"], "--continue-from no-such-folder: no such folder"),
    (["--seeds", "100000"], "at most 1000"),
    (["--mismatch-problems", "0"], "--mismatch-problems must be at least 1"),
    (["--jobs", "100000"], "--jobs 100000: at most 256"),
    (["--base-models", "5000"], "--base-models 5000: at most 1000"),
    (["--base-models", "1", "--first-base-model", "-1"], "--first-base-model is a warm-start seed in [0, 1000]"),
    # flags that would do nothing with the others given
    (["--mismatch-problems", "8"], "sizes the mismatch measured for the runs of --alphas: give --alphas too"),
    (["--best-alpha", "0.3"], "--best-alpha is the α of fixed-best, which --methods base leaves out"),
    (["--first-base-model", "5"], "starts the base models of --base-models: give --base-models N too"),
])
def test_compare_flags_mean_what_they_say(recipes, tmp_path, capsys, args, said):
    out = tmp_path / "cmp"
    args = ["--seeds", "1", *args] if "--seeds" not in args else args
    base = ["compare", "--recipes", str(recipes), "--methods", "base", "--out", str(out)]
    capsys.readouterr()
    assert main([*base, *args]) == 2
    assert said in one_line_error(capsys)
    assert not (out / "compare.json").exists()


def test_sweep_refuses_an_alpha_given_twice(recipes, tmp_path, capsys):
    capsys.readouterr()
    assert main(["sweep", str(recipes / "opsd.yaml"), "--alphas", "1", "1", "--out", str(tmp_path / "s")]) == 2
    assert "given more than once" in one_line_error(capsys)


# ---------------------------------------------------------------- 5. settings that cannot learn

@pytest.mark.parametrize("override", ["loss.temperature=1e-30", "loss.temperature=1e30", "train.lr=1e-300",
                                      "train.max_grad_norm=1e-300"])
def test_settings_no_run_can_learn_with_are_refused(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(EMBEDDED, [override])


def test_a_controller_that_never_updates_is_warned_about_before_the_first_step():
    short = load_config(EMBEDDED, ["method=atesd", "exposure.policy=controller", "exposure.hold_steps=100"])
    (warning,) = learning_warnings(short)
    assert "first learns after 304 steps" in warning and "train.steps is 100" in warning
    assert learning_warnings(load_config(Path("configs/embedded/atesd.yaml"))) == []


def test_the_guards_chance_spread_counts_the_rollouts_of_an_update():
    guarded = ["exposure.policy=mismatch_ladder", "exposure.accuracy_drop=0.06"]
    assert learning_warnings(load_config(EMBEDDED, guarded)) == []  # 32 prompts an update: 256 rollouts a mean
    (warning,) = learning_warnings(load_config(EMBEDDED, [*guarded, "train.batch_size=8", "train.micro_batch_size=8"]))
    assert "two means of 64 graded rollouts" in warning


# ---------------------------------------------------------------- 6. result files written whole or not at all

def test_result_files_survive_a_failed_rewrite(tmp_path, monkeypatch):
    import atesd.files

    table, results = tmp_path / "results.csv", tmp_path / "student-x.json"
    write_csv([{"a": 1}], table)
    results.write_text('{"old": true}')
    before = table.read_text(), results.read_text()

    def broken(path, text):  # a kill or a full disk in the middle of writing
        Path(path).write_text(text[:3])
        raise OSError("disk full")

    monkeypatch.setattr(atesd.files, "write_durably", broken)
    with pytest.raises(OSError):
        write_csv([{"a": 2}], table)
    from atesd.eval.grading import grade

    with pytest.raises(OSError):
        write_results([ProblemResult("p", "1", ["\\boxed{1}"], [grade("\\boxed{1}", "1")])], 1, results)
    assert (table.read_text(), results.read_text()) == before


# ---------------------------------------------------------------- 7. user errors are one line, before the work

def test_an_unwritable_out_is_found_before_the_evaluation(recipes, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    capsys.readouterr()
    assert main(["eval", str(recipes / "opsd.yaml"), "--out", str(blocker / "sub")]) == 2
    assert "--out" in one_line_error(capsys)


def make_dir(root: Path, name: str, files: dict[str, str]) -> Path:
    folder = root / name
    folder.mkdir()
    for file, text in files.items():
        (folder / file).write_text(text)
    return folder


def test_model_paths_that_are_not_models_are_named(recipes, tmp_path, capsys):
    cases = {
        make_dir(tmp_path, "checkpoint", {"model.safetensors": "", "trainer_state.json": "{}",
                                          "optimizer.json": "{}"}): "training checkpoint",
        make_dir(tmp_path, "no-config", {"tokenizer.json": "{}"}): "no config.json",
        make_dir(tmp_path, "adapter", {"adapter_config.json": "{}", "tokenizer.json": "{}"}):
            "no adapter_model.safetensors",
        make_dir(tmp_path, "no-tokenizer", {"config.json": "{}"}): "no tokenizer files",
        make_dir(tmp_path, "weights-file", {"model.safetensors": ""}) / "model.safetensors": "is a file",
    }
    for path, said in cases.items():
        capsys.readouterr()
        assert main(["eval", str(recipes / "opsd.yaml"), "--model", str(path), "--out", str(tmp_path / "o")]) == 2
        assert said in one_line_error(capsys), said


def test_testbed_base_models_and_task_settings_are_checked_first(recipes, tmp_path, capsys):
    capsys.readouterr()
    assert main(["testbed", str(recipes / "opsd.yaml"), "--base-models", "0", "--out", str(tmp_path / "t")]) == 2
    assert "--base-models must be at least 1" in one_line_error(capsys)
    with pytest.raises(ConfigError, match="min_ops .* is above max_ops"):
        load_config(EMBEDDED, ["data.task.min_ops=5", "data.task.max_ops=3"])


def test_a_torn_result_file_is_named(tmp_path):
    torn = tmp_path / "result.json"
    torn.write_text('{"label": "op')
    with pytest.raises(UserError, match="result.json cannot be read"):
        read_json(torn)


# ---------------------------------------------------------------- 8. workers end with their parent

WORKER_SCRIPT = """
import os, sys, time
from atesd.experiments.runs import worker_pool

def pid_then_sleep(_):
    return os.getpid()

if __name__ == "__main__":
    pool = worker_pool(1)
    print(pool.submit(pid_then_sleep, 0).result(), flush=True)
    pool.submit(time.sleep, 120)
    time.sleep(120)
"""


def test_workers_end_when_the_experiment_process_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(WORKER_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    worker = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)  # only the main process, as a user's kill -9 of it
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        # a zombie of a dead parent is reaped by init; one still running is the defect
        if Path(f"/proc/{worker}/stat").is_file() and Path(f"/proc/{worker}/stat").read_text().split()[2] == "Z":
            return
        time.sleep(0.2)
    os.kill(worker, signal.SIGKILL)
    pytest.fail("the worker outlived its parent")


# ---------------------------------------------------------------- 9. evaluations carry what they evaluated

def test_teacher_evaluations_are_named_by_alpha_and_record_it(recipes, tmp_path):
    out = tmp_path / "ev"
    config = str(recipes / "opsd.yaml")
    assert main(["eval", config, "--teacher-alpha", "0.5", "--out", str(out)]) == 0
    assert main(["eval", config, "--teacher-alpha", "1", "--out", str(out)]) == 0
    half = json.loads((out / "teacher-alpha0.5-embedded.json").read_text())
    assert half["evaluated"]["teacher_alpha"] == 0.5
    assert json.loads((out / "teacher-alpha1-embedded.json").read_text())["evaluated"]["teacher_alpha"] == 1.0
    assert load_config(out / "teacher-alpha0.5-config.yaml").eval.teacher_alpha == 0.5


def test_another_model_never_overwrites_an_evaluation(recipes, tmp_path, capsys):
    out = tmp_path / "ev"
    config = str(recipes / "opsd.yaml")
    assert main(["eval", config, "--out", str(out)]) == 0
    first = (out / "student-embedded.json").read_text()
    assert json.loads(first)["evaluated"]["model"] == "embedded"
    other = Path(tmp_path / "copy")
    shutil.copytree(base_model_path(load_config(config)), other)
    capsys.readouterr()
    assert main(["eval", config, "--model", str(other), "--out", str(out)]) == 2
    assert "holds the evaluation of model" in one_line_error(capsys)
    assert (out / "student-embedded.json").read_text() == first


def test_the_test_split_does_not_depend_on_the_probe_size():
    task = load_config(EMBEDDED).data.task
    tests = [[problem.question for problem in embedded_splits(task, size)["test"]] for size in (0, 4, 32, 100)]
    assert all(split == tests[2] for split in tests)
    probes = {size: embedded_splits(task, size)["probe"] for size in (4, 32, 100)}
    assert probes[32][:4] == probes[4] and probes[100][:32] == probes[32] and len(probes[100]) == 100


# ---------------------------------------------------------------- 10. the smaller ones

def test_two_experiments_never_share_an_out_folder(recipes, tmp_path, capsys):
    out = tmp_path / "cmp"
    out.mkdir()
    lock = RunLock.acquire(out, EXPERIMENT_LOCK)
    try:
        capsys.readouterr()
        assert main(compare(recipes, out)) == 2
        assert "in use by" in one_line_error(capsys)
    finally:
        lock.release()


def test_continuing_needs_a_log_that_reaches_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step-0000004").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": step}) + "\n" for step in (1, 2, 3, 4)))
    assert log_reaches_checkpoint(run)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": step}) + "\n" for step in (1, 2)))
    assert not log_reaches_checkpoint(run)


def test_an_adapter_on_another_base_is_warned_about(tmp_path, caplog):
    from atesd.models.loading import warn_if_other_base

    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/a"}))
    with caplog.at_level(logging.WARNING):
        warn_if_other_base(tmp_path, "/models/b")
        warn_if_other_base(tmp_path, "/models/a")
    assert [record.getMessage().count("/models/b") for record in caplog.records] == [1]


# ---------------------------------------------------------------------------------------- one merge rule


RECIPES = Path(__file__).resolve().parents[1] / "configs" / "embedded"


def test_a_comparisons_exposure_settings_go_to_the_methods_whose_policy_takes_them():
    from atesd.experiments.compare import compare_specs
    from atesd.experiments.sweep import sweep_specs

    specs = {spec.label: spec for spec in compare_specs(RECIPES, ["base", "opsd", "random", "atesd", "adaback"],
                                                         ["exposure.hold_steps=1", "train.steps=3"], 1, 0.5)}
    assert specs["opsd"].overrides == ("train.steps=3",) and specs["base"].overrides == ("train.steps=3",)
    assert specs["random"].overrides == ("exposure.hold_steps=1", "train.steps=3", "exposure.policy=random")
    assert specs["atesd"].overrides == ("exposure.hold_steps=1", "train.steps=3")
    assert specs["adaback"].overrides == ("train.steps=3", "exposure.policy=adaback")
    for spec in specs.values():  # every method's config loads with what it was given
        spec.config(Path("out"))
    with pytest.raises(ConfigError, match="exposure.adaback.threshold=0.3: no run of the comparison"):
        compare_specs(RECIPES, ["base", "opsd", "atesd"], ["exposure.adaback.threshold=0.3"], 1, 0.5)
    with pytest.raises(ConfigError, match="exposure.hold_steps=1: no run of the sweep"):
        sweep_specs(RECIPES / "opsd.yaml", ["exposure.hold_steps=1"], [0.5, 1.0], 1)  # a sweep's runs are fixed α


def test_a_user_setting_inside_a_section_a_method_turns_on_merges_into_it():
    from atesd.experiments.compare import compare_specs

    specs = {spec.label: spec for spec in compare_specs(RECIPES, ["base", "opsd", "ar-opd"],
                                                         ["teacher.anchored_residual.anchor_alpha=0.3"], 1, 0.5)}
    assert specs["opsd"].config(Path("out")).teacher.anchored_residual is None  # OPSD stays OPSD
    anchored = specs["ar-opd"].config(Path("out")).teacher.anchored_residual
    assert anchored is not None and anchored.anchor_alpha == 0.3 and anchored.residual_weight == 0.6
    with pytest.raises(ConfigError, match="no run of the comparison has an exposure policy or a teacher"):
        compare_specs(RECIPES, ["base", "opsd"], ["teacher.anchored_residual.anchor_alpha=0.3"], 1, 0.5)


@pytest.mark.parametrize("overrides,message", [
    (["exposure.alpha=0.5"], "it would make method 'opsd' of the comparison another method (exposure.alpha 0.5)"),
    (["exposure.policy=random"], "it would make method 'opsd' of the comparison another method"),
    (["teacher.anchored_residual={}"], ("it would make method 'opsd' of the comparison another method "
                                        "(teacher.anchored_residual True)")),
    (["method=grpo"], "it would make method 'opsd' of the comparison another method (method grpo)"),
])
def test_a_setting_that_makes_a_method_another_is_refused_naming_both(overrides, message):
    from atesd.experiments.compare import compare_specs

    with pytest.raises(ConfigError, match=re.escape(message)):
        compare_specs(RECIPES, ["base", "opsd"], overrides, 1, 0.5)


def _preset_settings():
    from atesd.experiments.presets import methods

    return [(label, own) for label, preset in methods(0.5).items() for own in preset.overrides]


@pytest.mark.parametrize("label,own", _preset_settings())
def test_a_user_setting_a_method_sets_itself_is_refused_naming_both(label, own):
    """Every method preset × every setting it makes: the user's own value for it is refused, never silently replaced
    by the method's (or the method's by the user's)."""
    from atesd.experiments.compare import compare_specs

    key = own.split("=", 1)[0]
    with pytest.raises(ConfigError, match=re.escape(f"method '{label}' of the comparison sets it itself ({own})")):
        compare_specs(RECIPES, [label], [f"{key}=0.3"], 1, 0.5)


def test_a_sweeps_own_settings_are_refused_naming_both():
    from atesd.experiments.sweep import sweep_specs

    for override in ["exposure.policy=paint", "exposure.alpha=0.3"]:
        with pytest.raises(ConfigError, match=re.escape(f"{override}: method 'alpha-0.5' of the sweep sets it itself")):
            sweep_specs(RECIPES / "opsd.yaml", [override], [0.5, 1.0], 1)
