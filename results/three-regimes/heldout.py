"""The recommendation's goal checked on base models the three-regime comparison did not use.

The comparison that chose the guarded ladder used warm-start seeds 0–4 on every regime (its guard's drop was set
on the strong-teacher regime's seeds 0–4). Each folder given here is one `atesd compare` run on other base models
(``--first-base-model 5``), named after its regime; beside it, the comparison of that regime (a folder of the same
name under ``--comparisons``) is read too. Per regime, the table gives the guarded ladder's paired difference to the
best of OPSD, fixed α = 0.25 and fixed α = 0.5 (the reference chosen on the base models of the row, as decide.py
chooses it), per base model and over them: first on the held-out base models alone, then on them and the
comparison's together.

    python results/three-regimes/heldout.py results/three-regimes/heldout/{default,strong-teacher,low-exposure}

The table goes to standard output as Markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from decide import GOAL_POINTS, REFERENCES, best_reference, overall, read

from atesd.experiments.paired import base_model_differences, over_base_models

POLICY = "guarded-ladder"
Scores = dict[str, dict[tuple[int, int], float]]


def row(regime: str, label: str, scores: Scores) -> str:
    """One Markdown row: the best reference, the policy's mean, its difference to the reference per base model and
    over them (t-interval), and whether the mean difference is within the goal."""
    best = best_reference(scores)
    by_base_model = base_model_differences(scores[POLICY], scores[best])
    interval = over_base_models(by_base_model)
    each = " / ".join(f"{100 * by_base_model[base]:+.1f}" for base in sorted(by_base_model))
    within = "yes" if interval.mean >= -GOAL_POINTS / 100 else "no"
    return (f"| {regime} | {label} | {best}, {100 * overall(scores[best]):.1f} | {100 * overall(scores[POLICY]):.1f} "
            f"| {each} | {interval.cell()} | {within} |")


def together(first: Scores, second: Scores) -> Scores:
    """The methods both comparisons ran, with the pairs of both (their base models differ)."""
    return {method: {**first[method], **second[method]} for method in first.keys() & second.keys()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", help="one `atesd compare` out folder per regime, named "
                        "after it (default, strong-teacher, low-exposure)")
    parser.add_argument("--comparisons", type=Path, default=Path(__file__).parent,
                        help="the folder holding the comparison of each regime (default: this script's)")
    args = parser.parse_args()
    print(f"| regime | base models | best of {', '.join(REFERENCES)} | {POLICY} | difference per base model | "
          f"over base models | within {GOAL_POINTS:.0f} points |")
    print("|---|---|---|---|---|---|---|")
    for folder in args.folders:
        held_out, _ = read(folder)
        compared, _ = read(args.comparisons / folder.name)
        held_bases, compared_bases = ({base for base, _ in scores[POLICY]} for scores in (held_out, compared))
        if held_bases & compared_bases:
            parser.error(f"{folder} shares base models with {args.comparisons / folder.name}: not held out")
        print(row(folder.name, "held out: " + ", ".join(map(str, sorted(held_bases))), held_out))
        print(row(folder.name, f"all {len(held_bases | compared_bases)}", together(held_out, compared)))


if __name__ == "__main__":
    main()
