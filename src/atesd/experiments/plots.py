"""Plots of a run: training curves from metrics.jsonl, the exposure trajectory with decisions.jsonl (under exposure
per problem also α by difficulty over training), held-out accuracy per difficulty bucket; and the run's one-line
exposure summary."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt

from atesd.train.metrics import read_metrics

TRAINING_PANELS = [
    ("loss", "distillation loss (per token)"),
    ("kl_p90", "per-token KL, 90th percentile"),
    ("probe_nll", "probe NLL (held-out references)"),
    ("rollout_accuracy", "rollout accuracy"),
    ("top1_disagree", "teacher/student top-1 disagreement"),
    ("teacher_ref_logp", "teacher log-prob of reference (g_t)"),
]


def plot_training(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """A grid of the training statistics against the optimizer step."""
    figure, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    steps = [row["step"] for row in rows]
    for axis, (key, label) in zip(axes.flat, TRAINING_PANELS):
        values = [row.get(key) for row in rows]
        pairs = [(s, v) for s, v in zip(steps, values) if v is not None]
        if pairs:
            axis.plot(*zip(*pairs), label=key, linewidth=1.2)
            axis.legend(loc="best", fontsize=8)
        else:  # a statistic this method does not measure (GRPO and SFT have no teacher at an exposure)
            axis.text(0.5, 0.5, "not measured by this method", ha="center", va="center", transform=axis.transAxes)
        axis.set_title(label)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_bucket_accuracy(summaries: dict[str, dict[str, dict]], metric: str, path: Path, title: str) -> None:
    """Grouped bars: `metric` per difficulty bucket for each labelled model (``{label: summary_by_bucket}``)."""
    labels = list(summaries)
    buckets = list(next(iter(summaries.values())))
    width = 0.8 / max(len(labels), 1)
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(buckets)), 4.2), constrained_layout=True)
    for index, label in enumerate(labels):
        values = [summaries[label][bucket][metric] for bucket in buckets]
        positions = [b + (index - (len(labels) - 1) / 2) * width for b in range(len(buckets))]
        axis.bar(positions, values, width=width, label=label)
    axis.set_xticks(range(len(buckets)), buckets)
    axis.set_xlabel("difficulty bucket")
    axis.set_ylabel(metric)
    axis.set_ylim(0, 1)
    axis.set_title(title)
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_exposure(metrics: list[dict[str, Any]], decisions: list[dict[str, Any]], path: Path, title: str) -> None:
    """α over training: the α each update used (from metrics.jsonl) and, for the controller, the policy's Beta
    mean ± one standard deviation at each decision; below, each decision's reward terms (decisions.jsonl)."""
    rewarded = [row for row in decisions if row.get("R") is not None]
    panels = 3 if rewarded else 1
    figure, axes = plt.subplots(panels, 1, figsize=(10, 3.2 * panels), sharex=True, squeeze=False,
                                constrained_layout=True)
    axis = axes[0, 0]
    steps = [row["step"] for row in metrics]
    axis.step(steps, [row["alpha"] for row in metrics], where="post", label="α used", linewidth=1.4)
    beta = [row for row in decisions if row.get("mean") is not None]
    if beta:
        # each decision's Beta holds until the next decision; the last one until the final step
        edges = [row["step"] for row in beta] + [max(steps, default=beta[-1]["step"]) + 1]
        means = [row["mean"] for row in beta] + [beta[-1]["mean"]]
        low = [max(0.0, row["mean"] - row["std"]) for row in beta] + [max(0.0, beta[-1]["mean"] - beta[-1]["std"])]
        high = [min(1.0, row["mean"] + row["std"]) for row in beta] + [min(1.0, beta[-1]["mean"] + beta[-1]["std"])]
        axis.step(edges, means, where="post", color="C1", label="policy mean")
        axis.fill_between(edges, low, high, step="post", color="C1", alpha=0.2, label="policy mean ± std")
    axis.set_ylim(0, 1.02)
    axis.set_ylabel("exposure α")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize=8)
    if rewarded:
        decided = [row["step"] for row in rewarded]
        axes[1, 0].plot(decided, [row["R"] for row in rewarded], "o-", label="R", markersize=3)
        axes[1, 0].plot(decided, [row["G_lp"] for row in rewarded], "s--", label="G_lp", markersize=3)
        axes[1, 0].set_ylabel("reward")
        axes[2, 0].plot(decided, [row["G_gt"] for row in rewarded], "^-", color="C2", label="G_gt", markersize=3)
        axes[2, 0].set_ylabel("teacher log-prob")
        for extra in (axes[1, 0], axes[2, 0]):
            extra.grid(alpha=0.3)
            extra.legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel("step (decision rows at their first update)")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def per_problem_rows(decisions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of exposure per problem (one per step, an α per problem) among a run's decisions."""
    return [row for row in decisions if isinstance(row.get("alpha"), list)]


def difficulty_groups(rows: Sequence[dict[str, Any]]) -> tuple[list[list[str]], list[str]]:
    """Each row's problems' difficulty, and the difficulties in order: the data's own bucket where the rows carry
    one (in natural order: ops=2 before ops=10), else the reference's number of segments in three bands
    (terciles over every logged problem), the one generic difficulty."""
    if all("bucket" in row for row in rows):
        groups = [[str(bucket) for bucket in row["bucket"]] for row in rows]
        return groups, sorted({g for row in groups for g in row}, key=_natural)
    segments = sorted(m for row in rows for m in row["segments"])
    low, high = segments[len(segments) // 3], segments[2 * len(segments) // 3]
    bands = [f"≤ {low} segments", f"{low + 1}–{high} segments", f"> {high} segments"]

    def band(m: int) -> str:
        return bands[0] if m <= low else (bands[1] if m <= high else bands[2])

    groups = [[band(m) for m in row["segments"]] for row in rows]
    return groups, [b for b in bands if any(b in row for row in groups)]


def _natural(label: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", label)]


def plot_alpha_by_difficulty(panels: dict[str, list[dict[str, Any]]], path: Path, title: str,
                             windows: int = 10) -> None:
    """Exposure per problem: the mean α the problems of each difficulty got, in `windows` spans of training,
    one panel per label (``{label: per-problem decision rows}``, several seeds' rows pooled)."""
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)), squeeze=False, sharex=True,
                                constrained_layout=True)
    for axis, (label, rows) in zip(axes[:, 0], panels.items()):
        last = max(row["step"] for row in rows)
        width = max(1, -(-last // windows))
        sums: dict[str, dict[int, list[float]]] = {}
        groups_per_row, order = difficulty_groups(rows)
        for row, groups in zip(rows, groups_per_row):
            for alpha, group in zip(row["alpha"], groups):
                sums.setdefault(group, {}).setdefault((row["step"] - 1) // width, []).append(alpha)
        for index, group in enumerate(order):
            spans = sorted(sums[group])
            axis.plot([(span + 0.5) * width for span in spans], [sum(sums[group][s]) / len(sums[group][s])
                      for s in spans], "o-", color=f"C{index % 10}", markersize=3, label=group)
        axis.set_title(label)
        axis.set_ylabel(f"mean α per {width} steps")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
        axis.legend(loc="best", fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("step")
    figure.suptitle(title)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_run(run_dir: Path, title: str) -> list[Path]:
    """The plots of a finished run directory: ``training.png``, ``alpha.png`` when the exposure varied, and
    ``alpha_by_difficulty.png`` under exposure per problem."""
    metrics = read_metrics(run_dir / "metrics.jsonl")
    decisions = read_metrics(run_dir / "decisions.jsonl")
    per_problem = per_problem_rows(decisions)
    written = [run_dir / "training.png"]
    plot_training(metrics, written[0], title)
    if decisions or len({row.get("alpha") for row in metrics}) > 1:
        written.append(run_dir / "alpha.png")
        # the step's mean α for a per-problem run; its decisions are drawn by difficulty below
        plot_exposure(metrics, [] if per_problem else decisions, written[-1], f"{title}: exposure")
    if per_problem:
        written.append(run_dir / "alpha_by_difficulty.png")
        plot_alpha_by_difficulty({title: per_problem}, written[-1], f"{title}: exposure per problem by difficulty")
    return written


def exposure_summary(run_dir: Path) -> str | None:
    """One line on the exposure a run used (None when it was fixed): the α range and, for the controller, how
    the policy's Beta mean moved and how often it learned."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    alphas = [row["alpha"] for row in rows if row.get("alpha") is not None]
    if len(set(alphas)) < 2:
        return None
    line = f"exposure: α used {min(alphas):.2f}–{max(alphas):.2f}, mean {sum(alphas) / len(alphas):.2f}"
    decisions = sorted(read_metrics(run_dir / "decisions.jsonl"), key=lambda row: row["step"])
    # under exposure per problem a row holds one Beta mean per problem of its step: their mean is the step's
    means = [sum(m) / len(m) if isinstance(m, list) else m for m in (row.get("mean") for row in decisions)
             if m is not None]
    if means:
        updates = max((row.get("controller_updates", 0) for row in rows), default=0)
        kind = "per-problem controller decisions (steps)" if isinstance(decisions[0]["mean"], list) else \
            "controller decisions"
        line += (f"; {len(means)} {kind}, policy mean {means[0]:.2f} → {means[-1]:.2f} after "
                 f"{updates} controller updates")
    return line + " (alpha.png)"
