"""The interface between the trainer and an exposure policy, and the factory that builds one from the config.

The trainer asks the policy for α before each step and hands it the step's statistics afterwards; the policy
never sees the trainer. Only the main process asks for α (and broadcasts it); every process observes the same
statistics, already averaged over processes. A policy's whole state goes into checkpoints so that a resumed run
takes the same decisions as an uninterrupted one.

A policy with ``per_problem`` true (`ProblemExposurePolicy`: exposure per problem, random exposure per problem,
the peers' rules) answers `alphas(step, views)` instead of `alpha(step)`, one α per problem from what each
problem's rollout showed (its `ProblemView`), and is told each step's own-problem measurements (`nll_wanted`,
`measured`, or `aligned` under the alignment credit) before `observe`. A new rule per problem subclasses
`atesd.exposure.rules.ProblemRule` and is added to `RULES` (docs/architecture.md#adding-an-exposure-rule); the
trainer needs no change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from atesd.config import ExposureConfig
from atesd.exposure.adaback import AdaBackExposure
from atesd.exposure.controller import ControllerExposure
from atesd.exposure.paint import PaintExposure
from atesd.exposure.per_problem import PerProblemExposure, ProblemView
from atesd.exposure.rules import ProblemRule
from atesd.exposure.seele import SeeleExposure
from atesd.exposure.simple import (
    FixedExposure,
    LinearScheduleExposure,
    RandomExposure,
    RandomPerProblemExposure,
)

# The rules per problem by their ``exposure.policy`` name; each is built as ``rule(config, seed)``.
RULES: dict[str, type[ProblemRule]] = {"adaback": AdaBackExposure, "seele": SeeleExposure, "paint": PaintExposure}


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


class ProblemExposurePolicy(Protocol):
    uses_teacher_ref_logp: bool  # whether `measured` needs each problem's g_i
    per_problem: bool  # always true

    def alphas(self, step: int, views: Sequence[ProblemView]) -> list[float]:
        """The α of each problem of `step`, in the order of `views` (decided after the step's rollouts). Asking twice
        for a step gives the same α."""
        ...

    def nll_wanted(self, step: int) -> list[int]:
        """Training-set indices of the problems whose reference NLL under the student prompt to measure before update
        `step` (empty: nothing to measure)."""
        ...

    def measured(self, step: int, nll: Sequence[float], teacher_logps: Sequence[float]) -> None:
        """Those NLLs, in the order of `nll_wanted(step)`, and each problem's g_i (NaN when not measured)."""
        ...

    def observe(self, step: int, stats: Mapping[str, float]) -> dict[str, float]: ...

    def drain_decisions(self) -> list[dict[str, Any]]: ...

    def pending_decisions(self) -> list[dict[str, Any]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


AnyExposurePolicy = ExposurePolicy | ProblemExposurePolicy


def build_exposure_policy(config: ExposureConfig, total_steps: int, seed: int) -> AnyExposurePolicy:
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
    if config.policy in RULES:
        return RULES[config.policy](config, seed)
    raise ValueError(f"unknown exposure policy '{config.policy}'")
