"""Exposure per problem (ours, docs/method.md#exposure-per-problem): the controller's Beta policy gives each problem
of the batch its own α, from the training state and what that problem's rollout showed, and learns from the
drop of that problem's own reference NLL over the look-ahead.

Read `PerProblemExposure` top to bottom; one student update t:

- `alphas(t, views)`: after the step's rollouts (α only shapes the teacher prompts, which are built after them),
  the six state features of the batch-level controller and three features of each problem (`ProblemView`)
  give one Beta per problem; α_i is its sample, clipped. The first `credited_problems` of the batch are the
  step's credited group: only their α is rewarded and learned from.
- `nll_wanted(t)`: the problems whose reference NLL under the student prompt the trainer measures before update
  t: this step's credited group (ℓ_i before its update) and the group of step t − L (ℓ_i after the L updates
  that began with its own).
- `measured(t, nll, teacher_logps)` takes those NLLs and each problem's g_i (the teacher's log-prob of its
  reference at its α); `observe(t, stats)` moves the state and, once B groups are rewarded,
  R_i = (ℓ_i(t0) − ℓ_i(t0+L)) + λ_gt · g_i, advantages centred within each step (`grouped_advantages`), and
  one REINFORCE step with the entropy hinge updates φ with Adam.

A problem is seen once per epoch, and the paper's budget (100 updates × 32 of 30k problems) is under one epoch:
its own progress can only be measured on the step that trains it and L updates later, hence the two passes.
Decisions come from the policy's own generator; everything goes into checkpoints like the batch-level controller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from atesd.config import ExposureConfig
from atesd.exposure.controller import (
    STATE_FEATURES,
    BetaPolicyNet,
    RunningNormalizer,
    TrainingState,
    reinforce_step,
)
from atesd.exposure.reward import grouped_advantages, problem_progress, teacher_grounding

PROBLEM_FEATURES = ("correct", "length", "log_segments")


@dataclass(frozen=True)
class ProblemView:
    """What the policy knows of one problem of the batch when it chooses that problem's α."""

    key: int  # the problem's index in the training set (stable across a resume)
    correct: bool  # this step's rollout was graded right: the student's current success on it
    length: float  # the rollout's tokens over rollout.max_new_tokens: long or truncated rollouts mark struggles
    segments: int  # m, the reference's segments: how much reasoning it holds, and how fine α's grid on it is
    bucket: str | None = None  # the data's own difficulty tag (problem.meta["bucket"]), for the log only
    rollout: str = ""  # the rollout's text (special tokens left out): what a rule may compare with the reference
    reference: tuple[str, ...] = ()  # the reference's segments as exposure counts them (their number: `segments`)

    def raw(self) -> list[float]:
        return [float(self.correct), self.length, math.log1p(self.segments)]


def problem_columns(keys: Sequence[int], correct: Sequence[bool], segments: Sequence[int],
                    buckets: Sequence[str | None]) -> dict[str, Any]:
    """The per-problem lists every ``decisions.jsonl`` row of a per-problem policy holds, aligned with ``problem``
    (``bucket`` only when the data has one): what `atesd train` and `atesd compare` draw α by difficulty from."""
    columns: dict[str, Any] = {"problem": list(keys), "correct": [int(c) for c in correct], "segments": list(segments)}
    if any(bucket is not None for bucket in buckets):
        columns["bucket"] = list(buckets)
    return columns


@dataclass
class Group:
    """The decisions of one step, one per problem of the batch; the first `credited` are rewarded."""

    step: int
    keys: list[int]
    buckets: list[str | None]
    correct: list[bool]
    segments: list[int]
    alphas: list[float]  # the clipped α each problem's teacher prompt used
    samples: list[float]  # the unclipped Beta draws, whose log-probs the update uses
    means: list[float]  # each problem's Beta mean
    features: list[list[float]]  # normalised state + problem features, per problem
    state: list[float]  # the normalised state features (shared by the step's problems)
    credited: int
    before: list[float] | None = None  # ℓ_i before the update, credited problems
    teacher_logps: list[float] | None = None  # g_i at α_i, credited problems
    progress: list[float] | None = None  # G_lp per credited problem
    grounding: list[float] | None = None  # G_gt per credited problem
    rewards: list[float] | None = None

    def row(self, logged_at: int | None) -> dict[str, Any]:
        """Its ``decisions.jsonl`` row: one per step, per-problem lists aligned with ``problem`` (R, G_lp and
        G_gt for the first ``credited`` only); steps are counted like ``metrics.jsonl``."""
        return {"step": self.step + 1, **problem_columns(self.keys, self.correct, self.segments, self.buckets),
                "alpha": self.alphas, "mean": self.means, "credited": self.credited, "R": self.rewards,
                "G_lp": self.progress, "G_gt": self.grounding, "state": dict(zip(STATE_FEATURES, self.state)),
                "logged_at": logged_at}


class PerProblemExposure:
    """The learned exposure per problem; see the module docstring for the flow."""

    per_problem = True

    def __init__(self, config: ExposureConfig, total_steps: int, seed: int) -> None:
        self.exposure, self.settings = config, config.controller
        self.net = BetaPolicyNet(len(STATE_FEATURES) + len(PROBLEM_FEATURES), self.settings.hidden_sizes,
                                 self.settings.initial_beta, seed)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.settings.lr)
        self.rng = np.random.default_rng([seed, 0xC1])
        self.state = TrainingState(total_steps, self.settings.state_ema_decay)
        self.problem_normalizer = RunningNormalizer(len(PROBLEM_FEATURES))
        self.waiting: list[Group] = []  # decided, reward not complete yet
        self.rewarded: list[Group] = []  # reward complete, not yet used by an update
        self.alignment = self.settings.credit == "alignment"  # each problem credited the same step (ours)
        # G_gt needs each g_i; the alignment credit has no G_gt
        self.uses_teacher_ref_logp = self.settings.teacher_grounded_weight > 0 and not self.alignment
        self.updates = 0
        self._rows: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ acting

    def alphas(self, step: int, views: Sequence[ProblemView]) -> list[float]:
        """One α per problem of the step (in the order of `views`); asking twice for a step gives the same."""
        if self.waiting and self.waiting[-1].step == step:
            return self.waiting[-1].alphas
        state = self.state.features(step, self.settings.feature_clip)
        features = [state + self.problem_normalizer.normalize(view.raw(), self.settings.feature_clip)
                    for view in views]
        with torch.no_grad():
            a, b = self.net(torch.tensor(features, dtype=torch.float64))
        samples = [float(self.rng.beta(ai, bi)) for ai, bi in zip(a.tolist(), b.tolist())]
        for view in views:  # after deciding: a problem's features are normalised by what came before it
            self.problem_normalizer.update(view.raw())
        group = Group(step, [v.key for v in views], [v.bucket for v in views], [v.correct for v in views],
                      [v.segments for v in views],
                      [min(max(x, self.exposure.alpha_min), self.exposure.alpha_max) for x in samples], samples,
                      (a / (a + b)).tolist(), features, state,
                      len(views) if self.alignment else min(self.settings.credited_problems, len(views)))
        self.waiting.append(group)
        return group.alphas

    def policy_means(self, step: int, views: Sequence[ProblemView]) -> list[float]:
        """The Beta mean the policy would sample from for each of `views` at `step` (for inspection)."""
        state = self.state.features(step, self.settings.feature_clip)
        features = [state + self.problem_normalizer.normalize(v.raw(), self.settings.feature_clip) for v in views]
        with torch.no_grad():
            a, b = self.net(torch.tensor(features, dtype=torch.float64))
        return (a / (a + b)).tolist()

    # ------------------------------------------------------------------ credit

    def nll_wanted(self, step: int) -> list[int]:
        """Keys of the problems whose reference NLL to measure before update `step`: this step's credited group
        (ℓ before), then the credited group of step − L (ℓ after the look-ahead), when there is one."""
        if self.alignment:
            return []
        current, due = self._group(step), self._group(step - self.settings.lookahead)
        return current.keys[:current.credited] + (due.keys[:due.credited] if due is not None else [])

    def measured(self, step: int, nll: Sequence[float], teacher_logps: Sequence[float]) -> None:
        """The NLLs of `nll_wanted(step)` (in its order) and g_i of every problem of the step (NaN when not
        measured), taken before update `step`."""
        if self.alignment:  # credited after the update instead (`aligned`)
            return
        current, due = self._group(step), self._group(step - self.settings.lookahead)
        current.before = [float(v) for v in nll[:current.credited]]
        current.teacher_logps = [float(g) for g in teacher_logps[:current.credited]]
        if due is None:
            return
        after = nll[current.credited:]
        due.progress = [problem_progress(b, float(a)) for b, a in zip(due.before, after)]
        due.grounding = [teacher_grounding([g], self.settings.discount) for g in due.teacher_logps]
        due.rewards = [p + self.settings.teacher_grounded_weight * g for p, g in zip(due.progress, due.grounding)]
        self.waiting.remove(due)
        self.rewarded.append(due)
        self._rows.append(due.row(logged_at=step + 1))

    def aligned(self, step: int, credits: Sequence[float]) -> None:
        """The alignment credit (`controller.credit: alignment`, ours): each problem's first-order effect on the
        probe loss, measured before update `step` (`atesd.train.signals`), is its reward at once: R_i = c_i."""
        group = self._group(step)
        group.progress = group.rewards = [float(c) for c in credits]
        self.waiting.remove(group)
        self.rewarded.append(group)
        self._rows.append(group.row(logged_at=step + 1))

    def _group(self, step: int) -> Group | None:
        return next((group for group in self.waiting if group.step == step), None)

    # ------------------------------------------------------------------ learning

    def observe(self, step: int, stats: Mapping[str, float]) -> dict[str, float]:
        self.state.observe(step, stats)
        return self._update() if len(self.rewarded) >= self.settings.decisions_per_update else {}

    def _update(self) -> dict[str, float]:
        """One REINFORCE step on the credited decisions of the B oldest rewarded groups."""
        size = self.settings.decisions_per_update
        batch, self.rewarded = self.rewarded[:size], self.rewarded[size:]
        features = torch.tensor([f for g in batch for f in g.features[:g.credited]], dtype=torch.float64)
        samples = torch.tensor([x for g in batch for x in g.samples[:g.credited]], dtype=torch.float64)
        rewards = [torch.tensor(g.rewards, dtype=torch.float64) for g in batch]
        record = reinforce_step(self.net, self.optimizer, features, samples,
                                grouped_advantages(rewards, self.settings.advantage_eps), self.settings)
        self.updates += 1
        return {**record, "controller_reward_mean": float(torch.cat(rewards).mean()),
                "controller_updates": self.updates}

    # ------------------------------------------------------------------ logging

    def drain_decisions(self) -> list[dict[str, Any]]:
        rows, self._rows = self._rows, []
        return rows

    def pending_decisions(self) -> list[dict[str, Any]]:
        return [group.row(logged_at=None) for group in self.waiting]

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": "per_problem",
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "state": self.state.state_dict(),
            "problem_normalizer": self.problem_normalizer.state_dict(),
            "waiting": [asdict(g) for g in self.waiting],
            "rewarded": [asdict(g) for g in self.rewarded],
            "updates": self.updates,
            "rows": list(self._rows),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("policy") != "per_problem":
            raise ValueError(f"checkpoint holds a '{state.get('policy')}' exposure policy, config says "
                             "'per_problem' (exposure.per_problem: true)")
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.state.load_state_dict(state["state"])
        self.problem_normalizer.load_state_dict(state["problem_normalizer"])
        self.waiting = [Group(**g) for g in state["waiting"]]
        self.rewarded = [Group(**g) for g in state["rewarded"]]
        self.updates = state["updates"]
        self._rows = list(state["rows"])
