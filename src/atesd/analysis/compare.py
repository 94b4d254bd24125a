"""`atesd compare`: every method of docs/method.md#baselines and the two reward ablations, over several seeds, on equal updates.

Each method is a recipe file of the recipe directory plus the overrides that make it (`presets.methods`); the extra
overrides of the command apply to all, then the method's own, so that no extra override can turn one method
into another. Every trained method must end up with the same ``train.steps`` (equal student updates), which is
checked before anything runs. The base model is always evaluated: its per-problem accuracy makes the
difficulty buckets.

Outputs in the out folder: ``results.csv`` (one row per method × seed × benchmark), ``summary.csv`` and
``report.md`` (mean ± std over seeds of the metrics and the compute columns), ``accuracy.png``,
``learning_curves.png``, when some method varied α ``alpha_trajectories.png``, and under exposure per problem
``alpha_by_difficulty.png``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from atesd.analysis.buckets import BUCKETS, EASY_FROM, HARD_BELOW
from atesd.analysis.experiment_plots import (
    plot_alpha_trajectories,
    plot_learning_curves,
    plot_method_accuracy,
)
from atesd.analysis.plots import per_problem_rows, plot_alpha_by_difficulty
from atesd.analysis.presets import (
    BASE_LABEL,
    PAPER_BEST_ALPHA,
    QUICK_EVAL_PROBLEMS,
    QUICK_STEPS,
    methods,
)
from atesd.analysis.runs import (
    LOCATION_KEYS,
    RESULT_FILE,
    RUNS_DIR,
    FinishedRun,
    Run,
    RunSpec,
    guard_settings,
    plan,
    run_all,
)
from atesd.analysis.sweep import best_alpha
from atesd.analysis.tables import (
    COMPUTE_COLUMNS,
    aggregate,
    count,
    markdown,
    mean_std_cell,
    metric_columns,
    percent,
    run_rows,
    seconds,
    write_csv,
)
from atesd.config import ConfigError, changed_keys, load_config
from atesd.train.metrics import read_metrics

SETTINGS_FILE = "compare.json"


def quick_overrides() -> list[str]:
    return [f"train.steps={QUICK_STEPS}", f"eval.max_problems={QUICK_EVAL_PROBLEMS}"]


def compare_specs(recipes: Path, chosen: Sequence[str], overrides: Sequence[str], seeds: int,
                  best: float) -> list[RunSpec]:
    """The base evaluations first, then each seed's methods (so that a partial comparison covers all methods)."""
    table = methods(best)
    unknown = [name for name in chosen if name not in table]
    if unknown:
        raise ConfigError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(table)}")
    trained = [name for name in dict.fromkeys(chosen) if name != BASE_LABEL]

    def spec(name: str, seed: int) -> RunSpec:
        method = table[name]
        return RunSpec(name, recipes / method.recipe, (*overrides, *method.overrides), seed,
                       trains=name != BASE_LABEL)

    return ([spec(BASE_LABEL, seed) for seed in range(seeds)]
            + [spec(name, seed) for seed in range(seeds) for name in trained])


def check_equal_updates(runs: Sequence[Run]) -> None:
    steps = {run.spec.label: run.config.train.steps for run in runs if run.spec.trains}
    if len(set(steps.values())) > 1:
        listed = ", ".join(f"{label}: {value}" for label, value in steps.items())
        raise ConfigError(f"the methods would train for different numbers of updates ({listed}): set train.steps "
                          "in the recipes alike, or pass train.steps=N to atesd compare")


def reuse_from_sweep(runs: Sequence[Run], sweep_dir: Path) -> list[Run]:
    """Each run that a finished run of the sweep already is (same config apart from its location, and both
    trained or both not) is taken from the sweep instead of being run again."""
    finished = []
    for directory in sorted((sweep_dir / RUNS_DIR).glob("*")):
        if (directory / RESULT_FILE).is_file() and (directory / "config.yaml").is_file():
            trains = json.loads((directory / RESULT_FILE).read_text())["method"] != BASE_LABEL
            finished.append((directory, trains, load_config(directory / "config.yaml")))
    reused = []
    for run in runs:
        match = next((directory for directory, trains, config in finished if trains == run.spec.trains
                      and not changed_keys(config, run.config, ignore=LOCATION_KEYS)), None)
        reused.append(run if match is None else Run(run.spec, run.config, match))
    return reused


def run_compare(recipes: Path, chosen: Sequence[str], overrides: Sequence[str], seeds: int, out: Path, *,
                quick: bool, best: float | None, sweep_dir: Path | None, command: str) -> list[Path]:
    """Run (or continue) the comparison in `out` and write its tables, CSVs and plots; returns the files."""
    if not recipes.is_dir():
        raise ConfigError(f"--recipes: {recipes} is not a directory of method configs")
    if seeds < 1:
        raise ConfigError("atesd compare needs at least one seed")
    if best is None:
        best = best_alpha(sweep_dir) if sweep_dir is not None else PAPER_BEST_ALPHA
    all_overrides = [*(quick_overrides() if quick else []), *overrides]
    guard_settings(out / SETTINGS_FILE, {
        "recipes": str(recipes.resolve()), "methods": list(chosen), "overrides": list(overrides), "seeds": seeds,
        "quick": quick, "best_alpha": best, "sweep": str(sweep_dir.resolve()) if sweep_dir else None})
    runs = plan(compare_specs(recipes, chosen, all_overrides, seeds, best), out)
    check_equal_updates(runs)
    if sweep_dir is not None:
        runs = reuse_from_sweep(runs, sweep_dir)
        taken = [f"{run.spec.name} ← {run.directory}" for run in runs if not run.directory.is_relative_to(out)]
        if taken:
            print("reused from the sweep: " + "; ".join(taken), flush=True)
    finished = run_all(runs)

    k = runs[0].config.eval.num_samples
    rows = [{"method": row.pop("label"), **row} for row in run_rows(finished, k)]
    columns = [*metric_columns(k), *COMPUTE_COLUMNS]
    summary = aggregate(rows, ["method", "benchmark"], columns)
    write_csv(rows, out / "results.csv")
    write_csv(summary, out / "summary.csv")

    written = [out / "results.csv", out / "summary.csv", out / "report.md", out / "accuracy.png"]
    plot_method_accuracy(rows, f"average@{k}", out / "accuracy.png",
                         f"held-out Average@{k} per method ({seeds} seed{'s' * (seeds > 1)})")
    curves = training_curves(finished)
    if curves:
        written.append(out / "learning_curves.png")
        plot_learning_curves(curves, written[-1], "learning curves (mean ± std over seeds)")
    varying = {label: seeds_rows for label, seeds_rows in curves.items()
               if len({row.get("alpha") for rows in seeds_rows.values() for row in rows} - {None}) > 1}
    if varying:
        written.append(out / "alpha_trajectories.png")
        plot_alpha_trajectories(varying, written[-1], "exposure α used at each step (one line per seed)")
    per_problem = per_problem_decisions(finished)
    if per_problem:
        written.append(out / "alpha_by_difficulty.png")
        plot_alpha_by_difficulty(per_problem, written[-1], "exposure per problem: mean α by difficulty (seeds pooled)")
    settings = {"recipes": str(recipes), "seeds": seeds, "train.steps": runs[-1].config.train.steps,
                "quick": quick, "fixed-best α": f"{best:g}", "sweep": str(sweep_dir) if sweep_dir else "none"}
    (out / "report.md").write_text(compare_report(summary, k, command, settings,
                                                  [p.name for p in written if p.suffix == ".png"]))
    return written


def training_curves(finished: Sequence[FinishedRun]) -> dict[str, dict[int, list[dict]]]:
    """``{method: {seed: metrics rows}}`` of the runs that trained."""
    curves: dict[str, dict[int, list[dict]]] = {}
    for run in finished:
        if run.run.spec.trains:
            curves.setdefault(run.run.spec.label, {})[run.run.spec.seed] = read_metrics(
                run.run.directory / "metrics.jsonl")
    return curves


def per_problem_decisions(finished: Sequence[FinishedRun]) -> dict[str, list[dict]]:
    """``{method: per-problem decision rows of all its seeds}`` of the methods with exposure per problem."""
    pooled: dict[str, list[dict]] = {}
    for run in finished:
        rows = per_problem_rows(read_metrics(run.run.directory / "decisions.jsonl")) if run.run.spec.trains else []
        if rows:
            pooled.setdefault(run.run.spec.label, []).extend(rows)
    return pooled


def compare_report(summary: list[dict], k: int, command: str, settings: dict[str, object],
                   plots: Sequence[str]) -> str:
    """The markdown report: command, settings, a table of mean ± std per method and benchmark, the plots."""
    header = ["method", "seeds", f"Average@{k}", *BUCKETS, f"Pass@{k}", f"Maj@{k}", "generated tokens",
              "forward tokens", "train s"]
    metrics = [c for c in metric_columns(k) if c != "boxed_rate"]
    lines = ["# Method comparison\n", f"Command: `{command}`\n",
             "Settings: " + ", ".join(f"{key} = {value}" for key, value in settings.items()) + "\n",
             (f"Mean ± sample std over seeds; accuracies in %. Difficulty buckets from the base model's per-problem "
             f"Average pooled over its seeds: hard < {HARD_BELOW:.3g} ≤ medium < {EASY_FROM:.3g} ≤ easy. "
             "Compute columns are training totals per run: tokens sampled in rollouts, tokens through every "
             "scoring forward, and the summed step times (– where the trainer did not log them).\n")]
    for benchmark in dict.fromkeys(entry["benchmark"] for entry in summary):
        body = [[entry["method"], str(entry["seeds"]), *(mean_std_cell(entry, c, percent) for c in metrics),
                 mean_std_cell(entry, "generated_tokens", count), mean_std_cell(entry, "forward_tokens", count),
                 mean_std_cell(entry, "train_seconds", seconds)]
                for entry in summary if entry["benchmark"] == benchmark]
        lines.append(f"## {benchmark}\n\n{markdown(header, body)}\n")
    lines += [f"![{name.removesuffix('.png')}]({name})\n" for name in plots]
    return "\n".join(lines)
