"""`atesd compare`: every method of docs/method.md#baselines and the reward ablations, over base models × seeds,
on equal updates, with the statistics that decide between them.

Each method is a recipe file of the recipe directory plus the overrides that make it (`presets.methods`, and
with ``--alphas`` a run at each fixed exposure); the extra overrides of the command apply to all, then the
method's own, so that no extra override can turn one method into another. Every trained method must end up
with the same ``train.steps`` (equal student updates), which is checked before anything runs. The base model
is always evaluated: its per-problem accuracy makes the difficulty buckets. With ``--base-models N`` all of it
runs on each of N embedded base models (warm-start seeds; ``--first-base-model K`` starts them at K, for a check
on base models an earlier choice did not see), and methods are compared pair by pair — same base
model, same training seed — with t-intervals over the pairs (`atesd.experiments.paired`).

Outputs in the out folder: ``results.csv`` (one row per method × base model × seed × benchmark),
``summary.csv``, ``paired.csv`` (each method against OPSD and the best fixed α), ``report.md`` (means with
95 % intervals, the paired differences, the exposure used and, where it varied, what each reward term says about
it (`diagnose`), under exposure per problem the α per difficulty, the mismatch per α, the paper's claims with
their verdicts, and the compute columns), ``accuracy.png``,
``paired_differences.png``, ``learning_curves.png``, when some method varied α ``alpha_trajectories.png``,
and under exposure per problem ``alpha_by_difficulty.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from atesd.config import ConfigError, changed_keys
from atesd.experiments.buckets import BUCKETS
from atesd.experiments.claims import best_fixed, bucket_claim, method_claims, mismatch_claim
from atesd.experiments.compare_report import (
    claims_section,
    diagnosis_section,
    difficulty_section,
    exposure_section,
    means_section,
    mismatch_section,
    paired_rows,
    paired_section,
    preamble,
)
from atesd.experiments.diagnose_report import method_diagnoses
from atesd.experiments.experiment_plots import (
    plot_alpha_trajectories,
    plot_learning_curves,
    plot_method_accuracy,
    plot_paired_differences,
)
from atesd.experiments.guards import (
    MAX_COUNTS,
    check_counts,
    distinct,
    existing_folder,
    guard_settings,
    made,
    read_json,
    report_or_warn,
)
from atesd.experiments.paired import Pair
from atesd.experiments.plots import per_problem_rows, plot_alpha_by_difficulty
from atesd.experiments.presets import (
    BASE_LABEL,
    DEFAULT_MISMATCH_PROBLEMS,
    PAPER_BEST_ALPHA,
    QUICK_EVAL_PROBLEMS,
    QUICK_STEPS,
    alpha_label,
    fixed_alpha_methods,
    methods,
)
from atesd.experiments.runs import (
    LOCATION_KEYS,
    RESULT_FILE,
    FinishedRun,
    Run,
    RunSpec,
    continue_shorter,
    overrides_for_methods,
    parallel_map,
    plan,
    run_all,
    saved_runs,
)
from atesd.experiments.sweep import best_alpha, seed_mismatch
from atesd.experiments.tables import COMPUTE_COLUMNS, aggregate, metric_columns, run_rows, write_csv
from atesd.files import atomic_write_text
from atesd.train.metrics import read_metrics

SETTINGS_FILE = "compare.json"


def quick_overrides() -> list[str]:
    return [f"train.steps={QUICK_STEPS}", f"eval.max_problems={QUICK_EVAL_PROBLEMS}"]


def compare_specs(recipes: Path, chosen: Sequence[str], overrides: Sequence[str], seeds: int, best: float,
                  alphas: Sequence[float] = (), base_seeds: Sequence[int | None] = (None,)) -> list[RunSpec]:
    """The base evaluations first, then the methods of each training seed on every base model in turn (so that a
    partial comparison covers all methods and base models); `alphas` adds a run at each of those fixed exposures
    (α = 1 is ``opsd``)."""
    fixed = fixed_alpha_methods(tuple(alphas))
    table = {**methods(best), **fixed}
    unknown = [name for name in chosen if name not in table]
    if unknown:
        raise ConfigError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(table)}")
    with_alphas = [*chosen, *fixed, *(["opsd"] if 1 in alphas else [])]
    trained = [name for name in dict.fromkeys(with_alphas) if name != BASE_LABEL]
    taken = overrides_for_methods({name: (recipes / table[name].recipe, table[name].overrides)
                                   for name in [BASE_LABEL, *trained]}, overrides, command="the comparison")

    def spec(name: str, base_seed: int | None, seed: int) -> RunSpec:
        return RunSpec(name, recipes / table[name].recipe, taken[name], seed, trains=name != BASE_LABEL,
                       base_seed=base_seed)

    return ([spec(BASE_LABEL, base, seed) for base in base_seeds for seed in range(seeds)]
            + [spec(name, base, seed) for seed in range(seeds) for base in base_seeds for name in trained])


def check_equal_updates(runs: Sequence[Run]) -> None:
    steps = {run.spec.label: run.config.train.steps for run in runs if run.spec.trains}
    if len(set(steps.values())) > 1:
        listed = ", ".join(f"{label}: {value}" for label, value in steps.items())
        raise ConfigError(f"the methods would train for different numbers of updates ({listed}): set train.steps "
                          "in the recipes alike, or pass train.steps=N to atesd compare")


def reuse_finished(runs: Sequence[Run], folders: Sequence[Path]) -> list[Run]:
    """Each run that a finished run of one of `folders` (a sweep's or another comparison's out folder) already
    is — same config apart from its location, and both trained or both not — is taken from there instead of
    being run again."""
    finished = [(directory, read_json(directory / RESULT_FILE)["method"] != BASE_LABEL, config)
                for folder in folders for directory, config in saved_runs(folder, RESULT_FILE)]
    reused = []
    for run in runs:
        match = next((directory for directory, trains, config in finished if trains == run.spec.trains
                      and not changed_keys(config, run.config, ignore=LOCATION_KEYS)), None)
        reused.append(run if match is None else Run(run.spec, run.config, match))
    return reused


def check_compare_arguments(recipes: Path, chosen: Sequence[str], *, seeds: int, base_models: int | None,
                            first_base_model: int, jobs: int, mismatch_problems: int | None, alphas: Sequence[float],
                            best: float | None, sweep_dir: Path | None, continue_from: Path | None,
                            reuse: Sequence[Path]) -> None:
    """Refuse the arguments of `run_compare` that are invalid, or would do nothing, before anything is planned: the
    recipe directory, the counts, the first base model, the fixed exposures, the best fixed α, and each folder given
    (`sweep_dir`, `continue_from`, `reuse`) that is not an existing folder."""
    if not recipes.is_dir():
        raise ConfigError(f"--recipes: {recipes} is not a directory of method configs")
    check_counts(seeds=seeds, base_models=base_models, jobs=jobs, mismatch_problems=mismatch_problems)
    if first_base_model and base_models is None:
        raise ConfigError(f"--first-base-model {first_base_model} starts the base models of --base-models: give "
                          "--base-models N too, or leave it out")
    if not 0 <= first_base_model <= MAX_COUNTS["base_models"]:
        raise ConfigError(f"--first-base-model is a warm-start seed in [0, {MAX_COUNTS['base_models']}], got "
                          f"{first_base_model}")
    if mismatch_problems is not None and not alphas:
        raise ConfigError("--mismatch-problems sizes the mismatch measured for the runs of --alphas: give --alphas "
                          "too, or leave it out")
    if best is not None and "fixed-best" not in chosen:
        raise ConfigError(f"--best-alpha is the α of fixed-best, which --methods {' '.join(chosen)} leaves out: add "
                          "fixed-best, or leave --best-alpha out")
    distinct(alphas, "--alphas")
    if any(not 0 <= alpha <= 1 for alpha in alphas):
        raise ConfigError(f"--alphas: every α must lie in [0, 1], got {' '.join(f'{a:g}' for a in alphas)}")
    if best is not None and not 0 <= best <= 1:  # NaN fails this too
        raise ConfigError(f"--best-alpha must be an exposure in [0, 1], got {best}")
    for folder, flag in ((sweep_dir, "--sweep"), (continue_from, "--continue-from"), *((f, "--reuse") for f in reuse)):
        if folder is not None:
            existing_folder(folder, flag)


def take_earlier_runs(runs: list[Run], sources: Sequence[Path], continue_from: Path | None, out: Path) -> list[Run]:
    """`runs` with those that a folder of `sources` has finished taken from there (`reuse_finished`), and those
    that `continue_from` holds with fewer updates set to start from there (`runs.continue_shorter`); each printed."""
    if sources:
        runs = reuse_finished(runs, sources)
        taken = [f"{run.spec.name} ← {run.directory}" for run in runs if not run.directory.is_relative_to(out)]
        if taken:
            print("reused: " + "; ".join(taken), flush=True)
    if continue_from is not None:
        for run in continue_shorter(runs, continue_from):
            print(f"continued: {run.spec.name} from {continue_from}'s run of fewer updates", flush=True)
    return runs


def run_compare(recipes: Path, chosen: Sequence[str], overrides: Sequence[str], seeds: int, out: Path, *,
                quick: bool, best: float | None, sweep_dir: Path | None, command: str, base_models: int | None = None,
                first_base_model: int = 0, alphas: Sequence[float] = (), jobs: int = 1,
                mismatch_problems: int | None = None, reuse: Sequence[Path] = (),
                continue_from: Path | None = None) -> list[Path]:
    """Run (or continue) the comparison in `out` and write its tables, CSVs and plots; returns the files.

    `base_models` N runs everything on the embedded base models of warm-start seeds K … K+N−1, K being
    `first_base_model`; `jobs` runs that many runs at once, in processes of one thread each; the finished runs of
    the `reuse` folders (and of `sweep_dir`) that are runs of this comparison are taken from there; a run that
    `continue_from` holds with fewer updates starts from it (`runs.continue_shorter`).
    """
    check_compare_arguments(recipes, chosen, seeds=seeds, base_models=base_models,
                            first_base_model=first_base_model, jobs=jobs, mismatch_problems=mismatch_problems,
                            alphas=alphas, best=best, sweep_dir=sweep_dir,
                            continue_from=continue_from, reuse=reuse)
    mismatch_problems = DEFAULT_MISMATCH_PROBLEMS if mismatch_problems is None else mismatch_problems
    if best is None:
        best = best_alpha(sweep_dir) if sweep_dir is not None else PAPER_BEST_ALPHA
    all_overrides = [*(quick_overrides() if quick else []), *overrides]
    base_seeds = (None,) if base_models is None else tuple(range(first_base_model, first_base_model + base_models))
    runs = plan(compare_specs(recipes, chosen, all_overrides, seeds, best, alphas, base_seeds), out)
    check_equal_updates(runs)
    if base_models is not None and runs[0].config.model.name_or_path != "embedded":
        raise ConfigError("--base-models: only the embedded model has warm-start seeds (model.name_or_path is "
                          f"{runs[0].config.model.name_or_path!r}); leave it out for a real model")
    # Recorded only now that every setting is valid: a refused command leaves nothing that blocks the corrected one.
    guard_settings(out / SETTINGS_FILE, {
        "recipes": str(recipes.resolve()), "methods": list(chosen), "overrides": list(overrides), "seeds": seeds,
        "quick": quick, "best_alpha": best, "sweep": str(sweep_dir.resolve()) if sweep_dir else None,
        "base_models": base_models, "first_base_model": first_base_model, "alphas": list(alphas) or None,
        "mismatch_problems": mismatch_problems},
        introduced={"mismatch_problems": DEFAULT_MISMATCH_PROBLEMS, "first_base_model": 0})
    runs = take_earlier_runs(runs, [*([sweep_dir] if sweep_dir is not None else []), *reuse], continue_from, out)
    finished = run_all(runs, jobs)
    mismatch = base_mismatch([run for run in runs if not run.spec.trains], alphas, mismatch_problems, out, jobs)

    k = runs[0].config.eval.num_samples
    rows = [{"method": row.pop("label"), **row} for row in run_rows(finished, k)]
    columns = [*metric_columns(k), *COMPUTE_COLUMNS]
    summary = aggregate(rows, ["method", "benchmark"], columns)
    scores = pair_scores(rows, f"average@{k}")
    fixed = fixed_exposures({row["method"] for row in rows}, alphas, best)
    first = next(iter(scores.values()))
    best_label = best_fixed(first, fixed)
    references = {"OPSD": "opsd", **({"best fixed α": best_label} if best_label and best_label != "opsd" else {}),
                  **({"random exposure": "random"} if "random" in first else {})}
    paired = paired_rows(scores, references)
    write_csv(rows, out / "results.csv")
    write_csv(summary, out / "summary.csv")
    written = [out / "results.csv", out / "summary.csv", out / "report.md", out / "accuracy.png"]
    if paired:
        write_csv(paired, out / "paired.csv")
        written += [out / "paired.csv", out / "paired_differences.png"]
        plot_paired_differences(paired, out / "paired_differences.png",
                                "paired differences over base models × seeds (green: above 0, red: below 0)")

    runs_count = f"{len(base_seeds)} base model{'s' * (len(base_seeds) > 1)} × {seeds} seed{'s' * (seeds > 1)}"
    # The figures and the diagnosis only report on finished runs: one that cannot be made is a warning, and the
    # report is written without it.
    made("accuracy.png", lambda: plot_method_accuracy(
        rows, f"average@{k}", out / "accuracy.png", f"held-out Average@{k} per method ({runs_count})"))
    curves = training_curves(finished)
    if curves and made("learning_curves.png", lambda: plot_learning_curves(
            curves, out / "learning_curves.png", "learning curves (mean ± std over runs)")):
        written.append(out / "learning_curves.png")
    varying = {label: runs_rows for label, runs_rows in curves.items()
               if len({row.get("alpha") for rows in runs_rows.values() for row in rows} - {None}) > 1}
    if varying and made("alpha_trajectories.png", lambda: plot_alpha_trajectories(
            varying, out / "alpha_trajectories.png", "exposure α used at each step (one line per run)")):
        written.append(out / "alpha_trajectories.png")
    diagnoses = report_or_warn("the diagnosis of the runs whose α varied", lambda: method_diagnoses(
        {label: [run.run.directory for run in finished if run.run.spec.label == label and run.run.spec.trains]
         for label in varying})) or {}
    per_problem = per_problem_decisions(finished)
    if per_problem and made("alpha_by_difficulty.png", lambda: plot_alpha_by_difficulty(
            {method: [row for rows in runs.values() for row in rows] for method, runs in per_problem.items()},
            out / "alpha_by_difficulty.png", "exposure per problem: mean α by difficulty (runs pooled)")):
        written.append(out / "alpha_by_difficulty.png")
    settings = {"recipes": str(recipes), "runs": runs_count, "train.steps": runs[-1].config.train.steps,
                "quick": quick, "best fixed α": f"{fixed[best_label]:g} ({best_label})" if best_label else "none",
                "sweep": str(sweep_dir) if sweep_dir else "none"}
    claims = [*method_claims(first, fixed), *filter(None, [
        bucket_claim(pair_scores_by_bucket(rows, k), fixed), mismatch_claim(mismatch)])]
    sections = [preamble(command, settings), means_section(summary, scores, k), paired_section(paired, references),
                exposure_section(varying), diagnosis_section(diagnoses), difficulty_section(per_problem),
                mismatch_section(mismatch, mismatch_problems), claims_section(claims),
                *(f"![{p.stem}]({p.name})\n" for p in written if p.suffix == ".png")]
    atomic_write_text(out / "report.md", "\n".join(section for section in sections if section))
    return written


def pair_scores(rows: Sequence[dict], metric: str) -> dict[str, dict[str, dict[Pair, float]]]:
    """``{benchmark: {method: {(base model, seed): metric}}}`` of the result rows."""
    scores: dict[str, dict[str, dict[Pair, float]]] = {}
    for row in rows:
        if row.get(metric) is not None:
            scores.setdefault(row["benchmark"], {}).setdefault(row["method"], {})[
                (row["base_model"], row["seed"])] = row[metric]
    return scores


def pair_scores_by_bucket(rows: Sequence[dict], k: int) -> dict[str, dict[str, dict[Pair, float]]]:
    """``{bucket: {method: {pair: Average@k in the bucket}}}`` on the first benchmark."""
    benchmark = rows[0]["benchmark"]
    chosen = [row for row in rows if row["benchmark"] == benchmark]
    return {bucket: pair_scores(chosen, f"average@{k}_{bucket}").get(benchmark, {}) for bucket in BUCKETS}


def base_mismatch(base_runs: Sequence[Run], alphas: Sequence[float], problems: int, out: Path,
                  jobs: int) -> dict[Pair, dict[str, dict[str, float]]]:
    """With `alphas`, the mismatch statistics of each base run's model at every α, each measured once
    (``<out>/mismatch/<run name>.json``): ``{(base model, seed): {str(α): statistics}}``."""
    if len(alphas) < 2:
        return {}
    measured = [(run.config, tuple(sorted({*alphas, 1.0})), problems, run.spec.seed,
                 out / "mismatch" / f"{run.spec.name}.json") for run in base_runs]
    results = list(parallel_map(seed_mismatch, measured, jobs))
    return {run.spec.pair: stats for run, stats in zip(base_runs, results)}


def training_curves(finished: Sequence[FinishedRun]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{method: {run: metrics rows}}`` of the runs that trained; a run is named by its seed, and by its base
    model too when there are several (``w1 seed 2``)."""
    curves: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in finished:
        spec = run.run.spec
        if spec.trains:
            name = f"seed {spec.seed}" if spec.base_seed is None else f"w{spec.base_seed} seed {spec.seed}"
            curves.setdefault(spec.label, {})[name] = read_metrics(run.run.directory / "metrics.jsonl")
    return curves


def per_problem_decisions(finished: Sequence[FinishedRun]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{method: {run name: per-problem decision rows}}`` of the methods with exposure per problem."""
    decisions: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in finished:
        rows = per_problem_rows(read_metrics(run.run.directory / "decisions.jsonl")) if run.run.spec.trains else []
        if rows:
            decisions.setdefault(run.run.spec.label, {})[run.run.spec.name] = rows
    return decisions


def fixed_exposures(methods_run: set[str], alphas: Sequence[float], best: float) -> dict[str, float]:
    """``{label: α}`` of the fixed-exposure runs: those of ``--alphas`` (else ``fixed-best``) and OPSD at α = 1."""
    candidates = {alpha_label(alpha): alpha for alpha in alphas if alpha != 1} if alphas else {"fixed-best": best}
    candidates["opsd"] = 1.0
    return {label: alpha for label, alpha in candidates.items() if label in methods_run}
