"""Run logs as JSON lines: per-step metrics in ``metrics.jsonl`` (plus any configured trackers), exposure
decisions in ``decisions.jsonl``.

Only the main process writes. On resume, rows written after the checkpoint's step are dropped first, since
those steps are about to be run again.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from accelerate import Accelerator


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLogger:
    """Appends rows to `path`. `step_key` names the field holding the step a row was written at (rows without
    one are dropped on resume); `trackers` also sends numeric fields to accelerate's trackers."""

    def __init__(self, path: Path, accelerator: Accelerator, keep_before_step: int = 0, step_key: str = "step",
                 trackers: bool = True) -> None:
        self.path = path
        self.accelerator = accelerator
        self.trackers = trackers and bool(accelerator.log_with)
        self._file = None
        if accelerator.is_main_process:
            kept = [row for row in read_metrics(path)
                    if row.get(step_key) is not None and row[step_key] <= keep_before_step]
            path.write_text("".join(json.dumps(row) + "\n" for row in kept))
            self._file = open(path, "a")  # noqa: SIM115 - held open for the run, closed in close()
            if self.trackers:
                accelerator.init_trackers(path.parent.name)

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
