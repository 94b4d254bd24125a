"""The embedded testbed's preconditions of the paper's regime, over warm-start seeds x training seeds.

Reads the `atesd compare` folders of one warm-start seed each (made by, for W in 0 1 2:
``atesd compare model.embedded.seed=W --seeds 3 --out runs/pre-wW --methods base sft opsd``) and prints, per method,
held-out Average@4 as mean ± std over every (warm-start seed, training seed), and the paired differences that the
preconditions are about — OPSD − base and OPSD − SFT — with a 95 % t-interval over the pairs and how many pairs
agree. Pairs are (warm-start seed, training seed): the same base model and the same evaluation seed.

    python benchmarks/testbed_preconditions.py runs/pre-w0 runs/pre-w1 runs/pre-w2

Not a test: nothing is asserted.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

# Two-sided 95 % Student t quantiles by degrees of freedom (the pairs are few).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 20: 2.086, 30: 2.042}


def accuracies(folders: list[Path]) -> dict[str, dict[tuple[int, int], float]]:
    """{method: {(warm-start seed index, training seed): Average@k}} from every run's result.json."""
    found: dict[str, dict[tuple[int, int], float]] = {}
    for warm, folder in enumerate(folders):
        for result_file in sorted((folder / "runs").glob("*/result.json")):
            result = json.loads(result_file.read_text())
            summary = result["benchmarks"]["embedded"]["summary"]["all"]
            average = next(value for key, value in summary.items() if key.startswith("average@"))
            found.setdefault(result["label"], {})[(warm, result["seed"])] = average
    return found


def interval(values: list[float]) -> str:
    mean = statistics.mean(values)
    if len(values) < 2:
        return f"{100 * mean:+.1f}"
    half = T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{100 * mean:+.1f} [{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}]"


def main(folders: list[Path]) -> None:
    found = accuracies(folders)
    print("| method | Average@4, mean ± std | runs |\n|---|---|---|")
    for method, values in found.items():
        numbers = list(values.values())
        spread = statistics.stdev(numbers) if len(numbers) > 1 else 0.0
        print(f"| {method} | {100 * statistics.mean(numbers):.1f} ± {100 * spread:.1f} | {len(numbers)} |")
    print("\n| paired difference | mean [95 % CI] | pairs that agree |\n|---|---|---|")
    for better, worse in (("opsd", "base"), ("opsd", "sft"), ("atesd", "base"), ("atesd", "opsd")):
        if better not in found or worse not in found:
            continue
        pairs = sorted(found[better].keys() & found[worse].keys())
        differences = [found[better][p] - found[worse][p] for p in pairs]
        agree = sum(d > 0 for d in differences)
        print(f"| {better} − {worse} | {interval(differences)} | {agree} of {len(pairs)} |")


if __name__ == "__main__":
    main([Path(arg) for arg in sys.argv[1:]])
