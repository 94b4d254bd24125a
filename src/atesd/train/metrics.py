"""Run logs as JSON lines: per-step metrics in ``metrics.jsonl`` (plus the trackers of ``run.report_to``), exposure
decisions in ``decisions.jsonl``.

Trackers are accelerate's (tensorboard, wandb, trackio), each started with the run's resolved config, flattened to
``section.key`` entries, and named after the run directory: tensorboard writes under ``<run>/trackers/``, wandb
keeps its files there too (online, or offline with ``WANDB_MODE=offline``), and trackio in its own local store
(``TRACKIO_DIR``), project ``atesd``.

Only the main process writes. Rows are appended and flushed one at a time, so a kill mid-row leaves at worst a
torn last line, which `read_metrics` drops with a warning naming the file. On start the log keeps only the rows
the run keeps (on resume, those up to the checkpoint's step: the steps after it are about to be run again;
none on a fresh start); when that drops anything, the log is rewritten atomically (`atesd.files`), so a kill at
that moment leaves the old log whole and the next ``--resume`` reads it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from atesd.data.problem import DataError
from atesd.files import atomic_write_text, remove_strays

logger = logging.getLogger(__name__)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines log ([] when there is none). A torn last line (a kill while it was written) is
    dropped with a warning; a damaged line before it is an error naming the file and the line."""
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    rows = []
    last = max((number for number, line in enumerate(lines) if line.strip()), default=-1)
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
            if not isinstance(row, dict):
                raise TypeError(f"expected a JSON object, got {type(row).__name__}")
        except (ValueError, TypeError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if number == last:
                logger.warning("%s: dropped its torn last line %d (a run was killed while writing it)", path,
                               number + 1)
                break
            raise DataError(f"not a valid log row ({error}); the log was damaged or edited: restore or delete "
                            "that line", source=str(path), row=number + 1) from None
        rows.append(row)
    return rows


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


TRACKERS_DIR = "trackers"
PROJECT = "atesd"


def start_trackers(accelerator: Accelerator, run_dir: Path, config: dict[str, Any]) -> None:
    """Start `accelerator`'s trackers for the run in `run_dir`, with its config flattened (see the module
    docstring); the accelerator's project directory is ``<run_dir>/trackers`` (`atesd.train.recipe`)."""
    name = run_dir.name
    accelerator.init_trackers(PROJECT, config=flat_config(config), init_kwargs={
        "tensorboard": {}, "wandb": {"name": name, "dir": str(run_dir / TRACKERS_DIR)}, "trackio": {"name": name}})


def flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested config as ``{"section.key": value}`` with the scalar values trackers take (lists, None and other
    values as their JSON text)."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


class MetricsLogger:
    """Appends rows to `path`. `step_key` names the field holding the step a row was written at (rows without
    one are dropped on resume); `trackers` also sends numeric fields to accelerate's trackers."""

    def __init__(self, path: Path, accelerator: Accelerator, keep_before_step: int = 0, step_key: str = "step",
                 trackers: bool = True, tracker_config: dict[str, Any] | None = None) -> None:
        self.path = path
        self.accelerator = accelerator
        self.trackers = trackers and bool(accelerator.log_with)
        self._file = None
        if accelerator.is_main_process:
            remove_strays(path.parent, path.name)  # temporaries of a rewrite that was killed
            kept = _jsonl([row for row in read_metrics(path)
                           if row.get(step_key) is not None and row[step_key] <= keep_before_step])
            if not path.is_file() or path.read_text(encoding="utf-8", errors="replace") != kept:
                atomic_write_text(path, kept)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run, closed in close()
            if self.trackers:
                start_trackers(accelerator, path.parent, tracker_config or {})

    def log(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self.trackers:
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.accelerator.log(numbers, step=record["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            if self.trackers:
                self.accelerator.end_training()
