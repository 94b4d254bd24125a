"""The run directory: one process owns it (a lock naming PID and host, stale locks taken over), and what a
resume may change (eval.*, train.steps upward, train.checkpoint_every, the location; train.lr after a
non-finite stop)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from atesd.config import ConfigError, load_config
from atesd.train.run_dir import (
    LOCK_FILE,
    RunDirectoryInUse,
    RunLock,
    check_resume,
    prepare_run_dir,
    record_non_finite_stop,
)

HOLD_THE_LOCK = """
import sys
from pathlib import Path
from atesd.train.run_dir import RunLock
lock = RunLock.acquire(Path(sys.argv[1]))
print("locked", flush=True)
sys.stdin.read()  # hold it until the test closes our stdin
"""


def config(tmp_path, *overrides):
    return load_config(None, [f"run.output_dir={tmp_path}", "run.name=run", *overrides])


def test_a_second_lock_in_the_same_process_is_refused_and_release_frees_it(tmp_path):
    lock = RunLock.acquire(tmp_path)
    info = json.loads((tmp_path / LOCK_FILE).read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    with pytest.raises(RunDirectoryInUse, match=f"in use by PID {os.getpid()} on host {socket.gethostname()}"):
        RunLock.acquire(tmp_path)
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()
    RunLock.acquire(tmp_path).release()


def test_a_start_while_another_process_holds_the_directory_is_refused_with_its_pid(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryInUse, match=f"PID {holder.pid} on host"):
            prepare_run_dir(tmp_path, config(tmp_path), resume=False)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    prepare_run_dir(tmp_path, config(tmp_path), resume=False).release()


def test_the_lock_of_a_killed_run_is_stale_and_taken_over_with_a_warning(tmp_path, caplog):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait(timeout=60)
    assert (tmp_path / LOCK_FILE).is_file()  # left behind, naming a dead process
    with caplog.at_level(logging.WARNING):
        lock = RunLock.acquire(tmp_path)
    assert f"stale lock of PID {holder.pid}" in caplog.text
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_refused_start_releases_the_lock(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        prepare_run_dir(tmp_path / "run", config(tmp_path), resume=True)
    prepare_run_dir(tmp_path / "run", config(tmp_path), resume=False).release()
    with pytest.raises(ConfigError, match="train.lr"):
        prepare_run_dir(tmp_path / "run", config(tmp_path, "train.lr=0.1"), resume=True)
    assert not (tmp_path / "run" / LOCK_FILE).exists()


@pytest.mark.parametrize("override", ["eval.num_samples=7", "eval.max_problems=3", "train.steps=500",
                                      "train.checkpoint_every=3", "train.keep_checkpoints=5",
                                      "run.output_dir=/moved/elsewhere", "run.name=renamed",
                                      # how the HF engine samples, not what (every variant samples the same tokens)
                                      "rollout.sampler=generate", "rollout.loop.cache=dynamic",
                                      "rollout.loop.drop_finished=false"])
def test_safe_changes_are_allowed_on_resume(tmp_path, override):
    saved = config(tmp_path)
    changed = check_resume(saved, config(tmp_path, override), tmp_path / "config.yaml")
    assert changed == [override.split("=")[0]]


@pytest.mark.parametrize("override,key", [("train.steps=50", "train.steps: 100 there, 50 now"),
                                          ("train.lr=0.001", "train.lr: 0.0001 there, 0.001 now"),
                                          ("loss.divergence=jsd", "loss.divergence: 'forward_kl' there, 'jsd' now")])
def test_other_changes_are_refused_with_the_list(tmp_path, override, key):
    with pytest.raises(ConfigError, match="differs from the run's") as excinfo:
        check_resume(config(tmp_path), config(tmp_path, override, "eval.num_samples=2"), tmp_path / "config.yaml")
    assert key in str(excinfo.value) and "eval.num_samples" not in str(excinfo.value).split(". A resume")[0]


def test_the_learning_rate_may_change_after_a_non_finite_stop(tmp_path):
    run_dir = tmp_path / "run"
    prepare_run_dir(run_dir, config(tmp_path), resume=False).release()
    record_non_finite_stop(run_dir, 3, "3 steps in a row had a non-finite loss")
    prepare_run_dir(run_dir, config(tmp_path, "train.lr=1e-5"), resume=True).release()
    assert load_config(run_dir / "config.yaml").train.lr == 1e-5
    assert not (run_dir / "non_finite_stop.json").exists()  # used up: the next change is refused again
    with pytest.raises(ConfigError, match="train.lr"):
        prepare_run_dir(run_dir, config(tmp_path, "train.lr=1e-6"), resume=True)


def test_a_resume_with_fewer_steps_is_refused_and_config_yaml_is_kept(tmp_path):
    run_dir = tmp_path / "run"
    prepare_run_dir(run_dir, config(tmp_path, "train.steps=4"), resume=False).release()
    before = (run_dir / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="train.steps: 4 there, 2 now"):
        prepare_run_dir(run_dir, config(tmp_path, "train.steps=2"), resume=True)
    assert (run_dir / "config.yaml").read_text() == before


def test_a_run_config_written_before_the_exposure_registry_reads_as_its_policy(tmp_path):
    """atesd 0.1's config.yaml held every policy's settings in one exposure section; a run of it resumes, and
    diagnose, compare and eval --checkpoints read it, with its own policy's settings."""
    from atesd.config import load_run_config

    old = {"method": "atesd", "exposure": {"policy": "controller", "alpha": 1.0, "alpha_min": 0.05, "alpha_max": 1.0,
                                           "hold_steps": 2, "schedule_start": 1.0, "schedule_end": 0.05,
                                           "per_problem": False, "controller": {"lookahead": 3},
                                           "adaback": {"threshold": 0.5}, "seele": {"target_accuracy": 0.5}}}
    (tmp_path / "config.yaml").write_text(json.dumps(old))
    config = load_run_config(tmp_path / "config.yaml")
    assert config.exposure.policy == "controller" and config.exposure.controller.lookahead == 3
