"""PromptBuilder: its cached token ids are exactly what tokenizing the prompt text afresh gives, at every
exposure, and the cache is keyed so that two exposures share ids only when they show the same reference; the
lengths of a step's sequences, a long reference cut to fit, and text the tokenizer cannot encode, named."""

from __future__ import annotations

import pytest

from atesd.data import DataError, Problem, PromptTemplates, chat_prompt, student_message, teacher_message
from atesd.data.prompts import PromptBuilder
from atesd.models.tiny import build_char_tokenizer

PROBLEM = Problem(id="p", question="Compute 1+2*3-4.", solution="2*3=6\n1+6=7\n7-4=3\n\\boxed{3}", answer="3")
# Same id, other text: the cache must not confuse two problems that share an id.
SAME_ID = Problem(id="p", question="Compute 9-8+7.", solution="9-8=1\n1+7=8\n\\boxed{8}", answer="8")
STUDENT_KWARGS, TEACHER_KWARGS = {"enable_thinking": False}, {"enable_thinking": True}


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture()
def builder(tokenizer):
    return PromptBuilder(tokenizer, PromptTemplates(), STUDENT_KWARGS, TEACHER_KWARGS)


def fresh(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("alpha", [0.0, 0.2, 1 / 3, 0.34, 0.5, 2 / 3, 0.99, 1.0])
def test_teacher_ids_equal_a_fresh_tokenization_at_every_exposure(builder, tokenizer, alpha):
    for problem in (PROBLEM, SAME_ID):
        for _ in range(2):  # the second call is served by the cache
            expected = fresh(tokenizer, chat_prompt(tokenizer, teacher_message(problem, alpha, PromptTemplates()),
                                                    TEACHER_KWARGS))
            assert builder.teacher(problem, alpha) == expected


def test_student_and_solution_ids(builder, tokenizer):
    for problem in (PROBLEM, SAME_ID, PROBLEM):
        assert builder.student(problem) == fresh(
            tokenizer, chat_prompt(tokenizer, student_message(problem, PromptTemplates()), STUDENT_KWARGS))
        assert builder.solution(problem) == fresh(tokenizer, problem.solution) + [tokenizer.eos_token_id]


def test_exposures_share_ids_exactly_when_they_show_the_same_segments(builder):
    # Three segments: alpha in [1/3, 2/3) shows one of them.
    assert builder.teacher(PROBLEM, 0.34) == builder.teacher(PROBLEM, 0.6)
    assert builder.teacher(PROBLEM, 0.6) != builder.teacher(PROBLEM, 0.67)
    assert builder.teacher(PROBLEM, 0.0) != builder.teacher(PROBLEM, 0.34)
    assert builder.teacher(PROBLEM, 0.5) != builder.teacher(SAME_ID, 0.5)


# --- lengths against the model's context ---------------------------------------------------------------------

SHORT = PromptTemplates(instruction="Box the answer.", reference_intro="Reference:",
                        answer_line="Answer: \\boxed{{answer}}", transition="Now solve it yourself.")


@pytest.fixture()
def short_builder(tokenizer):
    return PromptBuilder(tokenizer, SHORT, STUDENT_KWARGS, TEACHER_KWARGS)


def test_longest_is_the_longest_sequence_a_step_builds(short_builder):
    expected = max(len(short_builder.student(PROBLEM)), len(short_builder.teacher(PROBLEM, 1.0))) + max(
        16, len(short_builder.solution(PROBLEM)))
    assert short_builder.longest(PROBLEM, 16) == expected
    assert short_builder.fits(PROBLEM, expected, 16) and not short_builder.fits(PROBLEM, expected - 1, 16)


def test_a_long_reference_is_cut_to_the_longest_prefix_that_fits(short_builder):
    long = Problem(id="long", question="Compute 1+1.", solution="1+1=2\n" * 20_000 + "\\boxed{2}", answer="2")
    assert not short_builder.fits(long, 512, 16)
    cut = short_builder.truncated(long, 512, 16)
    assert cut.question == long.question and cut.answer == "2" and long.solution.startswith(cut.solution)
    assert short_builder.longest(cut, 16) <= 512
    one_more = Problem(id="long", question=long.question, solution=long.solution[: len(cut.solution) + 1],
                       answer="2")
    assert short_builder.longest(one_more, 16) > 512


def test_a_question_too_long_for_the_context_cannot_be_cut(short_builder):
    wordy = Problem(id="wordy", question="Compute " + "1+" * 300 + "1.", solution="x\n\\boxed{301}", answer="301")
    assert not short_builder.fits(wordy, 512, 16)
    assert short_builder.truncated(wordy, 512, 16) is None


def test_characters_the_tokenizer_cannot_encode_are_named(short_builder, tokenizer):
    with pytest.raises(DataError, match="cannot encode the characters '中文'"):
        short_builder.encode("Compute 中+文.")
    with pytest.raises(DataError,
                       match="field 'templates.transition': the tokenizer cannot encode the characters '中'"):
        PromptBuilder(tokenizer, SHORT.model_copy(update={"transition": "中"}), STUDENT_KWARGS, TEACHER_KWARGS)


# ---------------------------------------------------------------- the thinking boundary (OPSD issue #10)

def boundary_builder(tokenizer, boundary: str, student=STUDENT_KWARGS, teacher=TEACHER_KWARGS) -> PromptBuilder:
    return PromptBuilder(tokenizer, PromptTemplates(teacher_boundary=boundary), student, teacher)


def test_open_boundary_is_the_chat_templates_own(tokenizer):
    # Qwen3-style template: the student's turn ends after an empty think block, the teacher's opens in thinking mode
    student = tokenizer.decode(boundary_builder(tokenizer, "open").student(PROBLEM))
    teacher = tokenizer.decode(boundary_builder(tokenizer, "open").teacher(PROBLEM, 1.0))
    assert student.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert teacher.endswith("<|im_start|>assistant\n")


def test_think_boundary_opens_the_teachers_reasoning(tokenizer):
    opened = boundary_builder(tokenizer, "think").teacher(PROBLEM, 0.5)
    plain = boundary_builder(tokenizer, "open").teacher(PROBLEM, 0.5)
    assert opened == plain + fresh(tokenizer, "<think>\n")
    assert tokenizer.convert_ids_to_tokens(opened[-2]) == "<think>"  # the special token, not its characters


def test_student_boundary_ends_the_teacher_prompt_like_the_students(tokenizer):
    builder = boundary_builder(tokenizer, "student")
    student, teacher = builder.student(PROBLEM), builder.teacher(PROBLEM, 1.0)
    tail = fresh(tokenizer, "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert student[-len(tail):] == tail and teacher[-len(tail):] == tail
    # the same chat kwargs for both: nothing to add
    same = boundary_builder(tokenizer, "student", TEACHER_KWARGS, TEACHER_KWARGS)
    assert same.teacher(PROBLEM, 1.0) == boundary_builder(tokenizer, "open", TEACHER_KWARGS, TEACHER_KWARGS
                                                          ).teacher(PROBLEM, 1.0)


def test_student_boundary_that_cannot_be_found_is_refused_by_name(tokenizer):
    with pytest.raises(DataError, match="templates.teacher_boundary"):
        boundary_builder(tokenizer, "student", TEACHER_KWARGS, STUDENT_KWARGS)


def test_the_boundary_counts_in_the_lengths_checked_against_the_context(tokenizer):
    longest = {b: boundary_builder(tokenizer, b).longest(PROBLEM, 64) for b in ("open", "think", "student")}
    open_builder = boundary_builder(tokenizer, "open")
    assert len(open_builder.teacher(PROBLEM, 1.0)) > len(open_builder.student(PROBLEM))  # the teacher's is longest
    assert longest["think"] == longest["open"] + len(fresh(tokenizer, "<think>\n"))
    assert longest["student"] == longest["open"] + len(fresh(tokenizer, "<think>\n\n</think>\n\n"))
