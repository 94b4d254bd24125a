"""Durable, atomic writes: a reader sees the old or the new file or directory, and strays are cleaned up."""

from __future__ import annotations

import os

from atesd.files import atomic_write_text, publish_directory, remove_strays, temporary_path


def test_atomic_write_text_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "latest"
    atomic_write_text(target, "step-0000001")
    atomic_write_text(target, "step-0000002")
    assert target.read_text() == "step-0000002"
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]


def test_publish_directory_replaces_an_existing_one_whole(tmp_path):
    target = tmp_path / "final_model"
    for content in ("first", "second"):
        temporary = temporary_path(target)
        temporary.mkdir()
        (temporary / "weights").write_text(content)
        publish_directory(temporary, target)
        assert (target / "weights").read_text() == content
    assert [p.name for p in tmp_path.iterdir()] == ["final_model"]


def test_remove_strays_deletes_only_temporaries_of_killed_writers(tmp_path):
    kept = ["metrics.jsonl", ".hidden", ".metrics.jsonl.tmp-x", "step-0000001"]
    strays = [".metrics.jsonl.tmp-123", ".config.yaml.tmp-9", ".final_model.old-77"]
    for name in kept + strays:
        (tmp_path / name).write_text("x")
    (tmp_path / f".final_model.tmp-{os.getpid()}").mkdir()
    remove_strays(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
