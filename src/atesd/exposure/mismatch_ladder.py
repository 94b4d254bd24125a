"""The mismatch ladder (ours, docs/method.md#the-mismatch-ladder): climb the exposure while the teacher's targets
stay within reach of the student, and stop at the first rung where they do not.

The paper's premise is that a teacher shown too much of the reference gives targets the student cannot absorb, and
its measure of that is the mismatch: the per-token KL from the teacher at α to the student on the student's own
rollouts (docs/method.md#statistics), which every distillation step already computes for its loss (``kl_mean``).
The ladder reads it and needs no forward of its own:

- it trains ``hold_steps`` updates at each rung of ``rungs`` (ascending exposures), starting at the lowest, and
  takes the mean ``kl_mean`` of those updates as the rung's mismatch m_k;
- the lowest rung's m_0 is the mismatch the student lives with at the least exposure (the teacher prompt's format
  and the smallest share of the reference);
- a rung is accepted when m_k ≤ ``cap`` · m_0, and the ladder climbs to the next; at the first rung that is not,
  it steps back to the highest accepted rung and stays there for the rest of the run (it also stays at the top).

So the exposure ends at the largest rung whose mismatch is within ``cap`` times the least one: a regime where more
of the reference only sharpens the targets climbs to the top, one where a rung makes the targets jump out of the
student's reach (a teacher that writes steps the student cannot execute) stops below it after ``hold_steps`` updates
at that rung. The defaults (rungs 0, 0.25, 0.5, 0.75, 1; 4 updates a rung; a cap of 3) are ours.

The mismatch cannot see a teacher whose targets are close to the student's but wrong where it counts (one that boxes
the answer it read whatever the chain says: a few tokens of a long answer). The accuracy guard
(``accuracy_drop``, off by default, ours) watches what such targets do to the student instead: its accuracy on its
own rollouts, which every step already grades (``rollout_accuracy``). Each rung above the lowest keeps the mean
accuracy of the 2 · ``hold_steps`` updates before the ladder first trained at it; once the ladder has trained
2 · ``hold_steps`` updates at a rung (and then every ``hold_steps``), it steps down one rung, and climbs no more,
when the accuracy of the last 2 · ``hold_steps`` updates has fallen more than ``accuracy_drop`` below that
reference. Deterministic; the ladder's position, the rung's running window, the last accuracies and the references
go into checkpoints.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping
from itertools import pairwise
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from atesd.exposure.base import BatchPolicy, DecisionReading, ExposurePolicy, ExposureSettings, Preset, register


@register
class MismatchLadderSettings(ExposureSettings):
    """``exposure.policy: mismatch_ladder``."""

    policy: Literal["mismatch_ladder"] = "mismatch_ladder"
    rungs: list[float] = Field([0.0, 0.25, 0.5, 0.75, 1.0], min_length=2, max_length=101, description="The "
                               "exposures tried, ascending, the lowest first: its mismatch is the yardstick.")
    hold_steps: int = Field(4, ge=1, le=10_000, description="Updates trained at each rung; its mismatch is their mean "
                            "kl_mean.")
    cap: float = Field(3.0, gt=1, description="A rung is accepted while its mismatch is at most cap times the "
                       "lowest rung's (ours).")
    accuracy_drop: float | None = Field(None, gt=0, lt=1, description="The accuracy guard (ours): step down one rung "
                                        "when the rollout accuracy of the last 2 hold_steps updates falls more than "
                                        "this below its mean before the rung was first trained; null: no guard.")

    presets: ClassVar[dict[str, Preset]] = {
        "mismatch-ladder": Preset("opsd.yaml", ("exposure.policy=mismatch_ladder",)),
        "guarded-ladder": Preset("opsd.yaml", ("exposure.policy=mismatch_ladder", "exposure.accuracy_drop=0.06")),
    }

    @field_validator("rungs")
    @classmethod
    def _rungs_ascend_within_the_reference(cls, rungs: list[float]) -> list[float]:
        if any(not 0 <= alpha <= 1 for alpha in rungs):
            raise ValueError(f"rungs {rungs} leave [0, 1]: an exposure is a share of the reference")
        if any(high <= low for low, high in pairwise(rungs)):
            raise ValueError(f"rungs {rungs} do not ascend: the ladder climbs from the lowest exposure")
        return rungs

    def build(self, total_steps: int, seed: int) -> ExposurePolicy:
        return MismatchLadder(self.rungs, self.hold_steps, self.cap, self.accuracy_drop)

    def alpha_range(self) -> tuple[float, float]:
        return self.rungs[0], self.rungs[-1]

    def reading(self) -> DecisionReading:
        return DecisionReading("mismatch_ladder", self.hold_steps, verdicts=True)

    def warnings(self, total_steps: int, rollouts_per_step: int) -> list[str]:
        if total_steps < 2 * self.hold_steps:
            return [(f"exposure.hold_steps {self.hold_steps}: a run of {total_steps} updates ends before the "
                     f"ladder measures its second rung, so it trains at alpha {self.rungs[0]:g} throughout; lower "
                     "exposure.hold_steps or use exposure.policy=fixed")]
        if self.accuracy_drop is None:
            return []
        if total_steps <= 3 * self.hold_steps:
            return [(f"exposure.accuracy_drop: the guard first checks a rung after 2 x hold_steps updates at it, so "
                     f"a run of {total_steps} updates (at most {3 * self.hold_steps} with hold_steps "
                     f"{self.hold_steps}) ends before it can act; lower exposure.hold_steps or unset the guard")]
        window = 2 * self.hold_steps * rollouts_per_step
        chance = guard_chance_spread(window)
        if self.accuracy_drop < chance:
            return [(f"exposure.accuracy_drop {self.accuracy_drop:g}: the guard compares two means of {window} graded "
                     f"rollouts (2 x hold_steps updates of {rollouts_per_step}), which differ by chance alone by up to "
                     f"{chance:.3f} (one standard deviation), more than the drop, so it may step down on noise; raise "
                     "train.batch_size, exposure.hold_steps or exposure.accuracy_drop")]
        return []


def guard_chance_spread(window: int) -> float:
    """The standard deviation of the difference between two means of `window` graded rollouts each when nothing has
    changed, at its largest (accuracy 0.5): sqrt(2 · 0.25 / window). The guard's drop should stand above it."""
    return math.sqrt(0.5 / window)


class MismatchLadder(BatchPolicy):
    """One α for the batch: the current rung's, until the ladder settles (or its guard steps it down)."""

    def __init__(self, rungs: list[float], hold_steps: int, cap: float, accuracy_drop: float | None = None) -> None:
        self.rungs, self.hold_steps, self.cap, self.accuracy_drop = list(rungs), hold_steps, cap, accuracy_drop
        self.rung = 0  # the index of the exposure trained now
        self.accepted = 0  # the highest rung accepted so far
        self.settled = False
        self.least_mismatch: float | None = None  # m_0
        self.window: list[float] = []  # the current rung's kl_mean so far
        self.accuracies: deque[float] = deque(maxlen=2 * hold_steps)  # the guard's: the last steps' accuracy
        self.references: dict[int, float] = {}  # the guard's: a rung's accuracy before it was first trained
        self.at_rung = 0  # updates trained at the current rung since the ladder last moved to it
        self._rows: list[dict[str, Any]] = []

    def alpha(self, step: int) -> float:
        return self.rungs[self.rung]

    def observe(self, step: int, stats: Mapping[str, float]) -> dict[str, float]:
        rung = self.rung
        if self.accuracy_drop is not None:
            self.accuracies.append(float(stats["rollout_accuracy"]))
        logged = {} if self.settled else self._climb(step, float(stats["kl_mean"]))
        if self.rung != rung:
            self._moved_to(self.rung)
            return logged
        self.at_rung += 1
        if self.accuracy_drop is not None:
            logged |= self._guard(step, self.accuracy_drop)
        return logged

    def _climb(self, step: int, kl_mean: float) -> dict[str, float]:
        self.window.append(kl_mean)
        if len(self.window) < self.hold_steps:
            return {}
        mismatch, self.window = statistics.fmean(self.window), []
        tried = self.rung
        if self.least_mismatch is None:
            self.least_mismatch = mismatch
        if self.least_mismatch > 0:
            ratio = mismatch / self.least_mismatch
        else:  # a lowest rung whose targets are the student's own: any mismatch above it is out of reach
            ratio = float("inf") if mismatch > 0 else 1.0
        accepted = ratio <= self.cap
        if accepted:
            self.accepted = tried
            self.settled = tried == len(self.rungs) - 1
            self.rung = tried if self.settled else tried + 1
        else:
            self.rung, self.settled = self.accepted, True
        self._rows.append({"step": step + 1, "tried_alpha": self.rungs[tried], "mismatch": mismatch,
                           "ratio": ratio, "accepted": accepted, "alpha": self.rungs[self.rung],
                           "settled": self.settled, "logged_at": step + 1})
        return {"ladder_ratio": ratio}

    def _moved_to(self, rung: int) -> None:
        self.at_rung = 0
        if self.accuracy_drop is not None and rung not in self.references and self.accuracies:
            self.references[rung] = statistics.fmean(self.accuracies)

    def _guard(self, step: int, drop: float) -> dict[str, float]:
        """Step down one rung, and climb no more, when the accuracy since the ladder came to this rung has fallen
        more than `drop` below the accuracy before it first came."""
        window = 2 * self.hold_steps
        reference = self.references.get(self.rung)
        if self.rung == 0 or reference is None or self.at_rung < window or self.at_rung % self.hold_steps:
            return {}
        accuracy = statistics.fmean(self.accuracies)
        if accuracy >= reference - drop:
            return {}
        tried, self.rung, self.settled = self.rung, self.rung - 1, True
        self._moved_to(self.rung)
        self._rows.append({"step": step + 1, "tried_alpha": self.rungs[tried], "accuracy": accuracy,
                           "reference_accuracy": reference, "accepted": False, "alpha": self.rungs[self.rung],
                           "settled": True, "logged_at": step + 1})
        return {"ladder_accuracy_drop": reference - accuracy}

    def drain_decisions(self) -> list[dict[str, Any]]:
        rows, self._rows = self._rows, []
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {"policy": "mismatch_ladder", "rungs": self.rungs, "rung": self.rung, "accepted": self.accepted,
                "settled": self.settled, "least_mismatch": self.least_mismatch, "window": list(self.window),
                "accuracies": list(self.accuracies), "references": {str(k): v for k, v in self.references.items()},
                "at_rung": self.at_rung}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("policy") != "mismatch_ladder" or state.get("rungs") != self.rungs:
            raise ValueError(f"checkpoint holds a '{state.get('policy')}' exposure policy with rungs "
                             f"{state.get('rungs')}, config says the mismatch ladder with rungs {self.rungs}")
        self.rung, self.accepted, self.settled = state["rung"], state["accepted"], state["settled"]
        self.least_mismatch, self.window = state["least_mismatch"], list(state["window"])
        self.accuracies = deque(state.get("accuracies", []), maxlen=2 * self.hold_steps)
        self.references = {int(k): v for k, v in state.get("references", {}).items()}
        self.at_rung = state.get("at_rung", 0)
