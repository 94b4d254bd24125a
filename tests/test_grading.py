"""Tests for atesd.eval.grading: boxed-answer extraction and math-verify grading."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from math_verify.errors import TimeoutException

from atesd.eval import grading
from atesd.eval.grading import GradeResult, check_answer_parses, equivalent, extract_boxed, grade, grade_many

BENCHMARK_DIR = Path(__file__).resolve().parents[2] / "shared/data/benchmarks"
BENCHMARKS = ["aime24", "aime25", "hmmt25"]


@pytest.fixture(autouse=True)
def _fresh_grading_cache():
    # Grades are cached per (answer, gold) pair; a monkeypatched verify must not leak into other tests.
    grading._compare.cache_clear()
    yield
    grading._compare.cache_clear()


def _benchmark_answers(name: str) -> list[str]:
    if not BENCHMARK_DIR.is_dir():
        pytest.skip(f"benchmark copies not found at {BENCHMARK_DIR}")
    with open(BENCHMARK_DIR / f"{name}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line)["answer"] for line in handle if line.strip()]


# --- extract_boxed ---------------------------------------------------------------------------------------


def test_extract_boxed_keeps_nested_braces():
    assert extract_boxed(r"so the answer is \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{\sqrt{\frac{95}{24}}}") == r"\sqrt{\frac{95}{24}}"


def test_extract_boxed_takes_the_last_of_several():
    assert extract_boxed(r"first \boxed{3}, then \boxed{4}, finally \boxed{118}") == "118"


def test_extract_boxed_unclosed_or_absent_is_none():
    assert extract_boxed(r"the answer is \boxed{\frac{1}{2}") is None
    assert extract_boxed(r"\boxed{3} and then \boxed{4") is None  # the last box is the one that counts
    assert extract_boxed("the answer is 42") is None
    assert extract_boxed("") is None


def test_extract_boxed_accepts_fbox_and_a_space():
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed(r"\boxed {12}") == "12"
    assert extract_boxed(r"\boxed{1} then \fbox{2}") == "2"


def test_extract_boxed_skips_escaped_braces():
    assert extract_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"


def test_extract_boxed_empty_box_is_empty_string():
    assert extract_boxed(r"\boxed{}") == ""


# --- grade -----------------------------------------------------------------------------------------------


def test_grade_equivalent_forms_are_correct():
    assert grade(r"Thus \boxed{\frac{1}{2}}", "0.5") == GradeResult(r"\frac{1}{2}", True, True, None)
    assert grade(r"\boxed{118}", "118") == GradeResult("118", True, True, None)
    assert grade(r"\boxed{025}", "25") == GradeResult("025", True, True, None)
    assert grade(r"\boxed{0.5}", r"\frac{1}{2}").correct is True
    assert grade(r"\boxed{\dfrac{9\sqrt{23}}{23}}", r"\frac{9 \sqrt{23}}{23}").correct is True


def test_grade_wrong_answer_is_wrong():
    result = grade(r"\boxed{117}", "118")
    assert result == GradeResult("117", False, True, None)
    assert grade(r"\boxed{\frac{1}{3}}", "0.5").correct is False


def test_grade_without_boxed_answer_is_wrong():
    assert grade("The answer is 118.", "118") == GradeResult(None, False, False, None)


def test_grade_garbage_is_wrong_without_raising():
    unclosed = grade(r"\boxed{\frac{", "118")
    assert unclosed == GradeResult(None, False, False, None)
    closed = grade(r"\boxed{\frac{1}{}}", "118")
    assert closed.correct is False and closed.has_boxed is True and closed.extracted == r"\frac{1}{}"
    empty = grade(r"\boxed{}", "118")
    assert empty.correct is False and empty.has_boxed is True and empty.extracted == ""


def test_grade_reports_an_exception_in_verify(monkeypatch):
    def broken_verify(*args, **kwargs):
        raise RuntimeError("sympy blew up")

    monkeypatch.setattr(grading, "verify", broken_verify)
    result = grade(r"\boxed{\frac{2}{4}}", "0.5")
    assert result.correct is False
    assert result.has_boxed is True
    assert result.error == "RuntimeError: sympy blew up"


def test_grade_reports_a_timeout(monkeypatch):
    def slow_verify(*args, **kwargs):
        raise TimeoutException("Timeout during comparison")

    monkeypatch.setattr(grading, "verify", slow_verify)
    result = grade(r"\boxed{\frac{2}{4}}", "0.5", timeout_seconds=1)
    assert result.correct is False
    assert result.error is not None and "Timeout" in result.error


def test_grade_literal_match_skips_math_verify(monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("verify called on a literal match")

    monkeypatch.setattr(grading, "verify", must_not_run)
    assert grade(r"\boxed{ 204 }", "204") == GradeResult(" 204 ", True, True, None)


def test_grade_many_grades_pairwise():
    results = grade_many([r"\boxed{1}", r"\boxed{3}", "no answer"], ["1", "2", "3"])
    assert [r.correct for r in results] == [True, False, False]
    assert [r.has_boxed for r in results] == [True, True, False]
    with pytest.raises(ValueError, match="2 completions but 1 gold"):
        grade_many(["a", "b"], ["1"])


def test_check_answer_parses():
    check_answer_parses("118")
    check_answer_parses(r"\frac{1}{2}")
    with pytest.raises(ValueError, match="cannot be parsed"):
        check_answer_parses("")
    with pytest.raises(ValueError, match="cannot be parsed"):
        check_answer_parses("   ")


@pytest.mark.parametrize("broken", [r"\frac{", "}}}", r"\sqrt{2", "abc{"])
def test_check_answer_parses_refuses_what_math_verify_only_echoes(broken):
    with pytest.raises(ValueError, match="is not mathematics math_verify can read"):
        check_answer_parses(broken)


@pytest.mark.parametrize("answer", ["118", r"\frac{1}{2}", "(1,2)", r"\{1,2\}", "x+1", r"\text{(A)}", "Monday"])
def test_check_answer_parses_keeps_real_answers(answer):
    check_answer_parses(answer)


def test_equivalent_answers():
    assert equivalent("1/2", "0.5") and equivalent(r"\frac{1}{2}", "1/2") and equivalent(" 3", "3 ")
    assert not equivalent("3", "1/2") and not equivalent(r"\frac{", "3")


# --- the real benchmark answers ------------------------------------------------------------------------


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_answer_grades_correct_against_itself(name):
    answers = _benchmark_answers(name)
    assert len(answers) == 30
    for answer in answers:
        check_answer_parses(answer)
        assert grade(r"... so the answer is \boxed{" + answer + "}", answer).correct, answer
        # `$...$` inside the box defeats the literal fast path, so math-verify itself must agree.
        symbolic = grade(r"\boxed{$" + answer + "$}", answer)
        assert symbolic.correct and symbolic.error is None, answer


@pytest.mark.parametrize("name", BENCHMARKS)
def test_another_rows_answer_grades_wrong(name):
    answers = _benchmark_answers(name)
    pairs = [(gold, other) for gold, other in itertools.pairwise(answers) if gold != other][:8]
    assert len(pairs) == 8
    for gold, other in pairs:
        result = grade(r"\boxed{" + other + "}", gold)
        assert result.correct is False and result.error is None, (gold, other)


def test_last_number_reads_a_bare_answer_only_where_there_is_no_boxed_one():
    from atesd.eval.grading import grader_for

    last = grader_for("last_number")
    assert last("3 + 4 = 7, so the answer is 7.", "7") == GradeResult("7", True, False)
    assert last("The total is 1,234 legs", "1234").correct and last("it is -12.5", "-12.5").correct
    assert last("\\boxed{8} (or 7?)", "7") == GradeResult("8", False, True)  # a boxed answer wins
    assert last("no number here", "7") == GradeResult(None, False, False)
    assert grader_for("boxed")("3 + 4 = 7", "7") == GradeResult(None, False, False)  # the paper's: boxed only
