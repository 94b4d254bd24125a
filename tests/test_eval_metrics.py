"""Tests for atesd.eval.metrics: Pass@k, Average@k, Maj@k and the benchmark summaries."""

from __future__ import annotations

import json
import math

import pytest

from atesd.eval.grading import GradeResult
from atesd.eval.metrics import (
    ProblemResult,
    average_at_k,
    majority_at_k,
    normalize_answer,
    pass_at_k,
    summarize,
    summarize_by_bucket,
)

# --- pass_at_k -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 1, 0.25),
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 0, 1, 0.0),
        (4, 0, 4, 0.0),
        (4, 4, 1, 1.0),
        (4, 4, 4, 1.0),
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (12, 3, 12, 1.0),
        (1, 1, 1, 1.0),
    ],
)
def test_pass_at_k_hand_cases(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_matches_the_binomial_formula():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_many_samples():
    # C(2000, 1000) overflows a float; the product form must not.
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)
    assert pass_at_k(2000, 0, 1000) == 0.0


@pytest.mark.parametrize(("n", "c", "k"), [(4, 1, 0), (4, 1, 5), (4, 5, 1), (4, -1, 1)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k needs"):
        pass_at_k(n, c, k)


# --- average_at_k ----------------------------------------------------------------------------------------


def test_average_at_k():
    assert average_at_k([True, False, False, True]) == 0.5
    assert average_at_k([False] * 3) == 0.0
    assert average_at_k([True]) == 1.0
    with pytest.raises(ValueError):
        average_at_k([])


# --- majority_at_k ---------------------------------------------------------------------------------------


def test_majority_picks_the_most_common_answer():
    answers = ["3", "5", "5", "7"]
    assert majority_at_k(answers, [False, True, True, False], k=4) == 1.0
    assert majority_at_k(answers, [True, False, False, False], k=4) == 0.0


def test_majority_uses_only_the_first_k_samples():
    answers = ["3", "5", "5", "5"]
    correct = [True, False, False, False]
    assert majority_at_k(answers, correct, k=1) == 1.0  # only "3" votes
    assert majority_at_k(answers, correct, k=4) == 0.0  # "5" wins three to one


def test_majority_tie_goes_to_the_earliest_answer():
    assert majority_at_k(["1", "2", "2", "1"], [False, True, True, False], k=4) == 0.0
    assert majority_at_k(["2", "1", "1", "2"], [True, False, False, True], k=4) == 1.0
    assert majority_at_k(["9", "8"], [False, True], k=2) == 0.0


def test_majority_ignores_missing_answers():
    # Three samples gave no answer; the single real answer still wins.
    assert majority_at_k([None, None, "4", None], [False, False, True, False], k=4) == 1.0
    assert majority_at_k([None, None, None], [False, False, False], k=3) == 0.0


def test_majority_groups_equivalent_written_forms():
    answers = [r"\left(1,2\right)", "7", "$(1, 2)$", "7", " (1,2) "]
    correct = [True, False, True, False, True]
    # (1,2) in three spellings beats "7" twice.
    assert majority_at_k(answers, correct, k=5) == 1.0


def test_majority_groups_mathematically_equivalent_answers():
    # three ways of writing one half beat two threes
    answers = ["1/2", "0.5", r"\frac{1}{2}", "3", "3"]
    assert majority_at_k(answers, [True, True, True, False, False], k=5) == 1.0
    assert majority_at_k(["3", "x+1", "1+x", "3", "(x+1)"], [False, True, True, False, True], k=5) == 1.0


def test_majority_never_counts_blank_answers():
    assert majority_at_k(["", " ", "5"], [False, False, True], k=3) == 1.0


def test_normalize_answer():
    assert normalize_answer(r" $\left[ 0, 1 \right)$ ") == "[0,1)"
    assert normalize_answer(r"x \rightarrow 1") == r"x\rightarrow1"  # \rightarrow is not a sizing command


def test_majority_rejects_bad_arguments():
    with pytest.raises(ValueError, match="2 answers but 1"):
        majority_at_k(["1", "2"], [True], k=1)
    with pytest.raises(ValueError, match="k=3"):
        majority_at_k(["1", "2"], [True, False], k=3)


# --- ProblemResult, summarize, summarize_by_bucket -------------------------------------------------------


def _result(
    problem_id: str, answers: list[str | None], correct: list[bool], bucket: str | None
) -> ProblemResult:
    completions = ["no answer" if a is None else r"\boxed{" + a + "}" for a in answers]
    grades = [GradeResult(a, c, a is not None, None) for a, c in zip(answers, correct)]
    return ProblemResult(problem_id, "gold", completions, grades, bucket)


@pytest.fixture
def results() -> list[ProblemResult]:
    return [
        # average 1/2, pass@2 = 1 - C(2,2)/C(4,2) = 5/6, maj@2: "5" twice -> 1, boxed 3 of 4
        _result("p1", ["5", "5", "3", None], [True, True, False, False], "easy"),
        # average 1/2, pass@2 = 5/6, maj@2: "1" vs "2" tie -> "1" -> 0, boxed 4 of 4
        _result("p2", ["1", "2", "7", "7"], [False, False, True, True], "hard"),
        # average 0, pass@2 = 0, maj@2 = 0 (no answers), boxed 0 of 4
        _result("p3", [None, None, None, None], [False, False, False, False], "hard"),
        # no bucket; average 1/2, pass@2 = 5/6, maj@2: both first samples are (1,2) -> 1, boxed 4 of 4
        _result("p4", [r"\left(1,2\right)", "(1, 2)", "3", "3"], [True, True, False, False], None),
    ]


def test_summarize_hand_computed(results):
    summary = summarize(results, k=2)
    assert set(summary) == {"average@2", "pass@2", "maj@2", "boxed_rate", "num_problems", "num_samples"}
    assert summary["average@2"] == pytest.approx((0.5 + 0.5 + 0.0 + 0.5) / 4)
    assert summary["pass@2"] == pytest.approx((5 / 6 * 3 + 0.0) / 4)
    assert summary["maj@2"] == pytest.approx(0.5)
    assert summary["boxed_rate"] == pytest.approx(11 / 16)
    assert summary["num_problems"] == 4
    assert summary["num_samples"] == 16


def test_summarize_names_keys_after_k(results):
    summary = summarize(results, k=4)
    assert summary["average@4"] == pytest.approx(0.375)  # Average@k uses all samples whatever k is
    assert summary["pass@4"] == pytest.approx(0.75)  # p1, p2, p4 have a correct sample; p3 none
    # maj@4: p1 "5" -> 1; p2 "7" twice -> 1; p3 -> 0; p4 (1,2) twice vs 3 twice, tie -> (1,2) -> 1
    assert summary["maj@4"] == pytest.approx(0.75)


def test_summarize_rejects_too_few_samples_and_no_results(results):
    with pytest.raises(ValueError, match="'p1' has 4 samples, fewer than k=5"):
        summarize(results, k=5)
    with pytest.raises(ValueError):
        summarize([], k=1)


def test_summarize_by_bucket_hand_computed(results):
    summaries = summarize_by_bucket(results, k=2)
    assert list(summaries) == ["all", "easy", "hard"]  # p4 has no bucket: only in "all"
    assert summaries["all"] == summarize(results, k=2)
    easy, hard = summaries["easy"], summaries["hard"]
    assert easy["average@2"] == pytest.approx(0.5)
    assert easy["pass@2"] == pytest.approx(5 / 6)
    assert easy["maj@2"] == 1.0
    assert easy["boxed_rate"] == pytest.approx(0.75)
    assert (easy["num_problems"], easy["num_samples"]) == (1, 4)
    assert hard["average@2"] == pytest.approx(0.25)
    assert hard["pass@2"] == pytest.approx(5 / 12)
    assert hard["maj@2"] == 0.0
    assert hard["boxed_rate"] == pytest.approx(0.5)
    assert (hard["num_problems"], hard["num_samples"]) == (2, 8)


def test_summarize_by_bucket_reserves_all(results):
    results[0].bucket = "all"
    with pytest.raises(ValueError, match="reserved"):
        summarize_by_bucket(results, k=2)


def test_problem_result_to_json_round_trips(results):
    data = json.loads(json.dumps(results[0].to_json()))
    assert data["problem_id"] == "p1"
    assert data["gold"] == "gold"
    assert data["bucket"] == "easy"
    assert data["completions"] == [r"\boxed{5}", r"\boxed{5}", r"\boxed{3}", "no answer"]
    assert data["grades"][0] == {"extracted": "5", "correct": True, "has_boxed": True, "error": None}
    assert data["grades"][3] == {"extracted": None, "correct": False, "has_boxed": False, "error": None}


def test_problem_result_checks_lengths():
    with pytest.raises(ValueError, match="'p9': 2 completions but 1 grades"):
        ProblemResult("p9", "1", ["a", "b"], [GradeResult("1", True, True, None)])
