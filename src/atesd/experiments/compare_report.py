"""The sections of `atesd compare`'s report.md and its paired.csv: the table of means with 95 % intervals, the
paired differences against OPSD and the best fixed α, the mismatch per α, the exposure each method used, what
each reward term says about α where it varied, and the paper's claims with their verdicts
(docs/method.md#paper-recipes)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from atesd.experiments.buckets import BUCKETS, EASY_FROM, HARD_BELOW
from atesd.experiments.claims import Claim
from atesd.experiments.diagnose import CREDIT_SIGNALS, SIGNALS, Diagnosis
from atesd.experiments.diagnose_report import MECHANICAL, READING, fits_table
from atesd.experiments.diagnose_signals import ALIGNMENT_SIGNALS, EXTRA_SIGNALS
from atesd.experiments.mismatch import STATISTICS
from atesd.experiments.paired import (
    CONFIDENCE,
    Interval,
    Pair,
    agreement_note,
    mean_interval,
    paired_comparison,
)
from atesd.experiments.plots import difficulty_groups
from atesd.experiments.tables import (
    count,
    markdown,
    mean_std,
    mean_std_cell,
    metric_columns,
    percent,
    seconds,
)

Scores = Mapping[str, Mapping[Pair, float]]  # {method: {(base model, seed): value}}


def means_section(summary: Sequence[dict[str, Any]], scores: Mapping[str, Scores], k: int) -> str:
    """Per benchmark: mean ± std per method, its 95 % interval, the buckets, Pass, Maj and compute."""
    header = ["method", "runs", f"Average@{k}", f"{CONFIDENCE:.0%} CI", *BUCKETS, f"Pass@{k}", f"Maj@{k}",
              "generated tokens", "forward tokens", "train s"]
    metrics = [c for c in metric_columns(k) if c != "boxed_rate"]
    lines = []
    for benchmark in dict.fromkeys(entry["benchmark"] for entry in summary):
        body = []
        for entry in summary:
            if entry["benchmark"] != benchmark:
                continue
            interval = mean_interval(list(scores[benchmark][entry["method"]].values()))
            ci = "–" if interval.n < 2 else f"[{percent(interval.low)}, {percent(interval.high)}]"
            cells = [mean_std_cell(entry, c, percent) for c in metrics]
            body.append([entry["method"], str(entry["seeds"]), cells[0], ci, *cells[1:],
                         mean_std_cell(entry, "generated_tokens", count),
                         mean_std_cell(entry, "forward_tokens", count),
                         mean_std_cell(entry, "train_seconds", seconds)])
        lines.append(f"## {benchmark}\n\n{markdown(header, body)}\n")
    return "\n".join(lines)


def paired_rows(scores: Mapping[str, Scores], references: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per benchmark × method × reference (``{name: method label}``): the paired difference and its
    interval over the pairs both ran, the mean difference on each base model with how many of them agree in
    sign with the overall mean, and the interval over those base models' means (paired.csv)."""
    rows = []
    for benchmark, by_method in scores.items():
        for method, values in by_method.items():
            for name, reference in references.items():
                if reference not in by_method or reference == method:
                    continue
                comparison = paired_comparison(values, by_method[reference])
                if comparison is not None:
                    pairs, bases = comparison.pairs, comparison.base_models
                    rows.append({"benchmark": benchmark, "method": method, "reference": name,
                                 "reference_method": reference, "pairs": pairs.n, "mean": pairs.mean,
                                 "low": pairs.low, "high": pairs.high, "wins": pairs.wins,
                                 "verdict": pairs.verdict, "base_models": len(comparison.by_base_model),
                                 "base_models_agreeing": comparison.agreeing,
                                 "by_base_model": " / ".join(f"{100 * d:+.1f}"
                                                             for d in comparison.by_base_model.values()),
                                 "base_model_low": bases.low, "base_model_high": bases.high,
                                 "base_model_verdict": bases.verdict})
    return rows


def paired_section(rows: Sequence[dict[str, Any]], references: Mapping[str, str]) -> str:
    """The paired differences as a table per benchmark: one column per reference."""
    if not rows:
        return ""
    names = list(references)
    lines = [(f"Paired differences (percentage points): each method minus the reference on the same base model "
              f"and training seed, mean [{CONFIDENCE:.0%} t-interval over the pairs], the pairs it wins and, with "
              "several base models, how many base models' mean differences share the sign of the overall mean and "
              "the t-interval over the base models' means, the one the claims below read (paired.csv lists each "
              "base model's difference). Read above 0: held; below 0: did not hold; containing 0: inconclusive at "
              "this power.\n")]
    for benchmark in dict.fromkeys(row["benchmark"] for row in rows):
        cells: dict[str, dict[str, str]] = {}
        for row in rows:
            if row["benchmark"] == benchmark:
                interval = Interval(row["mean"], row["low"], row["high"], row["pairs"], row["wins"])
                bases = agreement_note(row["base_models_agreeing"], row["base_models"])
                second = (f"; base models [{100 * row['base_model_low']:+.1f}, {100 * row['base_model_high']:+.1f}]"
                          if row["base_models"] > 1 else "")
                cells.setdefault(row["method"], {})[row["reference"]] = (
                    f"{interval.cell()} ({row['wins']}/{row['pairs']}{bases}{second})")
        header = ["method", *(f"− {name} ({references[name]})" for name in names)]
        body = [[method, *(by_reference.get(name, "–") for name in names)] for method, by_reference in cells.items()]
        lines.append(f"### {benchmark}\n\n{markdown(header, body)}\n")
    return "## Paired differences\n\n" + "\n".join(lines)


def mismatch_section(mismatch: Mapping[Pair, Mapping[str, Mapping[str, float]]], problems: int) -> str:
    """Mean ± std over the pairs of each mismatch statistic per α (the base model as teacher at α)."""
    if not mismatch:
        return ""
    alphas = sorted({alpha for by_alpha in mismatch.values() for alpha in by_alpha}, key=float)
    body = []
    for alpha in alphas:
        cells = []
        for statistic in STATISTICS:
            mean, std = mean_std([by_alpha[alpha][statistic] for by_alpha in mismatch.values() if alpha in by_alpha])
            cells.append(f"{mean:.4f} ± {std:.4f}")
        body.append([alpha, str(len(mismatch)), *cells])
    return ("## Mismatch per α\n\nThe base model as teacher at α against itself as student, on one fixed set of "
            f"its rollouts of {problems} training problems per base model and seed (per-token forward KL; top-1 "
            f"disagreement), mean ± std over those.\n\n{markdown(['α', 'pairs', *STATISTICS], body)}\n")


def exposure_section(curves: Mapping[str, Mapping[str, list[dict[str, Any]]]]) -> str:
    """The α each method of `curves` (those whose α varied) used: mean over all steps and over the last
    quarter, mean ± std over its runs."""
    body = []
    for method, runs in curves.items():
        overall, late = [], []
        for rows in runs.values():
            alphas = [row["alpha"] for row in rows if row.get("alpha") is not None]
            if alphas:
                overall.append(statistics.fmean(alphas))
                late.append(statistics.fmean(alphas[len(alphas) * 3 // 4:]))
        if overall:
            body.append([method, str(len(overall)), _mean_std(overall), _mean_std(late)])
    if not body:
        return ""
    return ("## Exposure used\n\nThe batch's α at each step (for exposure per problem, the mean over the batch's "
            "problems), mean ± std over runs.\n\n"
            f"{markdown(['method', 'runs', 'mean α', 'mean α, last quarter'], body)}\n")


def difficulty_section(per_problem: Mapping[str, Mapping[str, Sequence[dict[str, Any]]]]) -> str:
    """Exposure per problem by difficulty (``{method: {run: per-problem decision rows}}``): the mean α that each
    difficulty's problems got in the last quarter of each run's training, mean ± std over runs, and the hardest
    difficulty's α minus the easiest's with its t-interval over runs (difficulties in `plots.difficulty_groups`'
    order, the easiest — fewest operations or segments — first; below 0: harder problems see less of the
    reference)."""
    body: list[list[str]] = []
    order: list[str] = []
    for method, runs in per_problem.items():
        pooled = [(name, row) for name, rows in runs.items() for row in rows]
        groups, method_order = difficulty_groups([row for _, row in pooled])
        order = order or method_order
        last = {name: max(row["step"] for row in rows) for name, rows in runs.items() if rows}
        alphas: dict[str, dict[str, list[float]]] = {}
        for (name, row), row_groups in zip(pooled, groups):
            if row["step"] > last[name] * 3 // 4:
                for alpha, group in zip(row["alpha"], row_groups):
                    alphas.setdefault(name, {}).setdefault(group, []).append(alpha)
        per_run = [{group: statistics.fmean(values) for group, values in by_group.items()}
                   for by_group in alphas.values()]
        cells = []
        for group in order:
            values = [means[group] for means in per_run if group in means]
            cells.append(_mean_std(values) if values else "–")
        spread = [means[order[-1]] - means[order[0]] for means in per_run if order[-1] in means and order[0] in means]
        cells.append(mean_interval(spread).cell(scale=1, digits=2) if spread else "–")
        body.append([method, str(len(per_run)), *cells])
    if not body:
        return ""
    header = ["method", "runs", *order, f"{order[-1]} − {order[0]}"]
    return ("## Exposure per problem by difficulty\n\nThe mean α each difficulty's problems got in the last quarter "
            f"of training, mean ± std over runs; the last column is the hardest minus the easiest, mean "
            f"[{CONFIDENCE:.0%} t-interval over runs].\n\n{markdown(header, body)}\n")


def diagnosis_section(diagnoses: Mapping[str, Diagnosis]) -> str:
    """`atesd compare`'s section: per method whose α varied, the windows' table pooled over its runs (and under
    exposure per problem the credit's, with one intercept per step)."""
    if not diagnoses:
        return ""
    parts = ["## What the reward says about α\n",
             "For each method whose α varied, over its runs pooled: each decision's window (its first update and the "
             "L after it, the run's own L, γ, λ_gt and H). " + READING,
             fits_table({method: d.windows for method, d in diagnoses.items()}, {**SIGNALS, **EXTRA_SIGNALS},
                        "windows") + "\n",
             MECHANICAL + "\n"]
    credit = {method: d.credit_within_step for method, d in diagnoses.items() if d.credit_within_step}
    if credit:
        parts += [("Exposure per problem, each credited problem's logged credit on its own α, one intercept per "
                  "step (n counts credited problems):\n"), fits_table(credit, CREDIT_SIGNALS, "problems") + "\n"]
    aligned = {method: d.alignment_within_step for method, d in diagnoses.items() if d.alignment_within_step}
    if aligned:
        parts += [("Each problem's alignment credit on its own α (docs/controller.md#signals-with-power), one "
                   "intercept per step (n counts problems):\n"),
                  fits_table(aligned, ALIGNMENT_SIGNALS, "problems") + "\n"]
    runs = [run for d in diagnoses.values() for run in d.runs]
    warnings = [f"{run['run']}: {'; '.join(run['warnings'])}" for run in runs if run["warnings"]]
    notes = [note for d in diagnoses.values() for note in d.notes]
    parts.append(f"Checks: {len(runs) - len(warnings)} of {len(runs)} runs without a warning (α held over each "
                 "window, decisions.jsonl agrees with the rebuild, g logged at every step)"
                 + "".join(f" · {line}" for line in warnings + notes) + "\n")
    return "\n".join(parts)


def claims_section(claims: Sequence[Claim]) -> str:
    if not claims:
        return ""
    header = ["claim", "comparisons (pp, wins/pairs)", "verdict"]
    body = [[claim.statement, claim.evidence, f"**{claim.verdict}**"] for claim in claims]
    intro = ("Each claim from the paired intervals above: held when each of its comparisons lies above 0, did not "
             "hold when one lies below 0, inconclusive otherwise. The best fixed α is chosen on the same runs it is "
             "compared on, which favours it.")
    if any(claim.base_model_verdict for claim in claims):
        header += ["over base models (pp)", "verdict for new base models"]
        for row, claim in zip(body, claims):
            row += [claim.base_model_evidence or "–", f"**{claim.base_model_verdict or '–'}**"]
        intro += (" The last two columns read the same comparisons from the t-interval over the base models' mean "
                  "differences (base models − 1 degrees of freedom): whether the claim would be expected to "
                  "hold on a new draw of base models, not only on these with new training seeds.")
    return f"## The paper's claims\n\n{intro}\n\n{markdown(header, body)}\n"


def preamble(command: str, settings: Mapping[str, object]) -> str:
    return "\n".join([
        "# Method comparison\n", f"Command: `{command}`\n",
        "Settings: " + ", ".join(f"{key} = {value}" for key, value in settings.items()) + "\n",
        (f"Mean ± sample std over runs (base models × seeds); accuracies in %; the {CONFIDENCE:.0%} CI is the "
         "t-interval of the mean over runs. Difficulty buckets from each base model's per-problem Average pooled "
         f"over its seeds: hard < {HARD_BELOW:.3g} ≤ medium < {EASY_FROM:.3g} ≤ easy. Compute columns are "
         "training totals per run: tokens sampled in rollouts, tokens through every scoring forward, and the summed "
         "step times (– where the trainer did not log them).\n")])


def _mean_std(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"
