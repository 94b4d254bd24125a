"""Atomic checkpoints: only complete checkpoints are ever published, found by their names (never through
`latest`), and a damaged newest one falls back to the one before; a training state never holds a non-finite
weight and a damaged one names its file."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest
import torch

from atesd.train.checkpoint import (
    LATEST,
    CheckpointError,
    TrainingState,
    checkpoint_dir,
    latest_checkpoint,
    read_training_state,
    resume_from_checkpoint,
    save_checkpoint,
    write_training_state,
)
from atesd.train.update import NonFiniteWeightsError


def writer(payload: str):
    def write(directory):
        (directory / "a.txt").write_text(payload)
        (directory / "b.txt").write_text(payload.upper())

    return write


def crashing_writer(directory):
    (directory / "a.txt").write_text("half")
    raise OSError("disk full")


def listing(run_dir):
    return sorted(p.name for p in checkpoint_dir(run_dir).iterdir())


def test_no_checkpoint_yet(tmp_path):
    assert latest_checkpoint(tmp_path) is None


def test_save_publishes_latest(tmp_path):
    path = save_checkpoint(tmp_path, 3, writer("three"), keep=2)
    assert path == tmp_path / "checkpoints" / "step-0000003"
    assert (checkpoint_dir(tmp_path) / LATEST).read_text() == "step-0000003"
    assert latest_checkpoint(tmp_path) == path
    assert (path / "a.txt").read_text() == "three" and (path / "b.txt").read_text() == "THREE"
    assert listing(tmp_path) == ["latest", "step-0000003"]

    path = save_checkpoint(tmp_path, 10, writer("ten"), keep=2)
    assert latest_checkpoint(tmp_path) == path == tmp_path / "checkpoints" / "step-0000010"
    assert listing(tmp_path) == ["latest", "step-0000003", "step-0000010"]


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path):
    good = save_checkpoint(tmp_path, 1, writer("one"), keep=3)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, crashing_writer, keep=3)

    stray = f".step-0000002.tmp-{os.getpid()}"
    assert listing(tmp_path) == sorted([stray, "latest", "step-0000001"])
    assert (checkpoint_dir(tmp_path) / LATEST).read_text() == "step-0000001"
    assert latest_checkpoint(tmp_path) == good
    assert (good / "a.txt").read_text() == "one" and (good / "b.txt").read_text() == "ONE"

    # the next successful save publishes normally and removes the stray temporary directory
    path = save_checkpoint(tmp_path, 2, writer("two"), keep=3)
    assert latest_checkpoint(tmp_path) == path
    assert (path / "a.txt").read_text() == "two"
    assert listing(tmp_path) == ["latest", "step-0000001", "step-0000002"]


def test_stray_from_another_process_is_cleaned_up(tmp_path):
    save_checkpoint(tmp_path, 1, writer("one"), keep=2)
    stray = checkpoint_dir(tmp_path) / ".step-0000002.tmp-999999"
    stray.mkdir()
    (stray / "a.txt").write_text("partial")
    save_checkpoint(tmp_path, 2, writer("two"), keep=2)
    assert not stray.exists()
    assert listing(tmp_path) == ["latest", "step-0000001", "step-0000002"]


def test_keep_n_pruning(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, writer(str(step)), keep=2)
    assert listing(tmp_path) == ["latest", "step-0000004", "step-0000005"]
    assert latest_checkpoint(tmp_path).name == "step-0000005"
    assert (latest_checkpoint(tmp_path) / "a.txt").read_text() == "5"


def test_keep_one(tmp_path):
    for step in (5, 10, 15):
        save_checkpoint(tmp_path, step, writer(str(step)), keep=1)
    assert listing(tmp_path) == ["latest", "step-0000015"]


def test_same_step_saved_again_replaces_it(tmp_path):
    save_checkpoint(tmp_path, 4, writer("first"), keep=2)
    path = save_checkpoint(tmp_path, 4, writer("second"), keep=2)
    assert (path / "a.txt").read_text() == "second"
    assert listing(tmp_path) == ["latest", "step-0000004"]


def test_a_checkpoint_published_before_latest_was_written_is_found(tmp_path):
    # a kill between the rename of the first checkpoint and the writing of `latest`
    save_checkpoint(tmp_path, 1, writer("one"), keep=2)
    (checkpoint_dir(tmp_path) / LATEST).unlink()
    assert latest_checkpoint(tmp_path).name == "step-0000001"
    save_checkpoint(tmp_path, 2, writer("two"), keep=3)
    (checkpoint_dir(tmp_path) / LATEST).write_text("step-0000001")  # the kill came before `latest` moved on
    assert latest_checkpoint(tmp_path).name == "step-0000002"


@pytest.mark.parametrize("content", ["../../../etc", "step-0000009", "/tmp", ""])
def test_latest_is_never_used_as_a_path(tmp_path, content):
    save_checkpoint(tmp_path, 1, writer("one"), keep=2)
    (checkpoint_dir(tmp_path) / LATEST).write_text(content)
    (checkpoint_dir(tmp_path) / "not-a-step").mkdir()
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path) / "step-0000001"


def test_temporaries_of_latest_left_by_a_kill_are_cleaned_up(tmp_path):
    save_checkpoint(tmp_path, 1, writer("one"), keep=2)
    (checkpoint_dir(tmp_path) / ".latest.tmp-999999").write_text("step-0000002")
    save_checkpoint(tmp_path, 2, writer("two"), keep=2)
    assert listing(tmp_path) == ["latest", "step-0000001", "step-0000002"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names the fsynced files through /proc")
def test_every_checkpoint_file_is_fsynced_before_it_is_published(tmp_path, monkeypatch):
    synced, real_fsync = set(), os.fsync

    def fsync(fd):
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = save_checkpoint(tmp_path, 1, writer("one"), keep=2)
    temporary = str(checkpoint_dir(tmp_path) / f".step-0000001.tmp-{os.getpid()}")
    assert {f"{temporary}/a.txt", f"{temporary}/b.txt", temporary, str(checkpoint_dir(tmp_path))} <= synced
    assert (path / "a.txt").read_text() == "one"


def test_resume_falls_back_from_a_damaged_checkpoint_to_the_one_before(tmp_path, caplog):
    for step in (1, 2):
        save_checkpoint(tmp_path, step, writer(str(step)), keep=2)
    loaded = []

    def load(directory):
        if directory.name == "step-0000002":
            raise CheckpointError(f"{directory}/a.txt cannot be read")
        loaded.append(directory.name)

    with caplog.at_level(logging.WARNING):
        assert resume_from_checkpoint(tmp_path, load).name == "step-0000001"
    assert loaded == ["step-0000001"] and "cannot resume from" in caplog.text and "step-0000002" in caplog.text


def test_resume_without_a_readable_checkpoint_names_each_failure(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        resume_from_checkpoint(tmp_path, lambda directory: None)
    save_checkpoint(tmp_path, 1, writer("one"), keep=2)
    with pytest.raises(CheckpointError, match=r"step-0000001: .*a.txt: truncated"):
        resume_from_checkpoint(tmp_path, lambda directory: (_ for _ in ()).throw(
            CheckpointError(f"{directory}/a.txt: truncated")))


# ---------------------------------------------------------------------------------------- training state

def training_state(weight: float) -> TrainingState:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    weights = {name: torch.full_like(p, weight) for name, p in model.named_parameters()}
    trainer = {"step": 1, "data_position": 4, "skipped_steps": 0, "consecutive_bad_steps": 0,
               "scheduler": {}, "last_probe_nll": 1.0}
    return TrainingState(weights, optimizer.state_dict(), {"policy": "fixed"}, {}, trainer)


EXPECTED = {"weight": torch.Size([2, 2]), "bias": torch.Size([2])}


def test_a_training_state_round_trips(tmp_path):
    write_training_state(tmp_path, training_state(0.5))
    state = read_training_state(tmp_path, EXPECTED)
    assert torch.equal(state.weights["weight"], torch.full((2, 2), 0.5)) and state.trainer["step"] == 1


@pytest.mark.parametrize("damage", ["truncate model.safetensors", "truncate optimizer.json", "delete rng.json",
                                    "empty trainer_state.json", "shrink trainer_state.json"])
def test_a_damaged_training_state_is_a_checkpoint_error_naming_the_file(tmp_path, damage):
    write_training_state(tmp_path, training_state(0.5))
    action, name = damage.split()
    path = tmp_path / name
    if action == "truncate":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif action == "delete":
        path.unlink()
    elif action == "empty":
        path.write_text("")
    else:
        path.write_text(json.dumps({"step": 1}))
    with pytest.raises(CheckpointError, match=re.escape(name)):
        read_training_state(tmp_path, EXPECTED)


def test_weights_of_another_shape_are_a_checkpoint_error(tmp_path):
    write_training_state(tmp_path, training_state(0.5))
    with pytest.raises(CheckpointError, match=r"other shapes \['weight'\]"):
        read_training_state(tmp_path, {**EXPECTED, "weight": torch.Size([3, 2])})


def test_a_non_finite_weight_never_reaches_a_checkpoint(tmp_path):
    with pytest.raises(NonFiniteWeightsError, match="refusing to checkpoint non-finite model weights"):
        save_checkpoint(tmp_path, 1, lambda directory: write_training_state(directory, training_state(float("nan"))),
                        keep=2)
    assert latest_checkpoint(tmp_path) is None
