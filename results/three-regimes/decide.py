"""The rule that chooses the recommended adaptive exposure on three regimes, applied to the comparisons' results.

The rule was set before the comparison ran (LAB.md, "The rule that will choose the recommendation on three
regimes"): on each regime, every policy's paired difference to the best of OPSD, fixed α = 0.25 and fixed
α = 0.5, over the base models' means; the recommendation is the policy whose worst regime's difference is
highest, provided its mean is above random exposure's on every regime; of two within 0.5 points, the one with
fewer forward tokens. The goal it is held to: within 2 points of that best on every regime.

    python results/three-regimes/decide.py results/three-regimes/{default,strong-teacher,low-exposure}

Each folder holds one `atesd compare` run's results.csv; the table goes to standard output as Markdown.
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

from atesd.experiments.paired import Interval, base_model_differences, base_model_means, over_base_models

REFERENCES = ("opsd", "alpha-0.25", "alpha-0.5")
FIXED = ("alpha-0", "alpha-0.25", "alpha-0.5", "opsd")  # not adaptive: shown, never recommended
METRIC = "average@4"
TIE_POINTS = 0.5
GOAL_POINTS = 2.0


def read(folder: Path) -> tuple[dict[str, dict[tuple[int, int], float]], dict[str, float]]:
    """{method: {(base model, seed): accuracy}} and {method: mean forward tokens} of one comparison."""
    scores: dict[str, dict[tuple[int, int], float]] = {}
    tokens: dict[str, list[float]] = {}
    with (folder / "results.csv").open() as handle:
        for row in csv.DictReader(handle):
            pair = (int(row["base_model"]), int(row["seed"]))
            scores.setdefault(row["method"], {})[pair] = float(row[METRIC])
            tokens.setdefault(row["method"], []).append(float(row["forward_tokens"]))
    return scores, {method: statistics.fmean(values) for method, values in tokens.items()}


def overall(values: dict[tuple[int, int], float]) -> float:
    """The mean over base models of each base model's mean over seeds."""
    return statistics.fmean(base_model_means(values).values())


def best_reference(scores: dict[str, dict[tuple[int, int], float]]) -> str:
    """The rule's reference on one regime: the best of `REFERENCES` over the base models' means."""
    return max((method for method in REFERENCES if method in scores), key=lambda method: overall(scores[method]))


def main(folders: list[Path]) -> None:
    regimes = {folder.name: read(folder) for folder in folders}
    differences: dict[str, dict[str, Interval]] = {}
    above_random: dict[str, list[bool]] = {}
    cost: dict[str, float] = {}
    header = ["policy"]
    for regime, (scores, tokens) in regimes.items():
        best = best_reference(scores)
        header.append(f"{regime} (best: {best}, {100 * overall(scores[best]):.1f})")
        for method, values in scores.items():
            if method == "base":
                continue
            differences.setdefault(method, {})[regime] = over_base_models(base_model_differences(values,
                                                                                                scores[best]))
            above_random.setdefault(method, []).append(
                "random" in scores and overall(values) > overall(scores["random"]))
            cost[method] = cost.get(method, 0.0) + tokens[method]
    complete = {method: by_regime for method, by_regime in differences.items() if len(by_regime) == len(regimes)}
    worst = {method: min(interval.mean for interval in by_regime.values()) for method, by_regime in complete.items()}
    print("| " + " | ".join([*header, "worst regime", "above random everywhere", "forward tokens (sum)"]) + " |")
    print("|" + "---|" * (len(header) + 3))
    for method in sorted(complete, key=lambda method: -worst[method]):
        cells = [complete[method][regime].cell() for regime in regimes]
        print(f"| {method} | " + " | ".join(cells) + f" | {100 * worst[method]:+.1f} | "
              f"{'yes' if all(above_random[method]) else 'no'} | {cost[method]:,.0f} |")
    eligible = [method for method in complete
                if method not in FIXED and method != "random" and all(above_random[method])]
    if not eligible:
        print("\nNo adaptive policy is above random exposure on every regime: the rule recommends none.")
        return
    top = max(worst[method] for method in eligible)
    tied = [method for method in eligible if worst[method] >= top - TIE_POINTS / 100]
    chosen = min(tied, key=lambda method: cost[method])
    met = worst[chosen] >= -GOAL_POINTS / 100
    print(f"\nRecommended by the rule: {chosen} (worst regime {100 * worst[chosen]:+.1f} points; tied within "
          f"{TIE_POINTS} points: {', '.join(sorted(tied))}). The goal (within {GOAL_POINTS:.0f} points on every "
          f"regime): {'met' if met else 'not met'}.")


if __name__ == "__main__":
    main([Path(argument) for argument in sys.argv[1:]])
