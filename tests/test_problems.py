"""Training problems measured against the model's context before training starts: a long reference solution
is cut (or, with data.skip_invalid_rows, the problem left out), both counted; a question too long, or text the
tokenizer cannot encode, is an error naming the problem."""

from __future__ import annotations

import logging

import pytest

from atesd.data import DataError, Problem, PromptTemplates
from atesd.data.prompts import PromptBuilder
from atesd.models.tiny import build_char_tokenizer
from atesd.train.problems import fit_to_context

SHORT = PromptTemplates(instruction="Box the answer.", reference_intro="Reference:",
                        answer_line="Answer: \\boxed{{answer}}", transition="Now solve it yourself.")
GOOD = [Problem(id=f"p{i}", question=f"Compute {i}+1.", solution=f"{i}+1={i + 1}\n\\boxed{{{i + 1}}}",
                answer=str(i + 1)) for i in range(3)]
LONG = Problem(id="long", question="Compute 1+1.", solution="1+1=2\n" * 10_000 + "\\boxed{2}", answer="2")
WORDY = Problem(id="wordy", question="Compute " + "1+" * 300 + "1.", solution="x\n\\boxed{301}", answer="301")
FOREIGN = Problem(id="foreign", question="Compute \u4e2d+1.", solution="x\n\\boxed{2}", answer="2")


@pytest.fixture(scope="module")
def prompts():
    return PromptBuilder(build_char_tokenizer(), SHORT, {"enable_thinking": False}, {"enable_thinking": True})


def fit(prompts, problems, skip=False):
    return fit_to_context(problems, prompts, 512, 16, skip, "data/train.jsonl")


def test_problems_that_fit_are_kept_as_they_are(prompts):
    assert fit(prompts, GOOD) == GOOD


def test_a_long_reference_is_cut_to_fit_with_a_warning(prompts, caplog):
    with caplog.at_level(logging.WARNING):
        fitted = fit(prompts, [*GOOD, LONG])
    assert fitted[:3] == GOOD and fitted[3].id == "long" and len(fitted[3].solution) < 1000
    assert prompts.longest(fitted[3], 16) <= 512
    assert "data/train.jsonl: cut the reference solutions of 1 of 4 problems" in caplog.text and "'long'" in caplog.text


def test_with_skip_invalid_rows_such_problems_are_left_out_and_counted(prompts, caplog):
    with caplog.at_level(logging.WARNING):
        assert fit(prompts, [LONG, *GOOD, WORDY, FOREIGN], skip=True) == GOOD
    assert "left out 3 of 6 problems" in caplog.text and "'long'" in caplog.text


ENCODING = "the tokenizer cannot encode the characters '\u4e2d'"


@pytest.mark.parametrize("problem,why", [(WORDY, "its longest sequence takes"), (FOREIGN, ENCODING)])
def test_a_problem_that_cannot_be_made_to_fit_is_named(prompts, problem, why):
    with pytest.raises(DataError, match=f"data/train.jsonl: problem '{problem.id}': {why}") as excinfo:
        fit(prompts, [*GOOD, problem])
    assert "data.skip_invalid_rows" in str(excinfo.value)


def test_when_no_problem_fits_it_says_so(prompts):
    with pytest.raises(DataError, match="no problem fits the model's context of 512 tokens"):
        fit(prompts, [WORDY], skip=True)
