"""Run logs: a torn last line is dropped with a warning, a damaged line is named, and a resume's rewrite of the
log is atomic (a kill at that moment leaves the old log whole)."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from atesd.data.problem import DataError
from atesd.train.metrics import MetricsLogger, read_metrics

MAIN = SimpleNamespace(is_main_process=True, log_with=None)  # what MetricsLogger asks of accelerate


def write_rows(path: Path, steps: range, tail: str = "") -> None:
    path.write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in steps) + tail)


def test_a_torn_last_line_is_dropped_with_a_warning_naming_the_file(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, range(1, 4), tail='{"step": 4, "lo')
    with caplog.at_level(logging.WARNING):
        assert [row["step"] for row in read_metrics(path)] == [1, 2, 3]
    assert str(path) in caplog.text and "torn last line 4" in caplog.text


def test_a_torn_multibyte_character_is_a_torn_line_too(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n{"note": "\xc3')
    assert read_metrics(path) == [{"step": 1}]


def test_a_damaged_line_before_the_last_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, range(1, 3), tail="garbage\n" + json.dumps({"step": 3}) + "\n")
    with pytest.raises(DataError, match=r"metrics.jsonl, row 3: not a valid log row"):
        read_metrics(path)


def test_resume_keeps_the_rows_up_to_the_checkpoint_and_appends(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, range(1, 6), tail='{"step": 6, "lo')
    logger = MetricsLogger(path, MAIN, keep_before_step=3)
    logger.log({"step": 4, "loss": float("nan")})
    logger.close()
    assert read_metrics(path) == [{"step": 1, "loss": 0.1}, {"step": 2, "loss": 0.2}, {"step": 3, "loss": 0.3},
                                  {"step": 4, "loss": None}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_a_log_with_nothing_to_drop_is_not_rewritten(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, range(1, 4))
    before = path.stat().st_ino
    MetricsLogger(path, MAIN, keep_before_step=3).close()
    assert path.stat().st_ino == before


# The child rewrites the log as a resume does, and is SIGKILLed at the rename that publishes the new log: the
# new content is complete in its temporary file, the old log still in place.
KILLED_REWRITE = """
import os, signal, sys
from types import SimpleNamespace
def kill_at_the_rename(event, args):
    if event == "os.rename" and str(args[1]).endswith("metrics.jsonl"):
        os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(kill_at_the_rename)
from atesd.train.metrics import MetricsLogger
from pathlib import Path
MetricsLogger(Path(sys.argv[1]), SimpleNamespace(is_main_process=True, log_with=None), keep_before_step=2)
"""


def test_a_kill_during_the_resume_rewrite_leaves_the_whole_old_log(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, range(1, 2001))  # a long history: the rewrite is not instantaneous
    before = path.read_bytes()
    child = subprocess.run([sys.executable, "-c", KILLED_REWRITE, str(path)], timeout=120, capture_output=True,
                           check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    assert path.read_bytes() == before
    assert any(p.name.startswith(".metrics.jsonl.tmp-") for p in tmp_path.iterdir())  # the new log, unpublished
    # the next resume reads the whole old log, keeps its rows up to the checkpoint and cleans the stray up
    MetricsLogger(path, MAIN, keep_before_step=2).close()
    assert [row["step"] for row in read_metrics(path)] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
