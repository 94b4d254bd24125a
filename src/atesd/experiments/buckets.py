"""Difficulty buckets from the base model's per-problem accuracy (docs/method.md#evaluation), and run results
re-summarised by them.

A problem's difficulty is the base model's Average on it, pooled over every base seed (all samples of all
seeds together): below 1/3 it is ``hard``, from 2/3 on ``easy``, in between ``medium``. These buckets replace
the ``bucket`` a benchmark carries itself (the embedded task's number of operations), so that every method is
read against what the starting model could already do.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from atesd.eval.grading import GradeResult
from atesd.eval.metrics import ProblemResult, summarize_by_bucket

HARD_BELOW = 1 / 3  # base Average below this: hard
EASY_FROM = 2 / 3  # base Average at or above this: easy
BUCKETS = ("hard", "medium", "easy")


def bucket_of(base_average: float) -> str:
    if base_average < HARD_BELOW:
        return "hard"
    return "easy" if base_average >= EASY_FROM else "medium"


def read_problem_results(path: Path) -> list[ProblemResult]:
    """The per-problem results of an evaluation JSON file (written by `eval.evaluate.write_results`)."""
    try:
        problems = json.loads(path.read_text())["problems"]
        return [ProblemResult(problem_id=row["problem_id"], gold=row["gold"], completions=row["completions"],
                              grades=[GradeResult(**grade) for grade in row["grades"]], bucket=row.get("bucket"))
                for row in problems]
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not an evaluation results file ({type(error).__name__}: {error})") from None


def difficulty_buckets(base_results: Iterable[list[ProblemResult]]) -> dict[str, str]:
    """``{problem_id: bucket}`` from the base model's results of one benchmark, one list per seed."""
    correct: dict[str, int] = {}
    samples: dict[str, int] = {}
    for results in base_results:
        for result in results:
            correct[result.problem_id] = correct.get(result.problem_id, 0) + sum(g.correct for g in result.grades)
            samples[result.problem_id] = samples.get(result.problem_id, 0) + len(result.grades)
    return {problem: bucket_of(correct[problem] / samples[problem]) for problem in samples}


def rebucketed_summary(results: list[ProblemResult], buckets: dict[str, str], k: int,
                       source: Path) -> dict[str, dict]:
    """`summarize_by_bucket` with each problem in its base-accuracy bucket (`source` names the file in errors)."""
    missing = [r.problem_id for r in results if r.problem_id not in buckets]
    if missing:
        raise ValueError(f"{source}: problems {missing[:5]} were not evaluated for the base model, so they have "
                         "no difficulty bucket; every run of an experiment must use the same eval problems")
    return summarize_by_bucket([ProblemResult(r.problem_id, r.gold, r.completions, r.grades, buckets[r.problem_id])
                                for r in results], k)
