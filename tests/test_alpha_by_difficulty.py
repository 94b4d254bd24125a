"""What a run with exposure per problem leaves for reading it: the difficulty groups of its decisions, the
α-by-difficulty plot of `atesd train` and `atesd compare`, and the exposure line of the run's summary."""

from __future__ import annotations

import json
from pathlib import Path

from atesd.config import load_config
from atesd.experiments.compare import per_problem_decisions
from atesd.experiments.plots import difficulty_groups, exposure_summary, per_problem_rows, plot_run
from atesd.experiments.runs import FinishedRun, Run, RunSpec


def decision_row(step: int, alphas: list[float], segments: list[int], buckets: list[str] | None) -> dict:
    row = {"step": step, "problem": list(range(len(alphas))), "alpha": alphas, "mean": [0.5] * len(alphas),
           "correct": [1] * len(alphas), "segments": segments, "credited": 2, "R": None, "G_lp": None,
           "G_gt": None, "state": {}, "logged_at": None}
    return {**row, "bucket": buckets} if buckets is not None else row


def write_run(directory: Path, rows: list[dict]) -> Path:
    directory.mkdir(parents=True)
    alphas = [row["alpha"] if isinstance(row["alpha"], float) else sum(row["alpha"]) / len(row["alpha"])
              for row in rows]
    metrics = [{"step": row["step"], "alpha": alpha, "loss": 1.0, "controller_updates": row["step"] // 2}
               for row, alpha in zip(rows, alphas)]
    for name, lines in (("metrics.jsonl", metrics), ("decisions.jsonl", rows)):
        (directory / name).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return directory


def test_difficulty_is_the_datas_bucket_in_natural_order_else_bands_of_segments():
    with_buckets = [decision_row(1, [0.9, 0.1], [2, 9], ["ops=10", "ops=2"])]
    assert difficulty_groups(with_buckets) == ([["ops=10", "ops=2"]], ["ops=2", "ops=10"])
    without = [decision_row(1, [0.1] * 3, [1, 2, 3], None), decision_row(2, [0.1] * 3, [4, 5, 6], None)]
    groups, order = difficulty_groups(without)
    # terciles of the six segment counts 1..6: the 3rd and 5th values bound the bands
    assert order == ["≤ 3 segments", "4–5 segments", "> 5 segments"]
    assert groups == [[order[0]] * 3, [order[1], order[1], order[2]]]


def test_a_per_problem_run_plots_alpha_by_difficulty_and_summarises_its_policy(tmp_path):
    rows = [decision_row(step, [0.2 + 0.01 * step, 0.8], [1, 5], ["ops=2", "ops=6"]) for step in range(1, 21)]
    run_dir = write_run(tmp_path / "run", rows)
    assert per_problem_rows(rows) == rows and per_problem_rows([{"alpha": 0.5, "mean": 0.5}]) == []
    written = plot_run(run_dir, "per-problem")
    assert [path.name for path in written] == ["training.png", "alpha.png", "alpha_by_difficulty.png"]
    assert all(path.stat().st_size > 0 for path in written)
    summary = exposure_summary(run_dir)
    assert "20 per-problem controller decisions (steps), policy mean 0.50 → 0.50 after 10 controller updates" \
        in summary


def test_compare_pools_the_per_problem_decisions_of_each_methods_seeds(tmp_path):
    config = load_config(None)
    finished = []
    for label, seed, per_problem in (("atesd-per-problem", 0, True), ("atesd-per-problem", 1, True),
                                     ("atesd", 0, False)):
        rows = [decision_row(1, [0.3, 0.7], [1, 2], None)] if per_problem else [{"step": 1, "alpha": 0.4}]
        directory = write_run(tmp_path / f"{label}-{seed}", rows)
        finished.append(FinishedRun(Run(RunSpec(label, Path("atesd.yaml"), (), seed), config, directory), {}))
    pooled = per_problem_decisions(finished)
    assert list(pooled) == ["atesd-per-problem"] and len(pooled["atesd-per-problem"]) == 2
