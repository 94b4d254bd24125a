"""A linear schedule of exposure: α moves from ``schedule_start`` at the first step to ``schedule_end`` at the last,
a new value every step (ours: the paper names the ablation without its endpoints; the default goes from full
exposure down to 0.05)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from atesd.exposure.base import BatchPolicy, DecisionReading, ExposurePolicy, ExposureSettings, register


@register
class ScheduleSettings(ExposureSettings):
    """``exposure.policy: schedule``."""

    policy: Literal["schedule"] = "schedule"
    schedule_start: float = Field(1.0, ge=0, le=1, description="alpha at the first step (ours).")
    schedule_end: float = Field(0.05, ge=0, le=1, description="alpha at the last step (ours).")

    reads_run_length: ClassVar[bool] = True

    def build(self, total_steps: int, seed: int) -> ExposurePolicy:
        return LinearScheduleExposure(self.schedule_start, self.schedule_end, total_steps)

    def alpha_range(self) -> tuple[float, float]:
        return min(self.schedule_start, self.schedule_end), max(self.schedule_start, self.schedule_end)

    def reading(self) -> DecisionReading:
        return DecisionReading("schedule", 1, follows_progress=True)


class LinearScheduleExposure(BatchPolicy):
    """α from `start` at step 0 to `end` at the last of `total_steps`, linearly."""

    def __init__(self, start: float, end: float, total_steps: int) -> None:
        self.start, self.end = start, end
        self.total_steps = total_steps

    def alpha(self, step: int) -> float:
        progress = min(step / max(self.total_steps - 1, 1), 1.0)
        return self.start + (self.end - self.start) * progress

    def state_dict(self) -> dict[str, Any]:
        return {"policy": "schedule"}  # α is a function of the step alone

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
