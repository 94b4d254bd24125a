"""Rows and tables of an experiment: one row per run and benchmark (metrics re-summarised by difficulty bucket,
plus the run's compute), mean ± std over seeds, CSV files and markdown tables."""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from atesd.experiments.buckets import BUCKETS, difficulty_buckets, read_problem_results, rebucketed_summary
from atesd.experiments.runs import FinishedRun
from atesd.files import atomic_write_text

COMPUTE_COLUMNS = ("generated_tokens", "forward_tokens", "train_seconds", "eval_seconds", "updates")


def metric_columns(k: int) -> list[str]:
    """Average@k overall and per bucket, Pass@k, Maj@k and the boxed rate."""
    return [f"average@{k}", *(f"average@{k}_{bucket}" for bucket in BUCKETS), f"pass@{k}", f"maj@{k}", "boxed_rate"]


def run_rows(finished: Sequence[FinishedRun], k: int) -> list[dict[str, Any]]:
    """One row per run and benchmark: label, base model, seed, benchmark, `metric_columns(k)` and
    `COMPUTE_COLUMNS`.

    Buckets come from the base runs among `finished` (``trains=False``) of the run's own base model, pooled
    over their seeds: a problem is hard for a method's run when it was hard for the model that run started from.
    """
    base = [f for f in finished if not f.run.spec.trains]
    if not base:
        raise ValueError("difficulty buckets need at least one base run among the finished runs")
    benchmarks = list(base[0].result["benchmarks"])
    buckets = {(base_seed, name): difficulty_buckets(read_problem_results(f.eval_file(name)) for f in base
                                                     if f.run.spec.base_seed == base_seed)
               for base_seed in {f.run.spec.base_seed for f in base} for name in benchmarks}
    rows = []
    for run in finished:
        for name in benchmarks:
            path = run.eval_file(name)
            own = buckets.get((run.run.spec.base_seed, name))
            if own is None:
                raise ValueError(f"{run.run.directory}: no base run of its base model {run.run.spec.base_seed} "
                                 "to make its difficulty buckets")
            summary = rebucketed_summary(read_problem_results(path), own, k, path)
            metrics = [summary["all"][f"average@{k}"],
                       *(summary[b][f"average@{k}"] if b in summary else None for b in BUCKETS),
                       summary["all"][f"pass@{k}"], summary["all"][f"maj@{k}"], summary["all"]["boxed_rate"]]
            # The spec's label, not the result's: a run reused from another experiment keeps its own there.
            rows.append({"label": run.run.spec.label, "base_model": run.run.spec.base_seed,
                         "seed": run.run.spec.seed, "benchmark": name,
                         **dict(zip(metric_columns(k), metrics)),
                         **{column: run.result.get(column) for column in COMPUTE_COLUMNS}})
    return rows


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value) of the values that are not None."""
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else 0.0


def aggregate(rows: Sequence[dict[str, Any]], group_by: Sequence[str], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Per group (in first-seen order): the group keys, ``seeds`` (rows in the group), and ``<column>_mean`` and
    ``<column>_std`` for each column."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in group_by), []).append(row)
    summary = []
    for key, members in groups.items():
        entry: dict[str, Any] = {**dict(zip(group_by, key)), "seeds": len(members)}
        for column in columns:
            entry[f"{column}_mean"], entry[f"{column}_std"] = mean_std([m.get(column) for m in members])
        summary.append(entry)
    return summary


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Rows as CSV with the first row's keys as the header; None becomes an empty cell. Written atomically: a
    reader (``compare --sweep DIR``) sees the old file or the new one, never part of one."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows([{key: "" if value is None else value for key, value in row.items()} for row in rows])
    atomic_write_text(path, text.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def count(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def mean_std_cell(entry: dict[str, Any], column: str, fmt: Callable[[float | None], str]) -> str:
    """``mean ± std`` of an `aggregate` entry's column, each formatted with `fmt`."""
    mean, std = entry[f"{column}_mean"], entry[f"{column}_std"]
    return fmt(mean) if mean is None else f"{fmt(mean)} ± {fmt(std)}"


def seeds_cell(summary: dict[str, Any] | None, key: str) -> str:
    """An evaluation metric in %, with ``± std`` when it was measured over several seeds (`combine_seeds`)."""
    if summary is None:
        return "–"
    several = summary.get("seeds", 1) > 1
    return percent(summary[key]) + (f" ± {percent(summary[f'{key}_std'])}" if several else "")


def markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def evaluation_table(per_label: dict[str, dict[str, dict]], k: int) -> str:
    """Rows: labels; columns: Average@k overall and per bucket, then Pass@k, Maj@k and boxed rate (each ± its
    std over seeds when ``eval.seeds`` > 1)."""
    buckets = [b for b in next(iter(per_label.values())) if b != "all"]
    header = ["model", f"Average@{k}", *buckets, f"Pass@{k}", f"Maj@{k}", "boxed"]
    body = [[label, *(seeds_cell(summary[b], f"average@{k}") for b in ("all", *buckets)),
             *(seeds_cell(summary["all"], key) for key in (f"pass@{k}", f"maj@{k}", "boxed_rate"))]
            for label, summary in per_label.items()]
    return markdown(header, body)
