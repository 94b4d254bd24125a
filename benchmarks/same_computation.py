"""Whether two source trees compute the same: the demo and three short runs, each from an empty cache, compared bit
for bit (a refactor's check, e.g. issue 33's "nothing changes in what is computed").

``run`` trains, with the source tree given (its ``src/`` first on the path, its ``configs/``), into an out folder:
the demo (warm start, base and teacher evaluation, ATESD for 100 updates, evaluation), then 30 updates each of OPSD
at fixed α = 0.5, AR-OPD (``opsd.yaml`` with ``teacher.anchored_residual={}``) and ATESD with exposure per problem.
``compare`` says, for two such folders, whether the demo's table, every run's metrics.jsonl and decisions.jsonl (all
but the ``*_time`` columns), the evaluation files and the final weights are identical. Both runs must use the same
machine kind and the same ``--threads``: CPU kernels sum in another order on another CPU or thread count.

    python benchmarks/same_computation.py run  --source /path/to/old/checkout --out runs/same/before
    python benchmarks/same_computation.py run  --source . --out runs/same/after
    python benchmarks/same_computation.py compare runs/same/before runs/same/after

``run --quick`` (a smoke run) trains the same commands on the tiny embedded model (harness.quick_overrides) for
3 updates each, evaluations included; `make bench-smoke` runs it twice on this tree and compares the two, which
also checks that a run is repeatable.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from harness import quick_overrides

RUNS = {
    "fixed": ["train", "configs/embedded/opsd.yaml", "exposure.alpha=0.5", "train.steps=30"],
    "aropd": ["train", "configs/embedded/opsd.yaml", "teacher.anchored_residual={}", "train.steps=30"],
    "pp": ["train", "configs/embedded/atesd.yaml", "train.steps=30", "exposure.per_problem=true"],
}
TIMING = re.compile(r"_time$")
QUICK_STEPS = 3


def run(source: Path, out: Path, threads: int, quick: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ATESD_CACHE": str((out / "cache").resolve()), "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": str((source / "src").resolve())}
    commands = {"demo": ["demo"], **RUNS}
    quick_settings = [*quick_overrides(quick), f"train.steps={QUICK_STEPS}"] if quick else []
    for name, arguments in commands.items():
        with open(out / f"{name}.log", "w") as log:
            subprocess.run([sys.executable, "-m", "atesd.cli", *arguments, *quick_settings,
                            f"run.output_dir={(out / name).resolve()}"], cwd=source, env=env, stdout=log,
                           stderr=subprocess.STDOUT, check=True)


def rows(path: Path) -> list[dict]:
    return [{key: value for key, value in json.loads(line).items() if not TIMING.search(key)}
            for line in path.read_text().splitlines()]


def demo_table(log: Path) -> str:
    text = log.read_text(errors="replace")
    return "\n".join(text[text.index("| model | Average@4"):].splitlines()[:5])


def compare(before: Path, after: Path) -> bool:
    same = demo_table(before / "demo.log") == demo_table(after / "demo.log")
    print(f"demo table identical: {same}\n{demo_table(after / 'demo.log')}")
    for name in ["demo", *RUNS]:
        for pattern in ["*/metrics.jsonl", "*/decisions.jsonl"]:
            pair = [sorted((folder / name).glob(pattern)) for folder in (before, after)]
            if pair[0] or pair[1]:
                equal = len(pair[0]) == len(pair[1]) == 1 and rows(pair[0][0]) == rows(pair[1][0])
                print(f"{name}/{pattern[2:]}: identical but the timings: {equal}")
                same &= equal
        for pattern in ["*/eval/*.json*", "*/final_model/*.safetensors"]:
            pair = [sorted((folder / name).glob(pattern)) for folder in (before, after)]
            equal = len(pair[0]) == len(pair[1]) and all(x.read_bytes() == y.read_bytes() for x, y in zip(*pair))
            print(f"{name}/{pattern[2:]}: {len(pair[0])} files, identical: {equal}")
            same &= equal
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    trains = commands.add_parser("run", help="the demo and the three runs, from one source tree")
    trains.add_argument("--source", type=Path, required=True, help="a checkout of atesd (its src/ and configs/)")
    trains.add_argument("--out", type=Path, required=True, help="the folder the runs and their cache go to")
    trains.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every run (default %(default)s)")
    trains.add_argument("--quick", action="store_true",
                        help=f"a smoke run: the tiny embedded model, {QUICK_STEPS} updates a run")
    checks = commands.add_parser("compare", help="two run folders, bit for bit")
    checks.add_argument("before", type=Path, help="the first `run` out folder")
    checks.add_argument("after", type=Path, help="the second `run` out folder")
    args = parser.parse_args()
    if args.command == "run":
        run(args.source, args.out, args.threads, args.quick)
    else:
        sys.exit(0 if compare(args.before, args.after) else 1)


if __name__ == "__main__":
    main()
