"""The ATESD controller (docs/method.md#controller): a Beta policy over the teacher's exposure, trained by REINFORCE on the
discounted learning progress it causes.

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from atesd.config import ControllerConfig, ExposureConfig
from atesd.exposure.reward import controller_loss, decision_reward, normalized_advantages, trend_advantages

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
        return [float(values[name]) if values[name] is not None else 0.0 for name in STATE_FEATURES]

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


class ControllerExposure:
    """The learned exposure policy of ATESD; see the module docstring for the flow."""

    per_problem = False  # one α for the whole batch (the paper's design)

    def __init__(self, config: ExposureConfig, total_steps: int, seed: int) -> None:
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
