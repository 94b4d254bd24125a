"""The ATESD controller (docs/method.md#controller), ``exposure.policy: controller``: a Beta policy over the teacher's
exposure, trained by REINFORCE on the discounted learning progress it causes. Its settings are
``exposure.controller`` (`ControllerConfig`; every default is ours, the paper gives none).

Read `ControllerExposure` top to bottom:

- `alpha(step)`: at the start of each hold window (every H updates) the policy sees the normalised training
  state s_t, outputs (a, b) = 1 + softplus(f_φ(s_t)), samples α ~ Beta(a, b) and clips it to [α_min, α_max].
  The decision waits for its reward; α is held for the window.
- `observe(step, stats)`: the step's statistics update the state's EMAs and normalisers and the loss / teacher
  log-prob histories. Every waiting decision whose look-ahead window is complete gets R = G_lp + λ_gt · G_gt
  (`reward.py`); once B decisions are rewarded, one REINFORCE step with normalised advantages and the
  one-sided entropy hinge updates φ with Adam.

Decisions are sampled from the controller's own numpy generator, so the trainer's randomness never changes
them; the generator, the network, Adam, the normalisers, EMAs and waiting decisions all go into checkpoints.

**Exposure per problem** (``per_problem: true``, ours, docs/method.md#exposure-per-problem): the same Beta policy
gives each problem of the batch its own α, from the training state and what that problem's rollout showed, and
learns from the drop of that problem's own reference NLL over the look-ahead. Read `PerProblemExposure` top to
bottom; one student update t:

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
- with ``hint_reliance_weight`` μ > 0 (ours, after HiLL, arXiv 2604.00698): `hinted_wanted(t)` / `relied(t, nll)`
  measure each credited problem's reference NLL under the teacher prompt at α_i with the student's weights as well,
  and R_i loses μ · (ℓ_i(t0) − ℓ_i^hint(t0)): the hint reliance, how much of the reference the student reaches only
  with the hint in its context.

A problem is seen once per epoch, and the paper's budget (100 updates × 32 of 30k problems) is under one epoch:
its own progress can only be measured on the step that trains it and L updates later, hence the two passes.
Decisions come from the policy's own generator; everything goes into checkpoints like the batch-level controller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from atesd.exposure.base import (
    BatchPolicy,
    ClippedSettings,
    DecisionReading,
    ExposurePolicy,
    Preset,
    ProblemView,
    problem_columns,
    register,
)
from atesd.exposure.reward import (
    controller_loss,
    decision_reward,
    grouped_advantages,
    normalized_advantages,
    problem_progress,
    teacher_grounding,
    trend_advantages,
)
from atesd.settings import Section

STATE_FEATURES = ("progress", "alpha_ema", "loss_ema", "kl_p90_ema", "probe_nll_ema", "confidence")
# The statistic of the step record each EMA follows.
EMA_SOURCES = {"alpha_ema": "alpha", "loss_ema": "loss", "kl_p90_ema": "kl_p90", "probe_nll_ema": "probe_nll"}
# The log-prob of the unclipped sample is taken this far from 0 and 1, where a Beta density can be infinite.
SAMPLE_EPS = 1e-4


class BetaPolicyNet(torch.nn.Module):
    """f_φ: state → (a, b) = 1 + softplus(MLP(state)); tanh hidden layers, float64 (it is tiny)."""

    def __init__(self, num_features: int, hidden_sizes: Sequence[int], initial_beta: tuple[float, float],
                 seed: int) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # seeded initialisation that leaves the caller's RNG alone
            torch.manual_seed(seed)
            layers: list[torch.nn.Module] = []
            width = num_features
            for hidden in hidden_sizes:
                layers += [torch.nn.Linear(width, hidden, dtype=torch.float64), torch.nn.Tanh()]
                width = hidden
            head = torch.nn.Linear(width, 2, dtype=torch.float64)
            # The starting policy is close to Beta(initial_beta) whatever the state (ours): a small output
            # weight, and the bias that softplus maps to a − 1 and b − 1.
            with torch.no_grad():
                head.weight.mul_(0.01)
                head.bias.copy_(torch.tensor([math.log(math.expm1(v - 1.0)) for v in initial_beta]))
        self.mlp = torch.nn.Sequential(*layers, head)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = 1.0 + torch.nn.functional.softplus(self.mlp(features))
        return out[..., 0], out[..., 1]

    def distribution(self, features: torch.Tensor) -> torch.distributions.Beta:
        a, b = self(features)
        return torch.distributions.Beta(a, b)


class RunningNormalizer:
    """Per-feature running mean and variance (Welford); features are centred, scaled and clipped."""

    def __init__(self, size: int) -> None:
        self.count = 0
        self.mean = [0.0] * size
        self.m2 = [0.0] * size

    def update(self, values: Sequence[float]) -> None:
        self.count += 1
        for i, value in enumerate(values):
            delta = value - self.mean[i]
            self.mean[i] += delta / self.count
            self.m2[i] += delta * (value - self.mean[i])

    def normalize(self, values: Sequence[float], clip: float) -> list[float]:
        """(x − mean) / std, clipped to ±clip; 0 for a feature that has not varied yet (or before 2 updates)."""
        out = []
        for value, mean, m2 in zip(values, self.mean, self.m2):
            std = math.sqrt(m2 / self.count) if self.count >= 2 else 0.0
            out.append(max(-clip, min(clip, (value - mean) / std)) if std > 1e-12 else 0.0)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": list(self.mean), "m2": list(self.m2)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.count, self.mean, self.m2 = state["count"], list(state["mean"]), list(state["m2"])


class TrainingState:
    """The six state features of docs/method.md#controller (order: `STATE_FEATURES`) and their running normaliser.

    After step t has been observed, the raw state for the decision at step t+1 is: progress (t+1)/T; the EMAs
    of α, the distillation loss, kl_p90 and probe_nll; and the last batch's confidence. A statistic that is not
    finite (a skipped step) leaves its EMA unchanged.
    """

    def __init__(self, total_steps: int, ema_decay: float) -> None:
        self.total_steps, self.ema_decay = total_steps, ema_decay
        self.emas: dict[str, float | None] = dict.fromkeys(EMA_SOURCES)
        self.confidence: float | None = None
        self.normalizer = RunningNormalizer(len(STATE_FEATURES))

    def raw(self, step: int) -> list[float]:
        """The unnormalised state before `step` (a feature never measured yet is 0)."""
        values = {"progress": step / max(self.total_steps, 1), "confidence": self.confidence, **self.emas}
        return [0.0 if (value := values[name]) is None else float(value) for name in STATE_FEATURES]

    def features(self, step: int, clip: float) -> list[float]:
        return self.normalizer.normalize(self.raw(step), clip)

    def observe(self, step: int, stats: Mapping[str, float]) -> None:
        for name, source in EMA_SOURCES.items():
            value = stats.get(source)
            if value is None or not math.isfinite(value):
                continue
            previous = self.emas[name]
            self.emas[name] = value if previous is None else self.ema_decay * previous + (1 - self.ema_decay) * value
        confidence = stats.get("confidence")
        if confidence is not None and math.isfinite(confidence):
            self.confidence = confidence
        self.normalizer.update(self.raw(step + 1))

    def state_dict(self) -> dict[str, Any]:
        return {"emas": dict(self.emas), "confidence": self.confidence, "normalizer": self.normalizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.emas, self.confidence = dict(state["emas"]), state["confidence"]
        self.normalizer.load_state_dict(state["normalizer"])


@dataclass
class Decision:
    """One sampled exposure: made before update `step` (0-based) and held for the next H updates."""

    step: int
    alpha: float  # the clipped α the teacher used
    sample: float  # the unclipped Beta draw, whose log-prob the update uses
    features: list[float]  # the normalised state it was decided from
    a: float
    b: float
    entropy: float
    reward: float | None = None
    progress: float | None = None  # G_lp
    grounding: float | None = None  # G_gt

    def row(self, logged_at: int | None) -> dict[str, Any]:
        """Its ``decisions.jsonl`` row; steps are counted like ``metrics.jsonl`` (1 = the first update)."""
        total = self.a + self.b
        return {
            "step": self.step + 1,
            "alpha": self.alpha,
            "sample": self.sample,
            "a": self.a,
            "b": self.b,
            "mean": self.a / total,
            "std": math.sqrt(self.a * self.b / (total**2 * (total + 1))),
            "entropy": self.entropy,
            "R": self.reward,
            "G_lp": self.progress,
            "G_gt": self.grounding,
            "state": dict(zip(STATE_FEATURES, self.features)),
            "logged_at": logged_at,
        }


class ControllerExposure(BatchPolicy):
    """The learned exposure policy of ATESD, one α for the whole batch (the paper's design); see the module
    docstring for the flow."""

    def __init__(self, config: ControllerSettings, total_steps: int, seed: int) -> None:
        self.exposure, self.settings = config, config.controller
        self.net = BetaPolicyNet(len(STATE_FEATURES), self.settings.hidden_sizes, self.settings.initial_beta, seed)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.settings.lr)
        self.rng = np.random.default_rng([seed, 0xC0])
        self.state = TrainingState(total_steps, self.settings.state_ema_decay)
        self.current: Decision | None = None
        self.waiting: list[Decision] = []  # reward not complete yet
        self.rewarded: list[Decision] = []  # reward complete, not yet used by an update
        self.losses: dict[int, float] = {}  # ℓ before update t, by t
        self.teacher_logps: dict[int, float] = {}  # g measured at step t, by t
        self.total_steps = total_steps
        # G_gt needs g_t at every step of a window; with λ_gt = 0 the reward ignores it.
        self.uses_teacher_ref_logp = self.settings.teacher_grounded_weight > 0
        self.reward_history: list[tuple[float, float]] = []  # (t/T, R) of the latest rewarded decisions
        self.updates = 0
        self._rows: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ acting

    def alpha(self, step: int) -> float:
        if self.current is None or step >= self.current.step + self.exposure.hold_steps:
            self.current = self._decide(step)
            self.waiting.append(self.current)
        return self.current.alpha

    def _decide(self, step: int) -> Decision:
        features = self.state.features(step, self.settings.feature_clip)
        with torch.no_grad():
            distribution = self.net.distribution(torch.tensor(features, dtype=torch.float64))
        a, b = float(distribution.concentration1), float(distribution.concentration0)
        sample = float(self.rng.beta(a, b))
        alpha = min(max(sample, self.exposure.alpha_min), self.exposure.alpha_max)
        return Decision(step, alpha, sample, features, a, b, float(distribution.entropy()))

    # ------------------------------------------------------------------ learning

    def observe(self, step: int, stats: Mapping[str, float]) -> dict[str, float]:
        signal = self.settings.progress_signal
        if signal in ("probe_nll", "style_nll"):  # ℓ measured after each update (style_nll: ours)
            self.losses.setdefault(step, float(stats[f"{signal}_before"]))
            self.losses[step + 1] = float(stats[signal])
        else:
            self.losses[step] = float(stats["loss"])
        self.teacher_logps[step] = float(stats.get("teacher_ref_logp", float("nan")))
        self.state.observe(step, stats)
        self._reward_complete_windows(logged_at=step + 1)
        metrics = self._update() if len(self.rewarded) >= self.settings.decisions_per_update else {}
        self._forget_history_before(min((d.step for d in self.waiting), default=step + 1))
        return metrics

    def _reward_complete_windows(self, logged_at: int) -> None:
        lookahead = self.settings.lookahead
        for decision in list(self.waiting):
            points = range(decision.step, decision.step + lookahead + 1)
            steps = range(decision.step, decision.step + lookahead)
            if not (all(p in self.losses for p in points) and all(s in self.teacher_logps for s in steps)):
                continue
            decision.reward, decision.progress, decision.grounding = decision_reward(
                [self.losses[p] for p in points], [self.teacher_logps[s] for s in steps],
                self.settings.discount, self.settings.teacher_grounded_weight)
            self.waiting.remove(decision)
            self.rewarded.append(decision)
            self._rows.append(decision.row(logged_at))

    def _update(self) -> dict[str, float]:
        """One REINFORCE step on the B oldest rewarded decisions."""
        size = self.settings.decisions_per_update
        batch, self.rewarded = self.rewarded[:size], self.rewarded[size:]
        features = torch.tensor([d.features for d in batch], dtype=torch.float64)
        samples = torch.tensor([d.sample for d in batch], dtype=torch.float64)
        rewards = torch.tensor([d.reward for d in batch], dtype=torch.float64)
        record = reinforce_step(self.net, self.optimizer, features, samples, self._advantages(batch, rewards),
                                self.settings)
        self.updates += 1
        return {**record, "controller_reward_mean": float(rewards.mean()), "controller_updates": self.updates}

    def _advantages(self, batch: list[Decision], rewards: torch.Tensor) -> torch.Tensor:
        """The paper's normalisation over the update's decisions, or the residual of a trend on training progress
        fitted over the latest `baseline_window` rewarded decisions (`exposure.controller.baseline`)."""
        eps = self.settings.advantage_eps
        if self.settings.baseline == "none":
            return normalized_advantages(rewards, eps)
        progress = [d.step / max(self.total_steps, 1) for d in batch]
        self.reward_history = [*self.reward_history, *zip(progress, rewards.tolist())][-self.settings.baseline_window:]
        window = torch.tensor(self.reward_history, dtype=torch.float64)
        return trend_advantages(rewards, torch.tensor(progress, dtype=torch.float64), window[:, 1], window[:, 0], eps)

    def _forget_history_before(self, step: int) -> None:
        self.losses = {t: v for t, v in self.losses.items() if t >= step}
        self.teacher_logps = {t: v for t, v in self.teacher_logps.items() if t >= step}

    # ------------------------------------------------------------------ logging

    def drain_decisions(self) -> list[dict[str, Any]]:
        rows, self._rows = self._rows, []
        return rows

    def pending_decisions(self) -> list[dict[str, Any]]:
        return [decision.row(logged_at=None) for decision in self.waiting]

    def policy_mean(self, step: int) -> float:
        """The mean of the Beta the policy would sample from at `step` (for inspection; samples nothing)."""
        with torch.no_grad():
            a, b = self.net(torch.tensor(self.state.features(step, self.settings.feature_clip), dtype=torch.float64))
        return float(a / (a + b))

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": "controller",
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "state": self.state.state_dict(),
            "current": asdict(self.current) if self.current is not None else None,
            "waiting": [asdict(d) for d in self.waiting],
            "rewarded": [asdict(d) for d in self.rewarded],
            "losses": [[t, v] for t, v in self.losses.items()],
            "teacher_logps": [[t, v] for t, v in self.teacher_logps.items()],
            "updates": self.updates,
            "reward_history": [list(point) for point in self.reward_history],
            "rows": list(self._rows),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("policy") != "controller":
            raise ValueError(f"checkpoint holds a '{state.get('policy')}' exposure policy, config says 'controller'")
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.state.load_state_dict(state["state"])
        self.current = Decision(**state["current"]) if state["current"] is not None else None
        self.waiting = [Decision(**d) for d in state["waiting"]]
        self.rewarded = [Decision(**d) for d in state["rewarded"]]
        self.losses = {int(t): float(v) for t, v in state["losses"]}
        self.teacher_logps = {int(t): float(v) for t, v in state["teacher_logps"]}
        self.updates = state["updates"]
        self.reward_history = [(float(p), float(r)) for p, r in state["reward_history"]]
        self._rows = list(state["rows"])


class ControllerConfig(Section):
    """The learned Beta-policy controller (docs/method.md#controller; every default is ours: the paper gives none)."""

    hidden_sizes: list[Annotated[int, Field(ge=1, le=65_536)]] = Field(
        default_factory=lambda: [64, 64], max_length=16,
        description="Policy MLP hidden layers (tanh); [] is a linear policy.")
    initial_beta: tuple[float, float] = Field(
        (2.0, 2.0), description="(a, b) of the starting policy, set through the output bias (ours: Beta(2, 2)).")
    lookahead: int = Field(4, ge=1, le=10_000, description="L: updates over which a decision's reward is summed.")
    discount: float = Field(0.9, ge=0, le=1, description="gamma of the discounted reward.")
    progress_signal: Literal["probe_nll", "distill_loss", "style_nll"] = Field(
        "probe_nll", description="The loss l whose drops make G_lp; style_nll: the style probe's (ours).")
    teacher_grounded_weight: float = Field(0.1, ge=0, description="lambda_gt: weight of G_gt in R (0: G_lp only).")
    decisions_per_update: int = Field(4, ge=2, le=10_000, description="B: rewarded decisions per REINFORCE update.")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate of the policy.")
    entropy_coef: float = Field(0.01, ge=0, description="c: weight of the one-sided entropy hinge.")
    entropy_target: float = Field(-0.5, description="H_target: Beta entropy above which the hinge acts.")
    advantage_eps: float = Field(1e-8, gt=0, description="epsilon of the advantage normalisation.")
    baseline: Literal["progress_trend", "none"] = Field(
        "progress_trend", description="Advantages against a least-squares trend of R on training progress over the "
        "latest baseline_window rewarded decisions (ours: removes the drift of shrinking progress); none: the "
        "paper's normalisation over the update's B decisions.")
    baseline_window: int = Field(16, ge=3, le=100_000,
                                 description="Rewarded decisions the progress trend is fitted on.")
    state_ema_decay: float = Field(0.9, ge=0, lt=1, description="Decay of the state's EMAs (ours).")
    feature_clip: float = Field(5.0, gt=0, description="Normalised state features are clipped to +-this (ours).")
    credited_problems: int = Field(
        8, ge=1, le=65_536, description="Exposure per problem: problems of each step whose own reference NLL is "
        "measured before their update and after the look-ahead, to reward their alpha (the first of the batch; each "
        "costs two reference passes under the student prompt).")
    hint_reliance_weight: float = Field(
        0.0, ge=0, description="Exposure per problem with the own-NLL credit: mu, the weight of each credited "
        "problem's hint reliance subtracted from its reward (ours, after HiLL, docs/method.md#hint-reliance): the drop "
        "of the student's NLL of the reference when the teacher prompt's revealed part is in its context. 0: off.")
    credit: Literal["own_nll", "alignment"] = Field("own_nll", description="Exposure per problem's credit: own NLL "
                                                   "drop, or alignment (ours, docs/controller.md#signals-with-power).")
    alignment_probe: Literal["contrast", "style", "reference"] = Field(
        "contrast", description="The probe alignment is measured on (contrast: right against wrong solutions).")
    alignment_refresh: int = Field(10, ge=1, description="Steps between refreshes of the probe gradient (ours).")
    style_probe_samples: int = Field(4, ge=1, le=1024, description="Base-model samples per probe problem (ours).")

    @field_validator("initial_beta")
    @classmethod
    def _initial_beta_above_one(cls, value: tuple[float, float]) -> tuple[float, float]:
        if min(value) <= 1.0:
            raise ValueError(f"(a, b) = 1 + softplus(.) is always above 1; got {list(value)}")
        return value

    def keys_read(self, learns: bool, per_problem: bool) -> set[str]:
        """The settings a run reads: a learning controller's (`learns`), per batch or per problem, or a control run's
        (random exposure): the signals it logs and `atesd diagnose`'s reward windows. Every other one changed from
        its default would do nothing (`refuse_unread`)."""
        alignment = self.credit == "alignment"
        style = self.progress_signal == "style_nll" or (alignment and self.alignment_probe != "reference")
        read = {"alignment_probe", "alignment_refresh"} if alignment else set()
        read |= {"style_probe_samples"} if style else set()
        if not learns:
            return read | {"credit", "progress_signal", "lookahead", "discount", "teacher_grounded_weight"}
        read |= {"hidden_sizes", "initial_beta", "decisions_per_update", "lr", "entropy_coef", "entropy_target",
                 "advantage_eps", "state_ema_decay", "feature_clip"}
        if not per_problem:
            return read | {"progress_signal", "lookahead", "discount", "teacher_grounded_weight", "baseline",
                           "baseline_window"}
        # per problem: advantages centred within a step (no baseline); a problem's grounding is its one g_i, whose
        # discounted mean is itself (no discount); the alignment credit is a problem's reward at once (no window)
        windows = set() if alignment else {"lookahead", "teacher_grounded_weight", "credited_problems",
                                           "hint_reliance_weight"}
        return read | {"credit"} | windows

    def refuse_unread(self, learns: bool, per_problem: bool, who: str) -> None:
        """One line naming the settings changed from their defaults that `who` does not read."""
        defaults, read = ControllerConfig(), self.keys_read(learns, per_problem)
        unread = [name for name in type(self).model_fields
                  if name not in read and getattr(self, name) != getattr(defaults, name)]
        if unread:
            raise ValueError(f"{', '.join('controller.' + name for name in unread)}: not read by {who}; leave "
                             f"{'them' if len(unread) > 1 else 'it'} out")


@register
class ControllerSettings(ClippedSettings):
    """``exposure.policy: controller`` (``method: atesd``)."""

    policy: Literal["controller"] = "controller"
    hold_steps: int = Field(2, ge=1, description="H: updates each decision is held for.")
    per_problem: bool = Field(
        False, description="Each problem of the batch its own alpha, from the training state and that problem's "
        "features, rewarded by that problem's own learning progress (ours, docs/method.md#exposure-per-problem).")
    controller: ControllerConfig = Field(default_factory=ControllerConfig)

    methods: ClassVar[tuple[str, ...]] = ("atesd",)
    reads_run_length: ClassVar[bool] = True  # the state's progress feature is t/T
    presets: ClassVar[dict[str, Preset]] = {
        "atesd": Preset("atesd.yaml"),
        "atesd-immediate": Preset("atesd.yaml", ("exposure.controller.lookahead=1", "exposure.controller.discount=0")),
        "atesd-lp-only": Preset("atesd.yaml", ("exposure.controller.teacher_grounded_weight=0",)),
        # the paper's plain normalisation of the advantages, without our baseline against the reward's drift
        "atesd-no-drift-baseline": Preset("atesd.yaml", ("exposure.controller.baseline=none",)),
        # beyond the paper: each problem its own α, credited by its own reference NLL
        "atesd-per-problem": Preset("atesd.yaml", ("exposure.per_problem=true",)),
        # ours: exposure per problem credited by each problem's alignment with the contrast probe, the one signal
        # with power (docs/controller.md#signals-with-power)
        "atesd-alignment": Preset("atesd.yaml", ("exposure.per_problem=true", "exposure.controller.credit=alignment")),
    }

    @model_validator(mode="after")
    def _alignment_is_per_problem(self) -> ControllerSettings:
        if self.controller.credit == "alignment" and not self.per_problem:
            raise ValueError("controller.credit: alignment credits each problem's own alpha: set per_problem: true")
        self.controller.refuse_unread(True, self.per_problem, "the controller per problem" if self.per_problem else
                                      "the batch-level controller (per_problem: false)")
        return self

    def build(self, total_steps: int, seed: int) -> ExposurePolicy:
        if self.per_problem:
            return PerProblemExposure(self, total_steps, seed)
        return ControllerExposure(self, total_steps, seed)

    def reading(self) -> DecisionReading:
        if self.per_problem:
            return DecisionReading("per_problem", 1, per_problem=True, credits=True)
        return DecisionReading("controller", self.hold_steps)

    def signal_settings(self) -> ControllerConfig:
        return self.controller

    def probe_needed(self) -> str | None:
        if self.controller.progress_signal == "probe_nll":
            return ("the controller's reward uses probe_nll, which needs a probe set (or set "
                    "exposure.controller.progress_signal: distill_loss)")
        return super().probe_needed()

    def first_update(self) -> int:
        """The steps after which the batch-level controller has B rewarded decisions, so can first learn: its B-th
        decision is taken at step (B − 1)·H and rewarded L updates later."""
        return (self.controller.decisions_per_update - 1) * self.hold_steps + self.controller.lookahead

    def warnings(self, total_steps: int, rollouts_per_step: int) -> list[str]:
        if self.per_problem or total_steps >= self.first_update():
            return []
        return [(f"the exposure controller first learns after {self.first_update()} steps ((decisions_per_update - 1) "
                 f"x hold_steps + lookahead) and train.steps is {total_steps}: it will only sample from its initial "
                 "policy; lower exposure.hold_steps or exposure.controller.decisions_per_update, or train longer")]


def reinforce_step(net: BetaPolicyNet, optimizer: torch.optim.Optimizer, features: torch.Tensor,
                   samples: torch.Tensor, advantages: torch.Tensor, settings: ControllerConfig) -> dict[str, float]:
    """One REINFORCE update of the policy with the entropy hinge (docs/method.md#update) on the decisions'
    features, sampled α (unclipped) and advantages; returns the loss and the mean entropy for the log."""
    distribution = net.distribution(features)
    entropies = distribution.entropy()
    loss = controller_loss(distribution.log_prob(samples.clamp(SAMPLE_EPS, 1 - SAMPLE_EPS)), advantages, entropies,
                           settings.entropy_coef, settings.entropy_target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"controller_loss": float(loss.detach()), "controller_entropy": float(entropies.detach().mean())}


# -------------------------------------------------------------------------------------------- exposure per problem

PROBLEM_FEATURES = ("correct", "length", "log_segments")


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
    reliance: list[float] | None = None  # hint reliance per credited problem (with hint_reliance_weight)
    rewards: list[float] | None = None

    def row(self, logged_at: int | None) -> dict[str, Any]:
        """Its ``decisions.jsonl`` row: one per step, per-problem lists aligned with ``problem`` (R, G_lp and
        G_gt for the first ``credited`` only); steps are counted like ``metrics.jsonl``."""
        return {"step": self.step + 1, **problem_columns(self.keys, self.correct, self.segments, self.buckets),
                "alpha": self.alphas, "mean": self.means, "credited": self.credited, "R": self.rewards,
                "G_lp": self.progress, "G_gt": self.grounding, **({"reliance": self.reliance} if self.reliance else {}),
                "state": dict(zip(STATE_FEATURES, self.state)),
                "logged_at": logged_at}


class PerProblemExposure:
    """The learned exposure per problem; see the module docstring for the flow."""

    single_process = True

    def __init__(self, config: ControllerSettings, total_steps: int, seed: int) -> None:
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
        self.relies = self.settings.hint_reliance_weight > 0 and not self.alignment  # HiLL's penalty (ours)
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
        assert current is not None  # `alphas(step)` made it
        return current.keys[:current.credited] + (due.keys[:due.credited] if due is not None else [])

    def measured(self, step: int, nll: Sequence[float], teacher_logps: Sequence[float]) -> None:
        """The NLLs of `nll_wanted(step)` (in its order) and g_i of every problem of the step (NaN when not
        measured), taken before update `step`."""
        if self.alignment:  # credited after the update instead (`aligned`)
            return
        current, due = self._group(step), self._group(step - self.settings.lookahead)
        assert current is not None  # `alphas(step)` made it
        current.before = [float(v) for v in nll[:current.credited]]
        current.teacher_logps = [float(g) for g in teacher_logps[:current.credited]]
        if due is None:
            return
        after = nll[current.credited:]
        assert due.before is not None and due.teacher_logps is not None  # measured at its own step
        due.progress = [problem_progress(b, float(a)) for b, a in zip(due.before, after)]
        due.grounding = [teacher_grounding([g], self.settings.discount) for g in due.teacher_logps]
        due.rewards = [p + self.settings.teacher_grounded_weight * g for p, g in zip(due.progress, due.grounding)]
        if self.relies:
            assert due.reliance is not None  # measured at its own step (`relied`)
            due.rewards = [r - self.settings.hint_reliance_weight * h for r, h in zip(due.rewards, due.reliance)]
        self.waiting.remove(due)
        self.rewarded.append(due)
        self._rows.append(due.row(logged_at=step + 1))

    def hinted_wanted(self, step: int) -> list[tuple[int, float]]:
        """With `hint_reliance_weight`: (key, α_i) of this step's credited problems, whose reference NLL the student
        is to be measured on after the teacher prompt at α_i (the hint) as well."""
        if not self.relies:
            return []
        current = self._group(step)
        assert current is not None  # `alphas(step)` made it
        return list(zip(current.keys[:current.credited], current.alphas[:current.credited]))

    def relied(self, step: int, nll: Sequence[float]) -> None:
        """Those hinted NLLs, in the order of `hinted_wanted(step)`, after `measured(step, ...)`: each credited
        problem's hint reliance ℓ_i − ℓ_i^hint, how much likelier the reference is to the student with the hint."""
        current = self._group(step)
        assert current is not None and current.before is not None  # `measured` came first
        current.reliance = [before - float(hinted) for before, hinted in zip(current.before, nll)]

    def aligned(self, step: int, credits: Sequence[float]) -> None:
        """The alignment credit (`controller.credit: alignment`, ours): each problem's first-order effect on the
        probe loss, measured before update `step` (`atesd.train.signals`), is its reward at once: R_i = c_i."""
        group = self._group(step)
        assert group is not None  # `alphas(step)` made it
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
