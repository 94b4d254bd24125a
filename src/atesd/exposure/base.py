"""The interface between the trainer and an exposure policy, and the factory that builds one from the config.

The trainer asks the policy for α before each step and hands it the step's statistics afterwards; the policy
never sees the trainer. Only the main process asks for α (and broadcasts it); every process observes the same
statistics, already averaged over processes. A policy's whole state goes into checkpoints so that a resumed run
takes the same decisions as an uninterrupted one.

A policy with ``per_problem`` true (`PerProblemExposure`, `RandomPerProblemExposure`) answers `alphas(step, views)`
instead of `alpha(step)`, one α per problem, and is told each step's own-problem measurements (`nll_wanted`,
`measured`, or `aligned` under the alignment credit) before `observe`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from atesd.config import ExposureConfig
from atesd.exposure.controller import ControllerExposure
from atesd.exposure.per_problem import PerProblemExposure
from atesd.exposure.simple import (
    FixedExposure,
    LinearScheduleExposure,
    RandomExposure,
    RandomPerProblemExposure,
)


class ExposurePolicy(Protocol):
    uses_teacher_ref_logp: bool  # whether `observe` needs g_t (teacher_ref_logp) at every step
    per_problem: bool  # one α per problem of the batch (`PerProblemExposure`) rather than one per step

    def alpha(self, step: int) -> float:
        """The exposure to use for `step` (0-based optimizer step). Asking twice for a step gives the same α."""
        ...

    def observe(self, step: int, stats: Mapping[str, float]) -> dict[str, float]:
        """Take the statistics measured at `step` (docs/method.md#statistics); returns extra metrics for the step's record."""
        ...

    def drain_decisions(self) -> list[dict[str, Any]]:
        """Rows for ``decisions.jsonl`` that became final since the last call (empty for per-step policies)."""
        ...

    def pending_decisions(self) -> list[dict[str, Any]]:
        """Rows of decisions whose reward is still incomplete (written once, at the end of a run)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


def build_exposure_policy(config: ExposureConfig, total_steps: int,
                          seed: int) -> ExposurePolicy | PerProblemExposure | RandomPerProblemExposure:
    """The policy named by ``config.policy``; `total_steps` sets schedules and the progress feature."""
    if config.policy == "fixed":
        return FixedExposure(config.alpha)
    if config.policy == "random" and config.per_problem:
        return RandomPerProblemExposure(config.alpha_min, config.alpha_max, seed)
    if config.policy == "random":
        return RandomExposure(config.alpha_min, config.alpha_max, config.hold_steps, seed)
    if config.policy == "schedule":
        return LinearScheduleExposure(config.schedule_start, config.schedule_end, total_steps)
    if config.policy == "controller" and config.per_problem:
        return PerProblemExposure(config, total_steps, seed)
    if config.policy == "controller":
        return ControllerExposure(config, total_steps, seed)
    raise ValueError(f"unknown exposure policy '{config.policy}'")
