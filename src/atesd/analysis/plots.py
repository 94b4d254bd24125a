"""Plots of a run: training curves from metrics.jsonl and held-out accuracy per difficulty bucket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt

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
        axis.set_title(label)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(loc="best", fontsize=8)
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
