"""The mismatch ladder's accuracy guard replayed on unguarded ladder runs: where it would first step down.

A guarded ladder trains exactly as the unguarded one until its guard first steps down, so feeding an unguarded
run's logged `kl_mean` and `rollout_accuracy` (metrics.jsonl) through `MismatchLadder` with the guard on gives the
step and the rung of that first step down, and nothing after it. This is how `accuracy_drop` was set (on the
strong-teacher runs) and checked (on the default regime's, which did not exist yet).

    python results/three-regimes/replay_guard.py 0.06 runs/cmp3-strong runs/cmp3-default

Each folder is an `atesd compare` out folder with mismatch-ladder runs (hold 4, rungs 0-1 by 0.25, cap 3).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from atesd.exposure.mismatch_ladder import MismatchLadderSettings
from atesd.train.metrics import read_metrics

LABEL = "mismatch-ladder"


def first_step_down(metrics: list[dict], drop: float) -> tuple[int, float, float] | None:
    """(the update after which the guard steps down, the rung it leaves, the rung it goes to), or None."""
    ladder = MismatchLadderSettings(accuracy_drop=drop).build(len(metrics), 0)
    for step, row in enumerate(metrics):
        if ladder.alpha(step) != row["alpha"]:
            raise ValueError(f"the replay leaves the run at update {step + 1}: not an unguarded default ladder")
        ladder.observe(step, row)
        guard_rows = [decision for decision in ladder.drain_decisions() if "reference_accuracy" in decision]
        if guard_rows:
            return step + 1, guard_rows[0]["tried_alpha"], guard_rows[0]["alpha"]
    return None


def main(drop: float, folders: list[Path]) -> None:
    print("| run | settled α (unguarded) | guard steps down | final Average@4 (unguarded) |")
    print("|---|---|---|---|")
    for folder in folders:
        stepped = runs = 0
        for run in sorted((folder / "runs").glob(f"{LABEL}-w*-seed*")):
            if not (run / "result.json").exists():
                continue
            metrics = read_metrics(run / "metrics.jsonl")
            down = first_step_down(metrics, drop)
            accuracy = json.loads((run / "result.json").read_text())["benchmarks"]["embedded"]["summary"]["all"]
            runs, stepped = runs + 1, stepped + (down is not None)
            where = f"after update {down[0]}: {down[1]:g} → {down[2]:g}" if down else "never"
            print(f"| {folder.name}/{run.name} | {metrics[-1]['alpha']:g} | {where} | "
                  f"{100 * accuracy['average@4']:.1f} |")
        print(f"| {folder.name}: steps down on {stepped} of {runs} | | | |")


if __name__ == "__main__":
    main(float(sys.argv[1]), [Path(folder) for folder in sys.argv[2:]])
