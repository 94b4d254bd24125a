"""What the reward says about α (docs/controller.md#what-the-reward-says-about-α): each window's reward terms and
signals rebuilt from a run's logs, and each regressed on α and training progress, pooled over runs.

A window starts at each decision (for random exposure, each hold boundary; under exposure per problem, every
step) and looks L updates ahead, with the run's own L, γ, λ_gt and hold H. Its terms are the controller's
(`atesd.exposure.reward`, the same functions the controller calls): G_lp, G_gt and R = G_lp + λ_gt · G_gt,
plus cheap signals of our own (`SIGNALS`). Each term is regressed by least squares on α and t/T with one
intercept per run; the slope on α, its standard error and t say how much the term tells α apart, and
n · (2 / t)² is the number of windows at which it would reach t = 2 at this effect and noise. Under exposure
per problem, the logged per-problem credit (decisions.jsonl) is regressed on each problem's own α too.

Everything here is a plain function of log rows and settings; `diagnose_report` finds and checks the runs,
and writes the tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

import numpy as np

from atesd.config import Config
from atesd.experiments.diagnose_signals import (
    ALIGNMENT_SIGNALS,
    EXTRA_NEEDS,
    EXTRA_SIGNALS,
    alignment_rows,
    number,
    rescale_by_history,
    series,
    window_signals,
)
from atesd.exposure.controller import ControllerConfig
from atesd.exposure.reward import decision_reward, learning_progress
from atesd.exposure.signals import signed_progress

# Batch-level windows' terms and signals, name → label (the rows of the table, in this order); READING says
# what each is.
SIGNALS = {
    "G_lp": "G_lp",
    "G_gt": "G_gt",
    "R": "R",
    "lp_signed": "G_lp without max(0, ·)",
    "probe_drop": "probe NLL drop",
    "accuracy": "rollout accuracy change",
}
# Exposure per problem: the logged per-problem credit of decisions.jsonl.
CREDIT_SIGNALS = {"G_lp": "G_lp (own NLL drop)", "G_gt": "G_gt (g_i)", "R": "R"}
# What a window's term needs from the logs (said when no window has it).
NEEDS = {"G_lp": "ℓ at every step", "G_gt": "g (teacher_ref_logp) at every step: log it with "
         "train.teacher_ref_logp_every=1", "R": "g (teacher_ref_logp) at every step: log it with "
         "train.teacher_ref_logp_every=1", "lp_signed": "ℓ at every step", "probe_drop": "the probe NLL",
         "accuracy": "rollout_accuracy over the L updates before and after", **EXTRA_NEEDS}
MIN_EXTRA_POINTS = 2  # a fit needs at least this many points beyond its parameters


@dataclass(frozen=True)
class RunSettings:
    """What a run's windows need from its config."""

    name: str
    policy: str  # how the policy reads (`atesd.exposure.DecisionReading.label`)
    hold: int  # H (1 with an α per problem: every step decides)
    lookahead: int  # L
    discount: float  # γ
    grounded_weight: float  # λ_gt
    progress_signal: str  # probe_nll | distill_loss
    total_steps: int  # T
    # Each problem has its own α. Only such runs' credits are fitted on each problem's own α: where a step's problems
    # share one α, they share its noise too, and the fit's standard error would count them as independent.
    per_problem: bool = False
    credits: bool = False  # decisions.jsonl logs each credited problem's reward (exposure per problem)
    follows_progress: bool = False  # α is a function of t/T (a schedule)
    verdicts: bool = False  # decisions.jsonl logs verdicts, each with the α from the next update (the ladder)

    @classmethod
    def from_config(cls, name: str, config: Config) -> RunSettings:
        """What the run's exposure policy says of its decisions (`ExposureSettings.reading`), with the reward windows
        of its signal settings (the controller's defaults for a policy that has none)."""
        reading = config.exposure.reading()
        signals = config.exposure.signal_settings() or ControllerConfig()
        return cls(name, reading.label, reading.hold, signals.lookahead, signals.discount,
                   signals.teacher_grounded_weight, signals.progress_signal, config.train.steps,
                   reading.per_problem, reading.credits, reading.follows_progress, reading.verdicts)


@dataclass(frozen=True)
class Window:
    """One decision's window: `step` is its first update (counted like metrics.jsonl), `values` its terms (NaN
    where the logs lack what a term needs). Under exposure per problem, also one credited problem's point."""

    run: str
    step: int
    alpha: float
    progress: float  # t/T at the decision
    values: dict[str, float]


@dataclass(frozen=True)
class Fit:
    """A term regressed on α and t/T with one intercept per group (run, or step): the slope on α and its
    standard error over `n` points; `reason` says why there is no fit."""

    signal: str
    n: int
    mean: float = math.nan
    sd: float = math.nan
    slope: float = math.nan
    se: float = math.nan
    reason: str | None = None

    @property
    def t(self) -> float:
        return self.slope / self.se if self.se > 0 else math.nan

    @property
    def needed(self) -> float:
        """n · (2 / t)²: the points at which the same slope and noise would give t = 2."""
        return self.n * (2 / self.t) ** 2 if math.isfinite(self.t) and self.t != 0 else math.inf


def window_starts(settings: RunSettings, last_step: int) -> list[int]:
    """The first update (1-based) of each decision: 1, 1 + H, 1 + 2H, … up to the last logged step."""
    return list(range(1, last_step + 1, settings.hold))


def run_windows(settings: RunSettings, metrics: Sequence[Mapping[str, Any]]) -> list[Window]:
    """Every window of a run whose L updates were logged, with its terms (`SIGNALS`, and ours: `EXTRA_SIGNALS`)
    rebuilt from metrics.jsonl.

    With t0 = step − 1 the decision's first optimizer step: ℓ_{t0} is the probe NLL before update t0
    (``probe_nll_before`` of its row), ℓ_{t0+i} the probe NLL after the i-th update (or, with the
    distillation-loss signal, the loss of row step + i); g_{t0+i} is ``teacher_ref_logp`` of the i-th row.
    """
    rows = {row["step"]: row for row in metrics if isinstance(row.get("step"), int)}
    if not rows:
        return []
    lookahead, windows = settings.lookahead, []
    for step in window_starts(settings, max(rows)):
        span = [rows.get(step + i) for i in range(lookahead)]
        probe = settings.progress_signal in ("probe_nll", "style_nll")  # ℓ measured after each update
        if any(row is None for row in span) or (not probe and step + lookahead not in rows):
            continue  # the window runs past the last logged step: never rewarded
        losses = series(span, settings.progress_signal) if probe \
            else [number(rows[step + i], "loss") for i in range(lookahead + 1)]
        g = [number(row, "teacher_ref_logp") for row in span]
        values = {**dict.fromkeys(SIGNALS, math.nan), **window_signals(span, settings.hold, settings.discount)}
        if all(math.isfinite(value) for value in g):
            values["R"], values["G_lp"], values["G_gt"] = decision_reward(losses, g, settings.discount,
                                                                          settings.grounded_weight)
        else:
            values["G_lp"] = learning_progress(losses, settings.discount)
        values["lp_signed"] = signed_progress(losses, settings.discount)
        values["probe_drop"] = number(span[0], "probe_nll_before") - number(span[-1], "probe_nll")
        values["accuracy"] = accuracy_change(rows, step, lookahead)
        windows.append(Window(settings.name, step, number(span[0], "alpha"),
                              (step - 1) / max(settings.total_steps, 1), values))
    rescale_by_history([window.values for window in windows])
    return windows


def accuracy_change(rows: Mapping[int, Mapping[str, Any]], step: int, lookahead: int) -> float:
    """Mean rollout accuracy of rows step+1 … step+L (rollouts sampled after the decision's first … L-th update)
    minus that of rows step−L+1 … step (sampled before its first update); NaN where a row is missing."""
    after = [number(rows.get(step + i), "rollout_accuracy") for i in range(1, lookahead + 1)]
    before = [number(rows.get(step - i), "rollout_accuracy") for i in range(lookahead)]
    return fmean(after) - fmean(before)  # a NaN among them makes it NaN


def hold_violations(settings: RunSettings, metrics: Sequence[Mapping[str, Any]]) -> int:
    """Hold windows whose α changed within the window (0 when the logs follow the hold)."""
    rows = {row["step"]: row for row in metrics if isinstance(row.get("step"), int)}
    count = 0
    for step in window_starts(settings, max(rows, default=0)):
        alphas = {number(rows.get(step + i), "alpha") for i in range(settings.hold) if step + i in rows}
        count += len(alphas) > 1
    return count


def check_decisions(settings: RunSettings, windows: Sequence[Window], decisions: Sequence[Mapping[str, Any]],
                    tolerance: float = 1e-9) -> tuple[str, bool]:
    """How the rebuild agrees with decisions.jsonl — the decisions' steps and α (a policy's verdicts: the α each
    moved to), and for the controller its logged R, G_lp and G_gt — as a line for the report, and whether it
    agrees."""
    by_step = {w.step: w for w in windows}
    if settings.per_problem:
        mismatched = [row["step"] for row in decisions if row["step"] in by_step
                      and abs(fmean(row["alpha"]) - by_step[row["step"]].alpha) > tolerance]
        if mismatched:
            return f"decisions.jsonl: the mean α differs from metrics.jsonl at steps {mismatched[:5]}", False
        return f"decisions.jsonl: each step's mean α agrees with metrics.jsonl ({len(decisions)} steps)", True
    if settings.verdicts:
        checked = [row for row in decisions if row["step"] + 1 in by_step]
        moved_off = [row["step"] for row in checked if abs(row["alpha"] - by_step[row["step"] + 1].alpha) > tolerance]
        if moved_off:
            return (f"decisions.jsonl: the α of the verdicts at steps {moved_off[:5]} is not metrics.jsonl's α at "
                    "the next update"), False
        return (f"decisions.jsonl: {len(checked)} verdicts before the last window, each one's α is metrics.jsonl's at "
                "the next update"), True
    starts = window_starts(settings, max((w.step for w in windows), default=0))
    logged = sorted(row["step"] for row in decisions)
    if logged[:len(starts)] != starts[:len(logged)]:
        return (f"decisions.jsonl: decisions at steps {logged[:4]}…, not every {settings.hold} updates from step 1: "
                "the windows follow the hold, not decisions.jsonl"), False
    alpha_off = [row["step"] for row in decisions
                 if row["step"] in by_step and abs(row["alpha"] - by_step[row["step"]].alpha) > tolerance]
    rewarded = [row for row in decisions if row.get("R") is not None and row["step"] in by_step]
    worst = max((abs(row[key] - by_step[row["step"]].values[key]) for row in rewarded
                 for key in ("R", "G_lp", "G_gt")), default=0.0)
    rewards_agree = worst <= tolerance * max([1.0, *(abs(row["R"]) for row in rewarded)])
    line = f"decisions.jsonl: {len(decisions)} decisions, α agrees" if not alpha_off else \
        f"decisions.jsonl: α differs from metrics.jsonl at steps {alpha_off[:5]}"
    if rewarded:
        line += (f"; the rebuilt R, G_lp, G_gt equal the {len(rewarded)} logged rewards (max difference {worst:.1e})"
                 if rewards_agree else
                 f"; the rebuilt rewards differ from the logged ones by up to {worst:.3g}: the table uses the rebuild")
    return line, not alpha_off and rewards_agree


def credit_points(settings: RunSettings, decisions: Sequence[Mapping[str, Any]]) -> list[Window]:
    """Exposure per problem: one point per credited problem of each rewarded step (decisions.jsonl), with that
    problem's α and its logged G_lp, G_gt and R."""
    points = []
    for row in decisions:
        if not isinstance(row.get("alpha"), list) or row.get("R") is None:
            continue
        grounding = row.get("G_gt") or [None] * len(row["R"])  # none under the alignment credit
        for i, reward in enumerate(row["R"]):
            values = {"R": reward, "G_lp": row["G_lp"][i], "G_gt": grounding[i]}
            points.append(Window(settings.name, row["step"], row["alpha"][i],
                                 (row["step"] - 1) / max(settings.total_steps, 1),
                                 {k: math.nan if v is None else float(v) for k, v in values.items()}))
    return points


def alignment_points(settings: RunSettings, metrics: Sequence[Mapping[str, Any]]) -> list[Window]:
    """One point per problem of every step that logged the alignment credit (metrics.jsonl's ``alignment`` and
    ``problem_alpha``): that problem's α and its credit."""
    return [Window(settings.name, step, alpha, (step - 1) / max(settings.total_steps, 1),
                   {"alignment": credit, "alignment_sign": float(np.sign(credit))})
            for step, alphas, credits in alignment_rows(metrics) for alpha, credit in zip(alphas, credits)]


def fit_on_alpha(signal: str, points: Sequence[Window], groups: str = "run") -> Fit:
    """OLS of the points' `signal` on α and t/T with one intercept per run (``groups="run"``), or on α alone with
    one intercept per (run, step) (``groups="step"``: what a comparison within each step sees)."""
    kept = [p for p in points if math.isfinite(p.values[signal]) and math.isfinite(p.alpha)]
    y = np.array([p.values[signal] for p in kept], dtype=float)
    keys = [p.run if groups == "run" else (p.run, p.step) for p in kept]
    labels = {key: index for index, key in enumerate(dict.fromkeys(keys))}
    columns = [np.array([p.alpha for p in kept], dtype=float)]
    if groups == "run":
        columns.append(np.array([p.progress for p in kept], dtype=float))
    dummies = np.zeros((len(kept), len(labels)))
    dummies[np.arange(len(kept)), [labels[key] for key in keys]] = 1.0
    design = np.column_stack([*columns, dummies]) if kept else np.zeros((0, 0))
    n, parameters = design.shape if kept else (0, 0)
    mean, sd = (float(y.mean()), float(y.std(ddof=1))) if n > 1 else (math.nan, math.nan)
    if n == 0:
        return Fit(signal, 0, reason=f"not measured: no window has {NEEDS.get(signal, 'it')} in the logs")
    if n > 1 and float(np.ptp(y)) == 0.0:
        return Fit(signal, n, mean, sd, reason="the term never varied")
    if n < parameters + MIN_EXTRA_POINTS:
        return Fit(signal, n, mean, sd, reason=f"{n} points: too few for {parameters} parameters")
    if np.linalg.matrix_rank(design) < parameters:
        return Fit(signal, n, mean, sd, reason="α does not vary apart from training progress and the runs")
    coefficients, _, _, _ = np.linalg.lstsq(design, y, rcond=None)
    residuals = y - design @ coefficients
    variance = float(residuals @ residuals) / (n - parameters)
    covariance = variance * np.linalg.inv(design.T @ design)
    return Fit(signal, n, mean, sd, float(coefficients[0]), math.sqrt(max(float(covariance[0, 0]), 0.0)))


@dataclass
class Diagnosis:
    """The fits of one pooled set of runs, and what was measured of each run."""

    runs: list[dict[str, Any]] = field(default_factory=list)  # per run: name, policy, settings, windows, checks
    windows: list[Fit] = field(default_factory=list)  # batch-level windows, one fit per `SIGNALS` entry
    credit: list[Fit] = field(default_factory=list)  # exposure per problem, intercept per run
    credit_within_step: list[Fit] = field(default_factory=list)  # exposure per problem, intercept per step
    credited_per_step: float = math.nan
    alignment: list[Fit] = field(default_factory=list)  # each problem's alignment credit, intercept per run
    alignment_within_step: list[Fit] = field(default_factory=list)  # the same, intercept per step
    aligned_per_step: float = math.nan
    notes: list[str] = field(default_factory=list)


def diagnose(runs: Sequence[tuple[RunSettings, Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]]) -> Diagnosis:
    """The diagnosis of `runs` pooled: (settings, metrics.jsonl rows, decisions.jsonl rows) per run."""
    result = Diagnosis()
    windows: list[Window] = []
    credit: list[Window] = []
    aligned: list[Window] = []
    for settings, metrics, decisions in runs:
        own = run_windows(settings, metrics)
        windows += own
        aligned += alignment_points(settings, metrics) if settings.per_problem else []
        points = credit_points(settings, decisions) if settings.credits else []
        credit += points
        alphas = [w.alpha for w in own]
        line, agrees = check_decisions(settings, own, decisions) if decisions else \
            (f"no decisions.jsonl: windows at every {settings.hold} updates from step 1", True)
        checks, warnings = [line], [] if agrees else [line]
        if settings.per_problem:
            checks.append("its windows: one per step, at the batch's mean α")
        violations = hold_violations(settings, metrics) if not settings.per_problem else 0
        if violations:
            warnings.append(f"α changed within {violations} hold windows of {settings.hold} updates")
        missing_g = sum(not math.isfinite(w.values["G_gt"]) for w in own)
        if missing_g:
            warnings.append(f"{missing_g} of {len(own)} windows lack g (teacher_ref_logp) at some step: G_gt and R "
                            "leave them out (train.teacher_ref_logp_every=1 logs it at every step)")
        result.runs.append({"run": settings.name, "policy": settings.policy, "H": settings.hold,
                            "L": settings.lookahead, "gamma": settings.discount,
                            "lambda_gt": settings.grounded_weight, "signal": settings.progress_signal,
                            "T": settings.total_steps, "windows": len(own), "credited": len(points),
                            "alpha_min": min(alphas, default=math.nan), "alpha_max": max(alphas, default=math.nan),
                            "checks": checks + warnings, "warnings": warnings})
    result.windows = [fit_on_alpha(signal, windows) if windows else
                      Fit(signal, 0, reason="no complete window: a window needs its L updates logged")
                      for signal in SIGNALS]
    result.windows += [fit for fit in (fit_on_alpha(signal, windows) for signal in EXTRA_SIGNALS) if fit.n > 0]
    if aligned:
        result.alignment = [fit_on_alpha(signal, aligned) for signal in ALIGNMENT_SIGNALS]
        result.alignment_within_step = [fit_on_alpha(signal, aligned, groups="step") for signal in ALIGNMENT_SIGNALS]
        result.aligned_per_step = len(aligned) / len({(p.run, p.step) for p in aligned})
    if credit:
        result.credit = [fit_on_alpha(signal, credit) for signal in CREDIT_SIGNALS]
        result.credit_within_step = [fit_on_alpha(signal, credit, groups="step") for signal in CREDIT_SIGNALS]
        result.credited_per_step = len(credit) / len({(p.run, p.step) for p in credit})
    elif any(settings.credits for settings, _, _ in runs):
        result.notes.append("exposure per problem: no rewarded per-problem credit in decisions.jsonl, so only the "
                            "batch's mean α is measured")
    return result
