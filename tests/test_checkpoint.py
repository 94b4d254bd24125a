"""Atomic checkpoints: `latest` only ever names a complete checkpoint; crashes leave the previous one intact."""

from __future__ import annotations

import os

import pytest

from atesd.train.checkpoint import LATEST, checkpoint_dir, latest_checkpoint, save_checkpoint


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


def test_latest_naming_a_missing_directory_is_an_error(tmp_path):
    save_checkpoint(tmp_path, 1, writer("one"), keep=2)
    (checkpoint_dir(tmp_path) / LATEST).write_text("step-0000009")
    with pytest.raises(FileNotFoundError, match="step-0000009"):
        latest_checkpoint(tmp_path)
