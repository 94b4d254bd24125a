"""The interface between the recipe and an exposure policy, and the registry every policy joins.

**The protocol.** Every step the recipe asks the policy for the α of each problem of its batch (`alphas`, with
each problem's `ProblemView`: what its rollout showed and its reference's segments); a batch-level policy
(`BatchPolicy`) returns one α for all, and is asked on the main process only, which hands its answer to every
process. Before the update the recipe measures what the policy asks for (`nll_wanted` → `measured`; the hint
reliance, `hinted_wanted` → `relied`; the alignment credit → `aligned`), and after it hands over the step's
statistics, averaged over processes (`observe`). A policy whose teacher mixes two exposures per token says so in
its settings (`ExposureSettings.token_mix`). The policy
never sees the recipe. Its whole state goes into checkpoints, so that a resumed run takes the same decisions as an
uninterrupted one.

**The registry.** A policy is one module under ``exposure/``: its settings model (a subclass of
`ExposureSettings` whose ``policy`` field is a one-value Literal, decorated with `register`) and the policy it
builds. The settings model says what the policy is to the rest of atesd: the methods it applies to, whether its
decisions read the run's length, its ``atesd compare`` presets, how ``atesd diagnose`` reads its decisions, the
signals it needs measured. ``exposure`` in a config is the union of the registered settings models, told apart by
``policy`` (`atesd.config`). Registering a policy is one import line in ``atesd/exposure/__init__.py``
(docs/architecture.md#adding-an-exposure-rule); nothing else in atesd names it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import torch
from pydantic import Field, model_validator

from atesd.settings import Section


@dataclass(frozen=True)
class ProblemView:
    """What a policy knows of one problem of the batch when it chooses that problem's α."""

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


class ExposurePolicy(Protocol):
    uses_teacher_ref_logp: bool  # whether `observe` (or `measured`) needs g_t (g_i) at every step
    single_process: bool  # decides from each process's own problems: runs without data parallelism

    def alphas(self, step: int, views: Sequence[ProblemView]) -> list[float]:
        """The α of each problem of `step` (0-based optimizer step), in the order of `views`, decided after the
        step's rollouts. Asking twice for a step gives the same α."""
        ...

    def nll_wanted(self, step: int) -> list[int]:
        """Training-set indices of the problems whose reference NLL under the student prompt to measure before update
        `step` (empty: nothing to measure)."""
        ...

    def measured(self, step: int, nll: Sequence[float], teacher_logps: Sequence[float]) -> None:
        """Those NLLs, in the order of `nll_wanted(step)`, and each problem's g_i (NaN when not measured)."""
        ...

    def hinted_wanted(self, step: int) -> list[tuple[int, float]]:
        """(training-set index, α) of the problems whose reference NLL the student is to be measured on after the
        teacher prompt at that α, before update `step`, after `measured` (empty: nothing to measure)."""
        ...

    def relied(self, step: int, nll: Sequence[float]) -> None:
        """Those NLLs, in the order of `hinted_wanted(step)`."""
        ...

    def aligned(self, step: int, credits: Sequence[float]) -> None:
        """Each problem's alignment credit (`atesd.train.signals`), when the run measures it, after the update."""
        ...

    def observe(self, step: int, stats: Mapping[str, float]) -> dict[str, float]:
        """Take the statistics measured at `step` (docs/method.md#statistics); returns extra metrics for the step's
        record."""
        ...

    def drain_decisions(self) -> list[dict[str, Any]]:
        """Rows for ``decisions.jsonl`` that became final since the last call."""
        ...

    def pending_decisions(self) -> list[dict[str, Any]]:
        """Rows of decisions whose reward is still incomplete (written once, at the end of a run)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


class PolicyBase:
    """The answers of a policy that measures nothing before the update, learns from no statistic and keeps no decision
    waiting; a policy overrides what it does otherwise."""

    uses_teacher_ref_logp = False  # the recipe then measures g_t only for the log
    single_process = False

    def nll_wanted(self, step: int) -> list[int]:
        return []

    def measured(self, step: int, nll: Sequence[float], teacher_logps: Sequence[float]) -> None:
        pass

    def hinted_wanted(self, step: int) -> list[tuple[int, float]]:
        return []

    def relied(self, step: int, nll: Sequence[float]) -> None:
        pass

    def aligned(self, step: int, credits: Sequence[float]) -> None:
        pass

    def observe(self, step: int, stats: Mapping[str, float]) -> dict[str, float]:
        return {}

    def drain_decisions(self) -> list[dict[str, Any]]:
        return []

    def pending_decisions(self) -> list[dict[str, Any]]:
        return []


class BatchPolicy(PolicyBase):
    """A policy that gives the whole batch one α: it defines `alpha(step)`."""

    def alpha(self, step: int) -> float:
        raise NotImplementedError

    def alphas(self, step: int, views: Sequence[ProblemView]) -> list[float]:
        return [self.alpha(step)] * len(views)


@dataclass(frozen=True)
class DecisionReading:
    """How ``atesd diagnose`` reads a run's decisions: `label` names the kind in its tables; `hold` is the updates
    each decision covers (1 where every step decides); `per_problem` whether each problem has its own α (its credits
    are then fitted on that α); `credits` whether decisions.jsonl logs each credited problem's reward;
    `follows_progress` whether α is a function of training progress t/T (its effect cannot be told apart);
    `verdicts` whether decisions.jsonl logs the policy's own verdicts, each at the update it was taken after and
    with the α that holds from the next update, rather than one decision a window at the window's first update."""

    label: str
    hold: int
    per_problem: bool = False
    credits: bool = False
    follows_progress: bool = False
    verdicts: bool = False


class TokenMix(Protocol):
    """A teacher that mixes two exposures token by token (a per-token policy's `ExposureSettings.token_mix`): the
    teacher also reads the rollouts after its prompt at `view_alpha`, and each token's target combines the two
    passes."""

    @property
    def view_alpha(self) -> float:
        """The exposure of the second view."""
        ...

    def combine(self, teacher_logits: torch.Tensor, view_logits: torch.Tensor) -> torch.Tensor:
        """Each token's distilled log-probs [..., V] from the teacher's (at the step's α) and the view's logits."""
        ...


def clipped_log_ratio_mix(view_logits: torch.Tensor, teacher_logits: torch.Tensor, gate: torch.Tensor | float,
                          clip: float) -> torch.Tensor:
    """log q = log_softmax(log p_view + gate · clip(log p_teacher − log p_view, −clip, clip)) with `gate` one weight
    (AR-OPD's λ) or one per token [..., 1] (at least float32): gate 0 is the view, 1 the teacher wherever the clip
    does not bind."""
    dtype = torch.promote_types(teacher_logits.dtype, torch.float32)
    view, teacher = view_logits.to(dtype).log_softmax(-1), teacher_logits.to(dtype).log_softmax(-1)
    weight = gate.to(dtype) if isinstance(gate, torch.Tensor) else gate
    return (view + weight * (teacher - view).clamp(-clip, clip)).log_softmax(-1)


@dataclass(frozen=True)
class Preset:
    """A method of ``atesd compare``: a recipe of the recipe folder and the overrides on top of it."""

    recipe: str
    overrides: tuple[str, ...] = ()


class ExposureSettings(Section):
    """The settings of one exposure policy; a subclass per policy, with ``policy`` a one-value Literal."""

    policy: str

    methods: ClassVar[tuple[str, ...]] = ("opsd",)  # the config's methods this policy applies to
    reads_run_length: ClassVar[bool] = False  # whether its decisions depend on train.steps (t/T)
    presets: ClassVar[dict[str, Preset]] = {}  # its methods in `atesd compare`, by label
    is_default: ClassVar[bool] = False  # the policy of a config that names none

    def build(self, total_steps: int, seed: int) -> ExposurePolicy:
        """The policy these settings describe, for a run of `total_steps` updates seeded by `seed`."""
        raise NotImplementedError

    def reading(self) -> DecisionReading:
        """How ``atesd diagnose`` reads this policy's decisions (`DecisionReading`)."""
        return DecisionReading(self.policy, 1, per_problem=True)

    def alpha_range(self) -> tuple[float, float]:
        """The lowest and the highest exposure this policy can give a step or a problem."""
        raise NotImplementedError

    def token_mix(self) -> TokenMix | None:
        """The per-token mix of this policy's teacher (`TokenMix`); None: each token's target is the teacher's at
        the step's α."""
        return None

    def signal_settings(self) -> Any | None:
        """The settings of the signals this policy has the recipe measure (`atesd.train.signals`: the style probe,
        the alignment credit) and diagnose's reward windows are read with; None: none."""
        return None

    def warnings(self, total_steps: int, rollouts_per_step: int) -> list[str]:
        """One line for each way these settings make part of a run of `total_steps` updates, each on
        `rollouts_per_step` graded rollouts, learn nothing (or act on chance)."""
        return []

    @property
    def measures_alignment(self) -> bool:
        """Whether the run measures each problem's alignment credit (`atesd.train.signals`)."""
        signals = self.signal_settings()
        return signals is not None and signals.credit == "alignment"

    @property
    def uses_style_probe(self) -> bool:
        """Whether the run samples and measures the style probe (`atesd.train.signals`)."""
        signals = self.signal_settings()
        return signals is not None and (signals.progress_signal == "style_nll" or (
            self.measures_alignment and signals.alignment_probe != "reference"))

    def probe_needed(self) -> str | None:
        """Why this policy needs a probe set (data.probe_size > 0), or None."""
        if self.uses_style_probe:
            return "the style probe is sampled on the probe problems"
        return None


class ClippedSettings(ExposureSettings):
    """The settings of a policy whose α is clipped to [α_min, α_max] (every policy that chooses α)."""

    alpha_min: float = Field(0.05, ge=0, le=1, description="Lower clip of the chosen exposures.")
    alpha_max: float = Field(1.0, ge=0, le=1, description="Upper clip of the chosen exposures.")

    def alpha_range(self) -> tuple[float, float]:
        return self.alpha_min, self.alpha_max

    @model_validator(mode="after")
    def _clip_range_is_ordered(self) -> ClippedSettings:
        if self.alpha_min > self.alpha_max:
            raise ValueError(f"alpha_min ({self.alpha_min}) is above alpha_max ({self.alpha_max})")
        return self


REGISTRY: dict[str, type[ExposureSettings]] = {}


def register(settings: type[ExposureSettings]) -> type[ExposureSettings]:
    """Add a policy's settings model to the registry under the one value of its ``policy`` Literal."""
    annotation = settings.model_fields["policy"].annotation
    names: tuple[Any, ...] = getattr(annotation, "__args__", ())
    if getattr(annotation, "__origin__", None) is not Literal or len(names) != 1:
        raise TypeError(f"{settings.__name__}.policy must be a one-value Literal, got {annotation}")
    if names[0] in REGISTRY:
        raise ValueError(f"exposure policy '{names[0]}' is registered twice")
    REGISTRY[names[0]] = settings
    return settings


def default_policy() -> str:
    """The ``policy`` of a config that names none."""
    return next(name for name, settings in REGISTRY.items() if settings.is_default)


def build_exposure_policy(settings: ExposureSettings, total_steps: int, seed: int) -> ExposurePolicy:
    """The policy `settings` describe; `total_steps` sets schedules and the progress feature."""
    return settings.build(total_steps, seed)
