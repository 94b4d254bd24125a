"""Grading throughput (answers/s) on the benchmark answer files: `grade_many` in the calling process against
the same grading spread over W worker processes (the fast path that was tried and dropped, see
docs/performance.md; kept here so that it can be re-measured on a bigger machine).

The answers are made from the gold answers of AIME 24, AIME 25 and HMMT 25, read as ``atesd eval`` reads them
(``atesd.data.sources.load_benchmark``: ``$ATESD_BENCHMARK_DIR/<name>.jsonl`` where it exists, else the hub
dataset), or from every ``*.jsonl`` (``id, problem, answer``) of a folder given with ``--data``:
per gold, ``\\boxed{gold}`` (a literal match, no math-verify), equivalent forms that need math-verify
(``gold.0``, ``\\frac{2·gold}{2}``) and wrong answers (gold + i, ``\\frac{gold}{i+2}``) — distinct pairs, so
that the per-pair cache never answers for math-verify. Each timed round starts with a cleared cache. Worker
pools are timed twice: ``cold`` includes starting the pool (fresh processes, whose first math-verify call
builds its parser), as a caller that makes a pool per call pays; ``warm`` reuses that pool, the best case of
a pool kept for a whole run. Workers are made by a fork server, as a torch process must (forking one that runs
torch's thread pools can deadlock). Two batch sizes: the whole set (an evaluation's output) and 32 answers
(one training step of the embedded default). ``--quick`` (a smoke run): 32 answers alone (every third of the
first 96, one wrong form per gold), the first two ``--workers`` (the calling process and a pool of 2), one round.

    python benchmarks/bench_grading.py --out runs/bench/grading.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from harness import add_common_flags, apply_threads, markdown_table, summary, write_results

from atesd.eval import grading

BENCHMARKS = ("aime24", "aime25", "hmmt25")


def gold_answers(data_dir: Path | None) -> list[str]:
    """Every gold answer in `data_dir`/*.jsonl, or, without a folder, of the three named benchmarks."""
    if data_dir is None:
        from atesd.data.sources import load_benchmark

        return [problem.answer for name in BENCHMARKS for problem in load_benchmark(name)]
    golds = [json.loads(line)["answer"] for path in sorted(data_dir.glob("*.jsonl"))
             for line in path.read_text().splitlines() if line.strip()]
    if not golds:
        raise SystemExit(f"no benchmark answers found in {data_dir}/*.jsonl")
    return golds


def answer_set(data_dir: Path | None, wrong_per_gold: int) -> tuple[list[str], list[str]]:
    """(completions, golds) from every gold answer (`gold_answers`)."""
    golds = gold_answers(data_dir)
    completions, paired = [], []
    for gold in golds:
        forms = [gold, rf"\frac{{2 \cdot ({gold})}}{{2}}"]
        if re.fullmatch(r"-?\d+", gold.strip()):
            value = int(gold)
            forms.append(f"{value}.0")
            forms += [str(value + i + 1) for i in range(wrong_per_gold)]
        else:
            forms += [f"{gold} + {i + 1}" for i in range(wrong_per_gold)]
        forms += [rf"\frac{{{gold}}}{{{i + 2}}}" for i in range(wrong_per_gold)]
        for form in forms:
            completions.append(f"We work it out step by step.\nSo the answer is $\\boxed{{{form}}}$.")
            paired.append(gold)
    return completions, paired


def grade_in_pool(pool: ProcessPoolExecutor, workers: int, completions: list[str], golds: list[str]) -> list:
    chunksize = max(1, len(completions) // (workers * 4))  # a few chunks per worker evens out slow answers
    return list(pool.map(grading.grade, completions, golds, chunksize=chunksize))


def time_grading(completions: list[str], golds: list[str], workers: int, repeats: int) -> list[dict]:
    """Rows for one batch: serial (workers = 1), or a pool's cold and warm rounds."""
    rounds: dict[str, list[float]] = {}
    correct = None
    context = multiprocessing.get_context("forkserver")
    for _ in range(repeats):
        grading._compare.cache_clear()
        started = time.perf_counter()
        if workers <= 1:
            results = grading.grade_many(completions, golds)
            rounds.setdefault("serial", []).append(time.perf_counter() - started)
        else:
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                results = grade_in_pool(pool, workers, completions, golds)
                rounds.setdefault("cold", []).append(time.perf_counter() - started)
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                # Warm every worker up on answers of its own (not the timed ones, which its cache would keep).
                warm_up = [rf"\boxed{{\frac{{1}}{{{k + 3}}}}}" for k in range(workers * 4)]
                grade_in_pool(pool, workers, warm_up, ["2"] * len(warm_up))
                warm_started = time.perf_counter()
                grade_in_pool(pool, workers, completions, golds)
                rounds.setdefault("warm", []).append(time.perf_counter() - warm_started)
        correct = sum(r.correct for r in results)
    rows = []
    for mode, times in rounds.items():
        stats = summary(times)
        rows.append({"answers": len(completions), "workers": workers, "mode": mode, **stats,
                     "answers_per_s": len(completions) / stats["median_s"], "correct": correct})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_flags(parser, repeats=3)
    parser.add_argument("--data", type=Path, default=None,
                        help="folder of benchmark *.jsonl files (default: aime24, aime25 and hmmt25 as "
                             "atesd eval loads them: $ATESD_BENCHMARK_DIR, else the hub)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4],
                        help="worker processes to compare (1: the calling process)")
    args = parser.parse_args()
    apply_threads(args.threads)
    completions, golds = answer_set(args.data, wrong_per_gold=1 if args.quick else 4)
    batches = {"benchmark set": (completions, golds), "32 answers": (completions[:32], golds[:32])}
    if args.quick:
        batches = {"32 answers": (completions[:96:3], golds[:96:3])}
        args.workers, args.repeats = args.workers[:2], 1

    results = []
    for label, (batch, batch_golds) in batches.items():
        for workers in args.workers:
            for row in time_grading(batch, batch_golds, workers, args.repeats):
                results.append({"batch": label, **row})
                print(f"{label:>14}  workers={workers} {row['mode']:>6}  {row['answers_per_s']:8.1f} answers/s",
                      flush=True)
    serial = {row["batch"]: row["answers_per_s"] for row in results if row["workers"] == 1}
    for row in results:
        row["speedup_vs_serial"] = row["answers_per_s"] / serial[row["batch"]] if row["batch"] in serial else None
    print(markdown_table(["batch", "answers", "workers", "pool", "answers/s", "× serial"],
                         [[r["batch"], r["answers"], r["workers"], r["mode"], r["answers_per_s"],
                           r["speedup_vs_serial"]]
                          for r in results]))
    write_results(args.out, "grading", args, results)


if __name__ == "__main__":
    main()
