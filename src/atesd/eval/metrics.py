"""Benchmark metrics over graded samples: Average@k, Pass@k, Maj@k and the boxed-answer rate.

Each problem has n sampled completions. Average@k is the mean correctness of a problem's samples (the paper's
headline metric, k = 12); Pass@k is the unbiased estimator of Chen et al. (2021) from all n samples; Maj@k is
the correctness of the majority answer among the first k samples, answers voting together when they are the
same mathematical answer (math-verify, as grading decides; docs/method.md#evaluation). Every metric is
averaged over problems.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from atesd.eval.grading import GradeResult, equivalent

# `\left(` and `\right)` only size the brackets; `(?![a-zA-Z])` keeps `\leftarrow` and `\rightarrow` intact.
_SIZING_COMMANDS = re.compile(r"\\(?:left|right)(?![a-zA-Z])")
_WHITESPACE = re.compile(r"\s+")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Computed as a product of ratios, which stays exact-ish where the binomials would overflow a float.
    """
    if k < 1 or k > n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got k={k}, n={n}")
    if c < 0 or c > n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got c={c}, n={n}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        all_wrong *= 1.0 - k / i
    return 1.0 - all_wrong


def average_at_k(correct: Sequence[bool]) -> float:
    """Mean correctness over the samples of one problem."""
    if len(correct) == 0:
        raise ValueError("average_at_k needs at least one sample")
    return sum(bool(flag) for flag in correct) / len(correct)


def normalize_answer(answer: str) -> str:
    """Light normalisation under which two extracted answers are the same vote in Maj@k without asking
    math-verify."""
    without_sizing = _SIZING_COMMANDS.sub("", answer)
    return _WHITESPACE.sub("", without_sizing).strip("$")


def majority_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """1.0 when the majority answer among the first k samples is correct, else 0.0.

    ``answers[i]`` is sample i's extracted answer (None or blank: it gave none, which never wins a vote) and
    ``correct[i]`` its grade. An answer joins the first group whose first answer it is equivalent to
    (`atesd.eval.grading.equivalent`: ``1/2``, ``0.5`` and ``\\frac{1}{2}`` are one vote), or starts its own. Ties
    go to the group that appears first. The winner's correctness is that of its first sample: its answers are
    the same answer, so they share a grade.
    """
    if len(answers) != len(correct):
        raise ValueError(f"majority_at_k: {len(answers)} answers but {len(correct)} correctness flags")
    if k < 1 or k > len(answers):
        raise ValueError(f"majority_at_k needs 1 <= k <= {len(answers)} samples, got k={k}")
    groups: list[list[int]] = []  # sample indices of each distinct answer, in order of first appearance
    firsts: list[str] = []  # each group's first answer
    group_of: dict[str, int] = {}  # normalised spelling -> its group: a spelling seen before needs no math-verify
    for index, answer in enumerate(answers[:k]):
        if answer is None or not answer.strip():
            continue
        key = normalize_answer(answer)
        if key not in group_of:
            group_of[key] = next((number for number, first in enumerate(firsts) if equivalent(first, answer)),
                                 len(groups))
            if group_of[key] == len(groups):
                groups.append([])
                firsts.append(answer)
        groups[group_of[key]].append(index)
    if not groups:
        return 0.0
    winner = max(groups, key=len)  # max() returns the first maximum: ties go to the earliest answer
    return 1.0 if correct[winner[0]] else 0.0


@dataclass
class ProblemResult:
    """All graded samples of one benchmark problem."""

    problem_id: str
    gold: str
    completions: list[str]
    grades: list[GradeResult]
    bucket: str | None = None  # difficulty bucket, from the base model's accuracy on this problem

    def __post_init__(self) -> None:
        if len(self.completions) != len(self.grades):
            raise ValueError(
                f"problem {self.problem_id!r}: {len(self.completions)} completions but {len(self.grades)} grades"
            )

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of this result, for per-problem output files."""
        return {
            "problem_id": self.problem_id,
            "gold": self.gold,
            "bucket": self.bucket,
            "completions": list(self.completions),
            "grades": [dataclasses.asdict(grade) for grade in self.grades],
        }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def summarize(results: list[ProblemResult], k: int) -> dict[str, float | int]:
    """Benchmark metrics over problems: ``average@k``, ``pass@k``, ``maj@k``, ``boxed_rate`` and counts.

    Average@k and Pass@k use all n samples of a problem (n >= k); Maj@k uses the first k. The boxed rate is
    the share of all completions that have a boxed answer.
    """
    if not results:
        raise ValueError("summarize needs at least one problem result")
    averages, passes, majorities = [], [], []
    for result in results:
        n = len(result.grades)
        if n < k:
            raise ValueError(f"problem {result.problem_id!r} has {n} samples, fewer than k={k}")
        flags = [grade.correct for grade in result.grades]
        averages.append(average_at_k(flags))
        passes.append(pass_at_k(n, sum(flags), k))
        majorities.append(majority_at_k([grade.extracted for grade in result.grades], flags, k))
    grades = [grade for result in results for grade in result.grades]
    return {
        f"average@{k}": _mean(averages),
        f"pass@{k}": _mean(passes),
        f"maj@{k}": _mean(majorities),
        "boxed_rate": _mean([1.0 if grade.has_boxed else 0.0 for grade in grades]),
        "num_problems": len(results),
        "num_samples": len(grades),
    }


def summarize_by_bucket(results: list[ProblemResult], k: int) -> dict[str, dict[str, float | int]]:
    """``summarize`` over all problems (key ``"all"``) and over each difficulty bucket, in name order.

    Problems without a bucket count only in ``"all"``.
    """
    by_bucket: dict[str, list[ProblemResult]] = {}
    for result in results:
        if result.bucket is None:
            continue
        if result.bucket == "all":
            raise ValueError(f"problem {result.problem_id!r}: bucket name 'all' is reserved for the total")
        by_bucket.setdefault(result.bucket, []).append(result)
    summaries = {"all": summarize(results, k)}
    for bucket in sorted(by_bucket):
        summaries[bucket] = summarize(by_bucket[bucket], k)
    return summaries


def combine_seeds(per_seed: Sequence[dict[str, dict[str, float | int]]]) -> dict[str, dict[str, float | int]]:
    """Summaries by bucket of the same problems sampled with several seeds, as one: each metric's mean over the
    seeds, its sample standard deviation as ``<metric>_std`` (0 for one seed), and ``seeds``; the counts are
    those of one seed."""
    combined: dict[str, dict[str, float | int]] = {}
    for bucket, first in per_seed[0].items():
        entry: dict[str, float | int] = {}
        for key, value in first.items():
            if key in ("num_problems", "num_samples"):
                entry[key] = value
                continue
            values = [summary[bucket][key] for summary in per_seed]
            entry[key] = _mean(values)
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        entry["seeds"] = len(per_seed)
        combined[bucket] = entry
    return combined
