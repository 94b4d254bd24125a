"""What atesd promises a run (docs/reliability.md), end to end on the tiny embedded model: one process per run
directory, logs that survive a kill during a resume, non-finite steps that stop a run resumably, and
sequences that fit the model's context before any tensor is built."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys

import pytest
import torch

from atesd.config import save_config
from atesd.losses import divergence_from_hidden
from atesd.train.metrics import read_metrics
from atesd.train.recipe import Trainer
from atesd.train.run_dir import LOCK_FILE, NON_FINITE_STOP, RunDirectoryInUse
from atesd.train.update import NonFiniteLossError

pytestmark = pytest.mark.slow  # trains models end to end (`pytest -m "not slow"` skips it)


def interrupted_run(config, at_step: int) -> Trainer:
    """A run killed (Ctrl-C) in its step `at_step`, before that step's row is logged."""
    def interrupt(record, local):
        if record["step"] == at_step:
            raise KeyboardInterrupt

    trainer = Trainer(config, on_local_step=interrupt)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    return trainer


def test_two_runs_never_share_a_run_directory(tiny_config, tmp_path):
    config = tiny_config(tmp_path, "train.steps=2")
    first = Trainer(config)
    with pytest.raises(RunDirectoryInUse, match="in use by PID"):
        Trainer(config)  # a second start while the first has not yet written a checkpoint
    with pytest.raises(RunDirectoryInUse):
        Trainer(config, resume=True)
    run_dir = first.train()
    assert not (run_dir / LOCK_FILE).exists()  # released at the end
    assert [row["step"] for row in read_metrics(run_dir / "metrics.jsonl")] == [1, 2]


# The resumed run is SIGKILLed at the rename that publishes its rewritten metrics.jsonl (the rows after the
# checkpoint dropped): the moment at which an in-place rewrite used to cut the history.
KILLED_RESUME = """
import os, signal, sys
def kill_at_the_log_rename(event, args):
    if event == "os.rename" and str(args[1]).endswith("metrics.jsonl"):
        os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(kill_at_the_log_rename)
from atesd.cli import main
main(["train", sys.argv[1], "--resume"])
"""


def test_a_kill_during_a_resumes_log_rewrite_leaves_whole_logs_that_the_next_resume_reads(tiny_config, tmp_path):
    config = tiny_config(tmp_path, "train.steps=4", "train.checkpoint_every=2")
    run_dir = interrupted_run(config, at_step=4).run_dir
    log = run_dir / "metrics.jsonl"
    before = log.read_bytes()
    assert [row["step"] for row in read_metrics(log)] == [1, 2, 3]  # the checkpoint is at step 2
    path = tmp_path / "run.yaml"
    save_config(config, path)
    child = subprocess.run([sys.executable, "-c", KILLED_RESUME, str(path)], timeout=300, capture_output=True,
                           check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    assert log.read_bytes() == before
    assert (run_dir / LOCK_FILE).is_file()  # the killed resume's lock, now stale

    resumed = Trainer(config, resume=True)
    assert resumed.step == 2
    resumed.train()
    assert [row["step"] for row in read_metrics(log)] == [1, 2, 3, 4]
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []  # no temporaries left


# A child trains the run and is SIGKILLed at the chosen occurrence of an audit event (a file opened, a rename)
# whose path holds the chosen text: points inside the checkpoint save of step 2.
KILLED_RUN = """
import os, signal, sys
event_name, needle, occurrence = sys.argv[2], sys.argv[3], int(sys.argv[4])
seen = 0
def kill_at_the_chosen_moment(event, args):
    global seen
    if event == event_name and needle in str(args[1] if event == "os.rename" else args[0]):
        seen += 1
        if seen == occurrence:
            os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(kill_at_the_chosen_moment)
from atesd.cli import main
main(["train", sys.argv[1]])
"""
KILL_POINTS = {  # the moment: (event, path text, occurrence), and the step the resume starts from
    "while step 2's checkpoint is written": (("open", ".step-0000002.tmp-", 1), 1),
    "at the rename that publishes step 2": (("os.rename", "step-0000002", 1), 1),
    "before latest names step 2": (("os.rename", "checkpoints/latest", 2), 2),
}
KILLED_RUN_SETTINGS = ("train.steps=3", "train.checkpoint_every=1", "train.lr=3e-3")


@pytest.fixture(scope="module")
def uninterrupted(tiny_config, tmp_path_factory):
    trainer = Trainer(tiny_config(tmp_path_factory.mktemp("whole"), *KILLED_RUN_SETTINGS))
    trainer.train()
    return trainer.trainable_state(), read_metrics(trainer.run_dir / "metrics.jsonl")


@pytest.mark.parametrize("moment", sorted(KILL_POINTS))
def test_a_run_killed_during_a_checkpoint_save_resumes_into_the_uninterrupted_run(tiny_config, tmp_path, moment,
                                                                                  uninterrupted):
    config = tiny_config(tmp_path, *KILLED_RUN_SETTINGS)
    path = tmp_path / "run.yaml"
    save_config(config, path)
    (event, needle, occurrence), resumed_at = KILL_POINTS[moment]
    child = subprocess.run([sys.executable, "-c", KILLED_RUN, str(path), event, needle, str(occurrence)],
                           timeout=300, capture_output=True, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    resumed = Trainer(config, resume=True)
    assert resumed.step == resumed_at  # step 2's checkpoint counts once it is complete, whatever `latest` says
    resumed.train()
    weights, rows = uninterrupted
    assert all(torch.equal(weights[name], tensor) for name, tensor in resumed.trainable_state().items())
    timing = {key for key in rows[0] if key.endswith("_time")}
    assert [{k: v for k, v in row.items() if k not in timing} for row in read_metrics(
        resumed.run_dir / "metrics.jsonl")] == [{k: v for k, v in row.items() if k not in timing} for row in rows]
    assert not [p.name for p in (resumed.run_dir / "checkpoints").iterdir() if p.name.startswith(".")]


def nan_from_step(first_bad: int):
    """A divergence whose loss is NaN from the (1-based) step `first_bad` on."""
    steps = {"seen": 0}

    def divergence(*args, **kwargs):
        out = divergence_from_hidden(*args, **kwargs)
        if steps["seen"] >= first_bad - 1:
            out.loss_sum = out.loss_sum * float("nan")
        return out

    def count(record, local):
        steps["seen"] = record["step"]

    return divergence, count


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
def test_a_non_finite_stop_is_logged_named_and_resumable_with_a_lower_learning_rate(tiny_config, tmp_path):
    config = tiny_config(tmp_path, "train.steps=6", "train.checkpoint_every=2", "train.max_consecutive_bad_steps=2",
                         "train.lr=3e-3")
    divergence, count = nan_from_step(3)
    trainer = Trainer(config, divergence=divergence, on_local_step=count)
    with pytest.raises(NonFiniteLossError, match=r"2 steps in a row had a non-finite loss or gradient \(steps 3 "
                                                 r"to 4 of metrics.jsonl\)") as excinfo:
        trainer.train()
    assert "--resume train.lr=<lower>" in str(excinfo.value)
    assert (trainer.run_dir / NON_FINITE_STOP).is_file()
    rows = read_metrics(trainer.run_dir / "metrics.jsonl")
    assert [(row["step"], row["skipped"]) for row in rows] == [(1, False), (2, False), (3, True), (4, True)]

    lower = tiny_config(tmp_path, "train.steps=6", "train.checkpoint_every=2", "train.max_consecutive_bad_steps=2",
                        "train.lr=1e-3")
    resumed = Trainer(lower, resume=True)
    assert resumed.step == 2
    assert [group["lr"] for group in resumed.optimizer.param_groups] == [1e-3]
    resumed.train()
    rows = read_metrics(resumed.run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6] and not any(row["skipped"] for row in rows)
    assert all(row["lr"] == 1e-3 for row in rows[2:])
    assert all(torch.isfinite(p).all() for p in resumed.trainable_state().values())


def jsonl_with_a_huge_reference(tmp_path):
    rows = [{"id": f"q{i}", "problem": f"Compute {i}+1.", "solution": f"{i}+1={i + 1}\n\\boxed{{{i + 1}}}",
             "answer": str(i + 1)} for i in range(10)]
    rows.append({"id": "huge", "problem": "Compute 1+1.", "solution": "1+1=2\n" * 175_000 + "\\boxed{2}",
                 "answer": "2"})  # a 1 MB reference: ten thousand times the model's context
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_one_megabyte_reference_is_cut_to_the_context_before_any_tensor_is_built(tiny_config, tmp_path, caplog):
    data = jsonl_with_a_huge_reference(tmp_path)
    config = tiny_config(tmp_path, f"data.train={data}", "data.probe_size=1", "train.steps=1", "train.batch_size=10",
                         "train.micro_batch_size=5")
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config)
    assert "cut the reference solutions of 1 of" in caplog.text and "'huge'" in caplog.text
    huge = next(p for p in trainer.train_problems + trainer.probe_problems if p.id == "huge")
    context = trainer.unwrapped.config.max_position_embeddings
    assert trainer.prompts.longest(huge, config.rollout.max_new_tokens) <= context
    trainer.train()  # the step (and the probe) read every problem, the cut one too
    assert len(read_metrics(trainer.run_dir / "metrics.jsonl")) == 1


def test_with_skip_invalid_rows_the_huge_row_is_left_out_and_counted(tiny_config, tmp_path, caplog):
    data = jsonl_with_a_huge_reference(tmp_path)
    config = tiny_config(tmp_path, f"data.train={data}", "data.probe_size=1", "data.skip_invalid_rows=true")
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config)
    trainer.release()
    assert "left out 1 of" in caplog.text
    assert "huge" not in {p.id for p in trainer.train_problems + trainer.probe_problems}
    assert len(trainer.train_problems) + len(trainer.probe_problems) == 10
