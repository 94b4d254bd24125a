"""Plots of a sweep or a comparison: many runs over several seeds, so every plot shows the seed spread (error
bars or a ±1 std band, and the individual seeds as points or thin lines)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from atesd.experiments.buckets import BUCKETS
from atesd.experiments.mismatch import STATISTICS

MISMATCH_LABELS = {
    "kl_mean": "mean per-token KL(p_T ‖ p_S)",
    "kl_p90": "per-token KL, 90th percentile",
    "kl_p99": "per-token KL, 99th percentile",
    "top1_disagree": "top-1 disagreement",
}
CURVE_PANELS = (("probe_nll", "probe NLL (held-out references)"), ("rollout_accuracy", "rollout accuracy"))


def _spread(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _series_vs_alpha(axis: Axes, rows: Sequence[dict[str, Any]], column: str, label: str, color: str) -> None:
    """Mean ± std over seeds as error bars joined by a line, and each seed's value as a faint point."""
    by_alpha: dict[float, list[float]] = {}
    for row in rows:
        if row.get(column) is not None:
            by_alpha.setdefault(float(row["alpha"]), []).append(float(row[column]))
    if not by_alpha:
        return
    alphas = sorted(by_alpha)
    means, stds = zip(*(_spread(by_alpha[a]) for a in alphas))
    axis.errorbar(alphas, means, yerr=stds, color=color, marker="o", capsize=4, label=f"{label} (mean ± std)")
    xs, ys = zip(*((a, v) for a in alphas for v in by_alpha[a]))
    axis.scatter(xs, ys, color=color, alpha=0.35, s=14, label=f"{label} (each seed)")


def _accuracy_limits(axis: Axes, min_span: float = 0.1) -> None:
    """Accuracies that hardly differ would otherwise get an axis spanning 1e-17."""
    low, high = axis.get_ylim()
    if high - low < min_span:
        bottom = max(0.0, (low + high - min_span) / 2)
        axis.set_ylim(bottom, bottom + min_span)


def _benchmark_axes(benchmarks: Sequence[str], height: float = 4.2) -> tuple[plt.Figure, list[Axes]]:
    figure, axes = plt.subplots(1, len(benchmarks), figsize=(6.5 * len(benchmarks), height), squeeze=False,
                                constrained_layout=True)
    return figure, list(axes[0])


def _save(figure: plt.Figure, path: Path, title: str) -> None:
    figure.suptitle(title)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_accuracy_vs_alpha(rows: Sequence[dict[str, Any]], base_rows: Sequence[dict[str, Any]], metric: str,
                           path: Path, title: str) -> None:
    """`metric` against α, one panel per benchmark; the base model's mean ± std as a reference line and band."""
    benchmarks = list(dict.fromkeys(row["benchmark"] for row in rows))
    figure, axes = _benchmark_axes(benchmarks)
    for axis, benchmark in zip(axes, benchmarks):
        _series_vs_alpha(axis, [r for r in rows if r["benchmark"] == benchmark], metric, "trained", "C0")
        base = [float(r[metric]) for r in base_rows if r["benchmark"] == benchmark]
        if base:
            mean, std = _spread(base)
            axis.axhline(mean, color="C3", linestyle="--", label="base model (mean)")
            axis.axhspan(mean - std, mean + std, color="C3", alpha=0.12, label="base model (± std)")
        _accuracy_limits(axis)
        axis.set_title(benchmark)
        axis.set_xlabel("fixed exposure α")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend(loc="best", fontsize=8)
    _save(figure, path, title)


def plot_mismatch_vs_alpha(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """One panel per mismatch statistic against α (`rows` hold alpha, seed and the statistics)."""
    figure, axes = plt.subplots(1, len(STATISTICS), figsize=(4.2 * len(STATISTICS), 3.8), constrained_layout=True)
    for axis, statistic in zip(axes, STATISTICS):
        _series_vs_alpha(axis, rows, statistic, statistic, "C1")
        axis.set_title(MISMATCH_LABELS[statistic], fontsize=10)
        axis.set_xlabel("teacher exposure α")
        axis.set_ylabel(statistic)
        axis.grid(alpha=0.3)
        axis.legend(loc="best", fontsize=7)
    _save(figure, path, title)


def plot_bucket_accuracy_vs_alpha(rows: Sequence[dict[str, Any]], k: int, path: Path, title: str) -> None:
    """Average@k per difficulty bucket against α: one line with error bars per bucket, one panel per benchmark."""
    benchmarks = list(dict.fromkeys(row["benchmark"] for row in rows))
    figure, axes = _benchmark_axes(benchmarks)
    for axis, benchmark in zip(axes, benchmarks):
        for index, bucket in enumerate(BUCKETS):
            _series_vs_alpha(axis, [r for r in rows if r["benchmark"] == benchmark], f"average@{k}_{bucket}",
                             bucket, f"C{index}")
        axis.set_title(benchmark)
        axis.set_xlabel("fixed exposure α")
        axis.set_ylabel(f"Average@{k}")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
        axis.legend(loc="best", fontsize=7)
    _save(figure, path, title)


def plot_method_accuracy(rows: Sequence[dict[str, Any]], metric: str, path: Path, title: str) -> None:
    """Bars of `metric` per method (mean, std error bars) with each seed as a point; one panel per benchmark."""
    benchmarks = list(dict.fromkeys(row["benchmark"] for row in rows))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    figure, axes = _benchmark_axes(benchmarks, height=4.6)
    for axis, benchmark in zip(axes, benchmarks):
        for index, method in enumerate(methods):
            values = [float(r[metric]) for r in rows if r["benchmark"] == benchmark and r["method"] == method]
            mean, std = _spread(values)
            axis.bar(index, mean, yerr=std, capsize=4, color=f"C{index % 10}", alpha=0.8,
                     label="mean ± std over seeds" if index == 0 else None)
            axis.scatter([index] * len(values), values, color="black", s=12, zorder=3,
                         label="each seed" if index == 0 else None)
        _accuracy_limits(axis)
        axis.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        axis.set_title(benchmark)
        axis.set_xlabel("method")
        axis.set_ylabel(metric)
        axis.grid(axis="y", alpha=0.3)
        axis.legend(loc="best", fontsize=8)
    _save(figure, path, title)


def plot_learning_curves(curves: dict[str, dict[str, list[dict[str, Any]]]], path: Path, title: str) -> None:
    """probe_nll and rollout_accuracy against the step: per method (``{method: {run name: metrics rows}}``)
    the mean over seeds with a ±1 std band. A method whose rows lack a key has no line in that panel."""
    figure, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(6.5 * len(CURVE_PANELS), 4.2),
                                constrained_layout=True)
    for axis, (key, label) in zip(axes, CURVE_PANELS):
        for index, (method, seeds) in enumerate(curves.items()):
            by_step: dict[int, list[float]] = {}
            for rows in seeds.values():
                for row in rows:
                    if row.get(key) is not None:
                        by_step.setdefault(row["step"], []).append(float(row[key]))
            if not by_step:
                continue
            steps = sorted(by_step)
            means, stds = zip(*(_spread(by_step[s]) for s in steps))
            color = f"C{index % 10}"
            axis.plot(steps, means, color=color, linewidth=1.3, label=f"{method} (n={len(seeds)})")
            axis.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                              color=color, alpha=0.15)
        axis.set_title(f"{label}: mean, band ±1 std over seeds", fontsize=10)
        axis.set_xlabel("step")
        axis.set_ylabel(key)
        axis.grid(alpha=0.3)
        axis.legend(loc="best", fontsize=8)
    _save(figure, path, title)


def plot_alpha_trajectories(curves: dict[str, dict[str, list[dict[str, Any]]]], path: Path, title: str) -> None:
    """α against the step for each method in `curves` (one panel each), one thin line per seed."""
    figure, axes = plt.subplots(len(curves), 1, figsize=(9, 2.6 * len(curves)), squeeze=False, sharex=True,
                                constrained_layout=True)
    for axis, (method, seeds) in zip(axes[:, 0], curves.items()):
        for seed, rows in seeds.items():  # seed: the run's name
            pairs = [(row["step"], row["alpha"]) for row in rows if row.get("alpha") is not None]
            if pairs:
                axis.step(*zip(*pairs), where="post", linewidth=0.9, alpha=0.8, label=str(seed))
        axis.set_title(method)
        axis.set_ylabel("exposure α")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
        axis.legend(loc="upper right", fontsize=7, ncol=3)
    axes[-1, 0].set_xlabel("step")
    _save(figure, path, title)


def plot_paired_differences(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Each method's paired difference to each reference (rows of `compare_report.paired_rows`): the mean with
    its confidence interval over the pairs as a horizontal error bar and, with several base models, the interval
    over the base models' means as a thin one just below it; one panel per reference and benchmark, 0 marked."""
    panels = list(dict.fromkeys((row["benchmark"], row["reference"], row["reference_method"]) for row in rows))
    figure, axes = plt.subplots(1, len(panels), figsize=(max(8.0, 5.5 * len(panels)), 0.9 + 0.42 * len(
        {row["method"] for row in rows})), squeeze=False, constrained_layout=True)
    for axis, (benchmark, reference, method) in zip(axes[0], panels):
        shown = [row for row in rows if (row["benchmark"], row["reference"]) == (benchmark, reference)]
        for index, row in enumerate(shown):
            mean, low, high = (100 * float(row[key]) for key in ("mean", "low", "high"))
            interval = [[mean - low], [high - mean]] if row["pairs"] > 1 else None
            axis.errorbar(mean, index, xerr=interval, fmt="o", color=_verdict_color(low, high), capsize=4,
                          label="over the pairs" if index == 0 else None)
            if row["base_models"] > 1:
                base_low, base_high = (100 * float(row[key]) for key in ("base_model_low", "base_model_high"))
                # from low to high, not around `mean`: over unequal base models the two means differ
                axis.errorbar((base_low + base_high) / 2, index + 0.25, xerr=(base_high - base_low) / 2, fmt="none",
                              color=_verdict_color(base_low, base_high), alpha=0.6, linewidth=1, capsize=2,
                              label="over the base models" if index == 0 else None)
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_yticks(range(len(shown)), [row["method"] for row in shown])
        axis.invert_yaxis()
        axis.set_title(f"{benchmark}: − {reference} ({method})", fontsize=10)
        axis.set_xlabel("paired difference, percentage points (mean, 95 % CI)")
        axis.grid(axis="x", alpha=0.3)
        if any(row["base_models"] > 1 for row in shown):
            axis.legend(fontsize=8, loc="best")
    _save(figure, path, title)


def _verdict_color(low: float, high: float) -> str:
    """Green for an interval above 0, red below 0, grey across it."""
    return "C2" if low > 0 else "C3" if high < 0 else "C7"
