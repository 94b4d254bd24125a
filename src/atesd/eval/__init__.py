"""Evaluation: grading completions with math-verify and the Average@k / Pass@k / Maj@k metrics."""

from atesd.eval.grading import GradeResult, check_answer_parses, extract_boxed, grade, grade_many
from atesd.eval.metrics import (
    ProblemResult,
    average_at_k,
    majority_at_k,
    normalize_answer,
    pass_at_k,
    summarize,
    summarize_by_bucket,
)

__all__ = [
    "GradeResult",
    "ProblemResult",
    "average_at_k",
    "check_answer_parses",
    "extract_boxed",
    "grade",
    "grade_many",
    "majority_at_k",
    "normalize_answer",
    "pass_at_k",
    "summarize",
    "summarize_by_bucket",
]
