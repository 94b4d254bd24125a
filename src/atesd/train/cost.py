"""What one training step cost: seconds per part and tokens through the scoring forwards.

A step makes one `StepCost`, hands it to the parts that do the work (rollouts, teacher and student forwards,
the probe), and puts ``cost.record(...)`` into its record, so that every row of ``metrics.jsonl`` says where
its time went (docs/performance.md reads these columns).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from atesd.train.distributed import Processes

PARTS = ("rollout", "teacher", "probe", "exposure")


class StepCost:
    """Seconds per part since the step started, and the tokens this process sent through scoring forwards."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.forward_tokens = 0

    @contextlib.contextmanager
    def timed(self, part: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - started

    def count_forward(self, tokens: int) -> None:
        self.forward_tokens += tokens

    def record(self, processes: Processes) -> dict[str, float | int]:
        """The cost columns: forward tokens over all processes, and this process's seconds per part; the
        update's time is what the step spent outside the other parts."""
        step_time = time.perf_counter() - self.started
        forward_tokens = processes.sums({"forward_tokens": float(self.forward_tokens)})["forward_tokens"]
        parts = self.seconds
        return {"forward_tokens": int(forward_tokens), "rollout_time": parts["rollout"],
                "teacher_time": parts["teacher"], "update_time": step_time - sum(parts.values()),
                "probe_time": parts["probe"], "exposure_time": parts["exposure"], "step_time": step_time}
