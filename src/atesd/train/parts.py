"""The components one training step is made of, as the recipe sets them up and every method step uses them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from atesd.data.prompts import PromptBuilder
from atesd.train.cost import StepCost
from atesd.train.distributed import Processes
from atesd.train.rollouts import RolloutSampler
from atesd.train.scoring import Scorer

# (micro-batches, the loss of one micro-batch, step, the step's cost) -> the update's and the probe's record
UpdateAndProbe = Callable[[list[slice], Callable[[slice], torch.Tensor], int, StepCost], dict[str, Any]]


@dataclass
class StepParts:
    prompts: PromptBuilder
    sampler: RolloutSampler
    scorer: Scorer
    processes: Processes


@dataclass
class StepResult:
    """A step's record (over all processes, what ``metrics.jsonl`` gets) and what this process alone measured
    before it was combined (for `Trainer`'s ``on_local_step`` hook: prompts, grades, per-token KL)."""

    record: dict[str, Any]
    local: dict[str, Any] = field(default_factory=dict)
