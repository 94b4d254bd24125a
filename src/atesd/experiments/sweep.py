"""`atesd sweep`: training at each fixed exposure α over several seeds, and the mismatch each α makes.

For every seed: the base model is evaluated (its per-problem accuracy makes the difficulty buckets), the
mismatch statistics of the starting model are measured at every α on one fixed set of its rollouts, and one
run per α trains with ``exposure.policy=fixed exposure.alpha=α``. Outputs in the out folder: ``sweep.csv``
(one row per α × seed × benchmark), ``sweep.md`` (mean ± std over seeds per α, with the base row) and the
plots ``accuracy_vs_alpha.png``, ``mismatch_vs_alpha.png`` and ``bucket_accuracy_vs_alpha.png``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from atesd.config import Config, ConfigError
from atesd.experiments.buckets import BUCKETS, EASY_FROM, HARD_BELOW
from atesd.experiments.experiment_plots import (
    plot_accuracy_vs_alpha,
    plot_bucket_accuracy_vs_alpha,
    plot_mismatch_vs_alpha,
)
from atesd.experiments.guards import check_counts, distinct, guard_settings
from atesd.experiments.mismatch import STATISTICS, mismatch_by_alpha
from atesd.experiments.presets import BASE_LABEL, alpha_label
from atesd.experiments.runs import RunSpec, overrides_for_methods, plan, run_all
from atesd.experiments.tables import (
    aggregate,
    markdown,
    mean_std_cell,
    metric_columns,
    percent,
    read_csv,
    run_rows,
    write_csv,
)
from atesd.files import atomic_write_text

SETTINGS_FILE = "sweep.json"
CSV_FILE = "sweep.csv"
PLOTS = ("accuracy_vs_alpha.png", "mismatch_vs_alpha.png", "bucket_accuracy_vs_alpha.png")


def sweep_specs(config_path: Path, overrides: Sequence[str], alphas: Sequence[float], seeds: int) -> list[RunSpec]:
    """Base evaluations first (cheap, and they make the buckets), then each seed's α runs."""
    # The sweep's own overrides come last, so that an extra override cannot undo the α being swept.
    taken = overrides_for_methods({BASE_LABEL: (config_path, ()), **{
        alpha_label(alpha): (config_path, ("exposure.policy=fixed", f"exposure.alpha={alpha:g}")) for alpha in alphas}},
        overrides, command="the sweep")
    base = [RunSpec(BASE_LABEL, config_path, taken[BASE_LABEL], seed, trains=False) for seed in range(seeds)]
    trained = [RunSpec(alpha_label(alpha), config_path, taken[alpha_label(alpha)], seed)
               for seed in range(seeds) for alpha in alphas]
    return base + trained


def run_sweep(config_path: Path, overrides: Sequence[str], alphas: Sequence[float], seeds: int, out: Path,
              mismatch_problems: int, command: str) -> list[Path]:
    """Run (or continue) the sweep in `out` and write its table, CSV and plots; returns the files written."""
    if not alphas:
        raise ConfigError("atesd sweep needs at least one α")
    check_counts(seeds=seeds, mismatch_problems=mismatch_problems)
    distinct(alphas, "--alphas")
    runs = plan(sweep_specs(config_path, overrides, alphas, seeds), out)
    # Recorded only now that every setting is valid: a refused command leaves nothing that blocks the corrected one.
    guard_settings(out / SETTINGS_FILE, {"config": str(config_path.resolve()), "overrides": list(overrides),
                                         "alphas": list(alphas), "seeds": seeds,
                                         "mismatch_problems": mismatch_problems})
    base_runs = [run for run in runs if not run.spec.trains]
    mismatch = {run.spec.seed: seed_mismatch((run.config, alphas, mismatch_problems, run.spec.seed,
                                              out / "mismatch" / f"seed{run.spec.seed}.json"))
                for run in base_runs}
    finished = run_all(runs)

    k = runs[0].config.eval.num_samples
    rows = run_rows(finished, k)
    columns = metric_columns(k)
    base_rows = [row for row in rows if row["label"] == BASE_LABEL]
    alpha_rows = []
    for row in rows:
        if row["label"] == BASE_LABEL:
            continue
        alpha = float(row["label"].removeprefix("alpha-"))
        alpha_rows.append({"alpha": alpha, "seed": row["seed"], "benchmark": row["benchmark"],
                           **{c: row[c] for c in columns}, **mismatch[row["seed"]][f"{alpha:g}"]})
    write_csv([{key: value for key, value in row.items() if key != "tokens"} for row in alpha_rows], out / CSV_FILE)

    title = f"fixed-α sweep ({config_path.name}, {seeds} seed{'s' * (seeds > 1)})"
    plot_accuracy_vs_alpha(alpha_rows, base_rows, f"average@{k}", out / PLOTS[0], f"{title}: held-out Average@{k}")
    mismatch_rows = [{"alpha": float(alpha), **stats} for seed_stats in mismatch.values()
                     for alpha, stats in seed_stats.items()]
    plot_mismatch_vs_alpha(mismatch_rows, out / PLOTS[1],
                           f"{title}: starting model's teacher–student mismatch ({mismatch_problems} problems/seed)")
    plot_bucket_accuracy_vs_alpha(alpha_rows, k, out / PLOTS[2], f"{title}: Average@{k} per difficulty bucket")
    atomic_write_text(out / "sweep.md", sweep_report(alpha_rows, base_rows, k, command))
    return [out / CSV_FILE, out / "sweep.md", *(out / name for name in PLOTS)]


def seed_mismatch(task: tuple[Config, Sequence[float], int, int, Path]) -> dict[str, dict[str, float]]:
    """The mismatch statistics of one seed's starting model (`task`: config, alphas, problems, seed, path),
    measured once and kept in the JSON file at path."""
    config, alphas, num_problems, seed, path = task
    if path.is_file():
        return json.loads(path.read_text())
    print(f"[mismatch] seed {seed}: {len(alphas)} α on {num_problems} problems ...", flush=True)
    started = time.perf_counter()
    stats = mismatch_by_alpha(config, alphas, num_problems, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(stats, indent=1))
    print(f"[mismatch] seed {seed} done in {time.perf_counter() - started:.0f}s", flush=True)
    return stats


def sweep_report(alpha_rows: list[dict], base_rows: list[dict], k: int, command: str) -> str:
    """Per benchmark, a table of mean ± std over seeds per α (and the base model), with the plots."""
    columns = metric_columns(k)
    header = ["α", "seeds", f"Average@{k}", *BUCKETS, f"Pass@{k}", f"Maj@{k}", *STATISTICS]
    shown = [c for c in columns if c != "boxed_rate"]
    lines = ["# Fixed-exposure sweep\n", f"Command: `{command}`\n",
             (f"Mean ± sample std over seeds. Accuracies in %. Difficulty buckets from the base model's per-problem "
             f"Average pooled over its seeds: hard < {HARD_BELOW:.3g} ≤ medium < {EASY_FROM:.3g} ≤ easy. "
             "Mismatch: the starting model as teacher at α vs as student, on one fixed set of its own rollouts "
             "per seed (per-token forward KL; top-1 disagreement).\n")]
    for benchmark in dict.fromkeys(row["benchmark"] for row in alpha_rows):
        body = []
        for entry in aggregate([r for r in base_rows if r["benchmark"] == benchmark], ["benchmark"], shown):
            body.append(["base", str(entry["seeds"]), *(mean_std_cell(entry, c, percent) for c in shown),
                         *("–" for _ in STATISTICS)])
        by_alpha = sorted(aggregate([r for r in alpha_rows if r["benchmark"] == benchmark], ["alpha"],
                                    [*shown, *STATISTICS]), key=lambda entry: entry["alpha"])
        for entry in by_alpha:
            body.append([f"{entry['alpha']:g}", str(entry["seeds"]), *(mean_std_cell(entry, c, percent) for c in shown),
                         *(mean_std_cell(entry, s, lambda v: "–" if v is None else f"{v:.4f}") for s in STATISTICS)])
        lines.append(f"## {benchmark}\n\n{markdown(header, body)}\n")
    lines += [f"![{name.removesuffix('.png')}]({name})\n" for name in PLOTS]
    return "\n".join(lines)


def best_alpha(sweep_dir: Path) -> float:
    """The α with the best mean overall Average@k in a sweep's ``sweep.csv`` (over seeds and benchmarks); ties
    go to the smaller α."""
    path = sweep_dir / CSV_FILE
    if not path.is_file():
        raise ConfigError(f"--sweep: {path} does not exist (run `atesd sweep --out {sweep_dir}` first)")
    rows = read_csv(path)
    metric = next((c for c in (rows[0] if rows else {}) if c.startswith("average@") and "_" not in c), None)
    if metric is None or "alpha" not in rows[0]:
        raise ConfigError(f"--sweep: {path} has no rows with the columns 'alpha' and 'average@k'")
    by_alpha: dict[float, list[float]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            by_alpha.setdefault(float(row["alpha"]), []).append(float(row[metric]))
        except ValueError:
            raise ConfigError(f"--sweep: {path} line {line}: 'alpha' and '{metric}' must be numbers, got "
                              f"{row['alpha']!r} and {row[metric]!r}") from None
    means = {alpha: sum(values) / len(values) for alpha, values in by_alpha.items()}
    return max(sorted(means), key=means.__getitem__)
