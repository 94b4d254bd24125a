"""The interface between the trainer and an exposure policy, and the fixed-α policy (α = 1 is OPSD).

The trainer asks the policy for α before each step and hands it the step's statistics afterwards; the policy
never sees the trainer. A policy's whole state goes into checkpoints so that a resumed run takes the same
decisions as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from atesd.config import ExposureConfig


class ExposurePolicy(Protocol):
    def alpha(self, step: int) -> float:
        """The exposure to use for `step` (0-based optimizer step)."""
        ...

    def observe(self, step: int, stats: Mapping[str, float]) -> None:
        """The statistics measured at `step` (SPEC §3), already averaged over processes."""
        ...

    def state_dict(self) -> dict[str, Any]:
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


class FixedExposure:
    """The same α at every step."""

    def __init__(self, alpha: float) -> None:
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
            raise ValueError(f"exposure alpha must be in [0, 1], got {alpha!r}")
        self.fixed_alpha = float(alpha)

    def alpha(self, step: int) -> float:
        return self.fixed_alpha

    def observe(self, step: int, stats: Mapping[str, float]) -> None:
        pass  # a fixed policy learns nothing

    def state_dict(self) -> dict[str, Any]:
        return {"policy": "fixed", "alpha": self.fixed_alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("alpha") != self.fixed_alpha:
            raise ValueError(f"checkpoint was taken with fixed alpha {state.get('alpha')}, config says "
                             f"{self.fixed_alpha}")


def build_exposure_policy(config: ExposureConfig) -> ExposurePolicy:
    if config.policy == "fixed":
        return FixedExposure(config.alpha)
    raise ValueError(f"unknown exposure policy '{config.policy}'")
