"""Grading of model completions against gold answers on math problems.

A completion is graded by its last ``\\boxed{...}`` (or ``\\fbox{...}``) answer, compared with the gold answer by
``math_verify``, which knows that ``\\frac{1}{2}``, ``0.5`` and ``1/2`` are the same number. With ``data.answer:
last_number`` a completion without a boxed answer is graded by its last number instead (small models such as
SmolLM2-135M rarely box; reasoning-gym's own scoring reads a bare number too). Grading never raises: a parse error
or a timeout makes the completion wrong and is recorded in ``GradeResult.error``.

math-verify enforces its timeouts with ``signal.alarm``, which works only in the main thread of the main
interpreter. Grade in the main thread, or in worker processes; never in a thread pool. atesd grades in the
calling thread: worker processes were measured and do not pay at its batch sizes, since a fresh worker needs
seconds before its first math-verify comparison against milliseconds per answer in a warm process
(benchmarks/bench_grading.py, docs/performance.md).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from math_verify import parse, verify
from math_verify.errors import TimeoutException

from atesd.data.boxed import extract_boxed

# Distinct (answer, gold) pairs seen in a run: a few per problem and step; 65k bounds the memory.
_CACHE_SIZE = 2**16
AnswerMode = Literal["boxed", "last_number"]
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class GradeResult:
    """The grade of one completion.

    Attributes:
        extracted: the content of the completion's last boxed answer (with ``last_number``, else its last number),
            or None when it has none.
        correct: whether that answer is equivalent to the gold answer.
        has_boxed: whether the completion has a (closed) boxed answer at all.
        error: why grading failed (an exception or a timeout), or None when it ran to the end.
    """

    extracted: str | None
    correct: bool
    has_boxed: bool
    error: str | None = None


def _as_latex_math(answer: str) -> str:
    """Wrap a bare LaTeX answer in ``$...$``: math_verify only reads LaTeX inside math delimiters."""
    stripped = answer.strip()
    if "$" in stripped or stripped.startswith(("\\(", "\\[")):
        return stripped
    return f"${stripped}$"


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _compare(extracted: str, gold: str, timeout_seconds: int) -> tuple[bool, str | None]:
    """Compare an extracted answer with a gold answer; return (correct, error). Pure, hence cached."""
    try:
        gold_parsed = parse(_as_latex_math(gold), parsing_timeout=timeout_seconds, raise_on_error=True)
        if not gold_parsed:
            return False, f"math_verify cannot parse the gold answer {gold!r}"
        pred_parsed = parse(_as_latex_math(extracted), parsing_timeout=timeout_seconds, raise_on_error=True)
        if not pred_parsed:
            return False, None  # an unparseable answer is simply wrong, not a grading failure
        # The gold goes first: math_verify's comparison is not symmetric.
        correct = verify(gold_parsed, pred_parsed, timeout_seconds=timeout_seconds, raise_on_error=True)
        return bool(correct), None
    # Grading must never crash a training or eval run. TimeoutException derives from BaseException, so
    # `except Exception` alone would let timeouts escape.
    except (Exception, TimeoutException) as error:  # noqa: BLE001
        return False, f"{type(error).__name__}: {error}"


def grade(completion: str, gold: str, timeout_seconds: int = 5, answer: AnswerMode = "boxed") -> GradeResult:
    """Grade one completion against the gold answer; never raises. `answer`: how the answer is read (the module
    docstring).

    Must run in the main thread or in a worker process (math-verify's timeouts use signals).
    """
    extracted = extract_boxed(completion)
    boxed = extracted is not None
    if extracted is None and answer == "last_number":
        numbers = _NUMBER.findall(completion.replace(",", ""))
        extracted = numbers[-1] if numbers else None
    if extracted is None:
        return GradeResult(extracted=None, correct=False, has_boxed=False)
    # Most correct answers are literally the gold (AIME integers): skip the symbolic comparison.
    if extracted.strip() and extracted.strip() == gold.strip():
        return GradeResult(extracted=extracted, correct=True, has_boxed=boxed)
    correct, error = _compare(extracted, gold, timeout_seconds)
    return GradeResult(extracted=extracted, correct=correct, has_boxed=boxed, error=error)


def grader_for(answer: AnswerMode) -> Callable[[str, str], GradeResult]:
    """`grade` reading answers as ``data.answer`` says."""
    return grade if answer == "boxed" else functools.partial(grade, answer=answer)


def grade_many(completions: list[str], golds: list[str], timeout_seconds: int = 5) -> list[GradeResult]:
    """Grade ``completions[i]`` against ``golds[i]`` for every i, in the calling (main) thread."""
    if len(completions) != len(golds):
        raise ValueError(f"grade_many: {len(completions)} completions but {len(golds)} gold answers")
    return [grade(completion, gold, timeout_seconds) for completion, gold in zip(completions, golds)]


def check_answer_parses(answer: str, timeout_seconds: int = 5) -> None:
    """Raise ValueError when math_verify cannot read ``answer`` as mathematics.

    That is when it yields nothing, or only the text itself: what it returns for broken LaTeX such as
    ``\\frac{`` or ``}}}``, which no completion could match except by repeating the same characters. Data
    loaders call this to reject rows whose gold answer could never be matched; they add the file and row.
    """
    try:
        parsed = parse(_as_latex_math(answer), parsing_timeout=timeout_seconds, raise_on_error=True)
    except (Exception, TimeoutException) as error:  # any parser failure or timeout means a bad answer
        raise ValueError(f"answer {answer!r} cannot be parsed by math_verify: {error}") from error
    if not parsed:
        raise ValueError(f"answer {answer!r} cannot be parsed by math_verify (it yields nothing)")
    if all(isinstance(item, str) for item in parsed):
        raise ValueError(f"answer {answer!r} is not mathematics math_verify can read (check its braces and "
                         "commands)")


def equivalent(first: str, second: str, timeout_seconds: int = 5) -> bool:
    """Whether two extracted answers are the same mathematical answer (``1/2``, ``0.5``, ``\\frac{1}{2}``), as
    grading decides it with `first` in the place of the gold answer; never raises."""
    if first.strip() == second.strip():
        return True
    return _compare(second, first, timeout_seconds)[0]
