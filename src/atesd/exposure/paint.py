"""PAINT's overlap rule per rollout (arXiv 2604.26573; docs/method.md#paint) as an exposure rule: the more of the
reference the student's rollout already holds, the less of it the teacher is shown. The paper leaves the details
open; ours:

- a reference segment (the unit α counts, `templates.segment_unit`) is *present* in the rollout when every number
  written in it (a run of digits with an optional decimal part, compared as written) is among the rollout's numbers,
  or, for a segment without a number, when its text without whitespace is part of the rollout's text without
  whitespace;
- the overlap o is the share of the reference's segments present in the rollout (0 for a reference with none);
- α = 1 − o, clipped to [α_min, α_max].

Exposure is a prefix of the reference, so α = 1 − o shows as much of the reference as the rollout lacks, not the
segments it lacks (PAINT hides what overlaps). Deterministic, and nothing is kept between steps.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from atesd.exposure.base import ClippedSettings, ExposurePolicy, Preset, ProblemView, register
from atesd.exposure.rules import ProblemRule


@register
class PaintSettings(ClippedSettings):
    """``exposure.policy: paint`` (no setting of its own)."""

    policy: Literal["paint"] = "paint"

    presets: ClassVar[dict[str, Preset]] = {"paint": Preset("opsd.yaml", ("exposure.policy=paint",))}

    def build(self, total_steps: int, seed: int) -> ExposurePolicy:
        return PaintExposure(self, seed)

NUMBER = re.compile(r"\d+(?:\.\d+)?")
WHITESPACE = re.compile(r"\s+")


def overlap(rollout: str, segments: Sequence[str]) -> float:
    """The share of `segments` present in `rollout` (see the module docstring)."""
    if not segments:
        return 0.0
    numbers, text = set(NUMBER.findall(rollout)), WHITESPACE.sub("", rollout)

    def present(segment: str) -> bool:
        wanted = NUMBER.findall(segment)
        return all(n in numbers for n in wanted) if wanted else WHITESPACE.sub("", segment) in text

    return sum(present(segment) for segment in segments) / len(segments)


class PaintExposure(ProblemRule):
    salt = 0x9A17  # unused: the rule draws nothing

    def choose(self, step: int, views: Sequence[ProblemView]) -> tuple[list[float], dict[str, list[Any]]]:
        overlaps = [overlap(view.rollout, view.reference) for view in views]
        return [1.0 - o for o in overlaps], {"overlap": overlaps}
