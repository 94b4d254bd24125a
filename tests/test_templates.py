"""Segmenting reference solutions and the exact student and teacher prompts at every exposure and unit."""

from __future__ import annotations

import math

import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizer, PreTrainedTokenizerFast

from atesd.data import (
    Problem,
    PromptTemplates,
    chat_prompt,
    exposed_reference,
    segment_spans,
    strip_final_boxed,
    student_message,
    teacher_message,
)

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
TRANSITION = (
    "After reading the reference solution above, make sure you truly understand the reasoning behind each "
    "step — do not copy or paraphrase it. Now, using your own words and independent reasoning, derive the "
    "same final answer to the problem above. Think step by step, explore different approaches, and don't "
    "be afraid to backtrack or reconsider if something doesn't work out."
)
TAIL = f"\n\n{TRANSITION}\n\n{INSTRUCTION}"

ARITHMETIC = Problem(
    id="arith", question="Compute 17+25*3-8.", solution="25*3=75\n17+75=92\n92-8=84\n\\boxed{84}", answer="84"
)
QUADRATIC = Problem(
    id="quad",
    question="Find the sum of the roots of $x^2-5x+6=0$.",
    solution=(
        "We factor the quadratic:\n$$x^2-5x+6=(x-2)(x-3).$$\n\n"
        "So the roots are $2$ and $3$.\n\n"
        "Their sum is $2+3=5$.\n\n"
        "$$\\boxed{5}$$\n"
    ),
    answer="5",
)
PENS = Problem(
    id="pens",
    question="A pen costs $3.5$ dollars. How much do $4$ pens cost?",
    solution=(
        "Each pen costs $3.5$ dollars. Is that per pen? Yes! So $4$ pens cost $4 \\cdot 3.5 = 14$ dollars.\n"
        "So the answer is $\\boxed{14}$."
    ),
    answer="14",
)


@pytest.fixture(scope="module")
def char_tokenizer() -> PreTrainedTokenizerFast:
    """A fast tokenizer with one token per character (printable ASCII and newline), built locally."""
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {"[UNK]": 0, **{char: i + 1 for i, char in enumerate(chars)}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


class SlowCharTokenizer(PreTrainedTokenizer):
    """A slow (pure Python) tokenizer with one token per ASCII character: it has no offset mapping."""

    def __init__(self, **kwargs):
        self._vocab = {chr(i): i for i in range(128)}
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def _tokenize(self, text: str) -> list[str]:
        return list(text)

    def _convert_token_to_id(self, token: str) -> int:
        return ord(token)

    def _convert_id_to_token(self, index: int) -> str:
        return chr(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)


# --- strip_final_boxed -----------------------------------------------------------------------------------


def test_strip_final_boxed_on_its_own_line():
    assert strip_final_boxed("25*3=75\n17+75=92\n92-8=84\n\\boxed{84}") == "25*3=75\n17+75=92\n92-8=84"


def test_strip_final_boxed_in_dollars_with_trailing_period():
    assert strip_final_boxed("So the answer is $\\boxed{5}$.") == "So the answer is"


def test_strip_final_boxed_not_at_the_end_leaves_solution_unchanged():
    solution = "We guess $\\boxed{5}$ first.\nThen we check it.  \n"
    assert strip_final_boxed(solution) == "We guess $\\boxed{5}$ first.\nThen we check it."


def test_strip_final_boxed_display_math_and_nested_braces():
    solution = "Half of one is a half.\n\\[\n\\boxed{\\frac{1}{2}}\n\\]\n"
    assert strip_final_boxed(solution) == "Half of one is a half."
    assert strip_final_boxed("First step.\n$$\\boxed{\\{1, 2\\}}$$") == "First step."


def test_strip_final_boxed_keeps_closing_delimiter_of_wider_math():
    assert strip_final_boxed("Thus $x = \\boxed{5}$.") == "Thus $x =$"


def test_strip_final_boxed_reads_the_openings_grading_reads():
    assert strip_final_boxed("Add them.\n\\boxed {5}") == "Add them."
    assert strip_final_boxed("Add them.\n\\fbox{5}") == "Add them."


def test_strip_final_boxed_of_a_bare_answer_is_empty():
    assert strip_final_boxed("\\boxed{42}") == ""


# --- segment_spans ----------------------------------------------------------------------------------------

TEXT = "First. Second one!  Third?\n   \nx=1\n\n  Para two, line one.\n  line two"


def _segments(text: str, spans: list[tuple[int, int]]) -> list[str]:
    return [text[start:end] for start, end in spans]


def test_segment_spans_line():
    spans = segment_spans(TEXT, "line")
    assert _segments(TEXT, spans) == ["First. Second one!  Third?", "x=1", "Para two, line one.", "line two"]
    assert spans[1] == (31, 34)


def test_segment_spans_paragraph():
    spans = segment_spans(TEXT, "paragraph")
    assert _segments(TEXT, spans) == ["First. Second one!  Third?", "x=1", "Para two, line one.\n  line two"]


def test_segment_spans_sentence():
    spans = segment_spans(TEXT, "sentence")
    assert _segments(TEXT, spans) == [
        "First.", "Second one!", "Third?", "x=1", "Para two, line one.", "line two",
    ]
    assert spans[:3] == [(0, 6), (7, 18), (20, 26)]


def test_segment_spans_sentence_does_not_split_decimals():
    text = "It costs 3.5 dollars. Really?! Yes"
    assert _segments(text, segment_spans(text, "sentence")) == ["It costs 3.5 dollars.", "Really?!", "Yes"]


def test_segment_spans_token_fast(char_tokenizer):
    assert segment_spans("6*7=42\n ok", "token", char_tokenizer) == [(i, i + 1) for i in range(10)]


def test_segment_spans_token_slow_tokenizer_decodes_prefixes():
    tokenizer = SlowCharTokenizer()
    assert not tokenizer.is_fast
    assert segment_spans("6*7=42\n ok", "token", tokenizer) == [(i, i + 1) for i in range(10)]


def test_segment_spans_token_needs_a_tokenizer():
    with pytest.raises(ValueError, match="tokenizer"):
        segment_spans("6*7=42", "token")


def test_segment_spans_unknown_unit():
    with pytest.raises(ValueError, match="'word'"):
        segment_spans("6*7=42", "word")  # type: ignore[arg-type]


def test_prefix_of_spans_preserves_formatting():
    spans = segment_spans(TEXT, "line")
    assert TEXT[: spans[2][1]] == "First. Second one!  Third?\n   \nx=1\n\n  Para two, line one."


# --- exposed_reference --------------------------------------------------------------------------------------


def test_exposed_reference_floor_guards_float_error():
    solution = "\n".join(f"step {i}" for i in range(1, 101))
    assert 0.29 * 100 < 29  # the float error the guard exists for
    assert exposed_reference(solution, 0.29, "line").splitlines()[-1] == "step 29"
    assert exposed_reference(solution, 0.28, "line").splitlines()[-1] == "step 28"
    assert exposed_reference(solution, 0.289, "line").splitlines()[-1] == "step 28"


def test_exposed_reference_of_answer_only_solution_is_empty():
    assert exposed_reference("\\boxed{42}", 1.0, "line") == ""


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan, math.inf, "0.5", True])
def test_alpha_outside_unit_interval_is_rejected(alpha):
    with pytest.raises(ValueError, match="alpha"):
        exposed_reference(ARITHMETIC.solution, alpha, "line")
    with pytest.raises(ValueError, match="alpha"):
        teacher_message(ARITHMETIC, alpha, PromptTemplates())


# --- student and teacher prompts ----------------------------------------------------------------------------


def test_student_message():
    assert student_message(ARITHMETIC, PromptTemplates()) == f"Compute 17+25*3-8.\n\n{INSTRUCTION}"


TEACHER_CASES = [
    # line: 3 lines; alpha 0.5 shows floor(1.5) = 1 line. The boxed answer line is never exposed.
    (ARITHMETIC, "line", 0.0, "Compute 17+25*3-8.\n\nThe final answer is \\boxed{84}." + TAIL),
    (ARITHMETIC, "line", 0.5,
     "Compute 17+25*3-8.\n\n"
     "Here is a reference solution to this problem:\n25*3=75\n"
     "The final answer is \\boxed{84}." + TAIL),
    (ARITHMETIC, "line", 1.0,
     "Compute 17+25*3-8.\n\n"
     "Here is a reference solution to this problem:\n25*3=75\n17+75=92\n92-8=84\n"
     "The final answer is \\boxed{84}." + TAIL),
    # paragraph: one block of three lines; alpha 0.5 shows floor(0.5) = 0 paragraphs.
    (ARITHMETIC, "paragraph", 0.0, "Compute 17+25*3-8.\n\nThe final answer is \\boxed{84}." + TAIL),
    (ARITHMETIC, "paragraph", 0.5, "Compute 17+25*3-8.\n\nThe final answer is \\boxed{84}." + TAIL),
    (ARITHMETIC, "paragraph", 1.0,
     "Compute 17+25*3-8.\n\n"
     "Here is a reference solution to this problem:\n25*3=75\n17+75=92\n92-8=84\n"
     "The final answer is \\boxed{84}." + TAIL),
    # paragraph: three paragraphs (the $$\boxed{5}$$ one is stripped); alpha 0.5 shows 1.
    (QUADRATIC, "paragraph", 0.0,
     "Find the sum of the roots of $x^2-5x+6=0$.\n\nThe final answer is \\boxed{5}." + TAIL),
    (QUADRATIC, "paragraph", 0.5,
     "Find the sum of the roots of $x^2-5x+6=0$.\n\n"
     "Here is a reference solution to this problem:\n"
     "We factor the quadratic:\n$$x^2-5x+6=(x-2)(x-3).$$\n"
     "The final answer is \\boxed{5}." + TAIL),
    (QUADRATIC, "paragraph", 1.0,
     "Find the sum of the roots of $x^2-5x+6=0$.\n\n"
     "Here is a reference solution to this problem:\n"
     "We factor the quadratic:\n$$x^2-5x+6=(x-2)(x-3).$$\n\n"
     "So the roots are $2$ and $3$.\n\n"
     "Their sum is $2+3=5$.\n"
     "The final answer is \\boxed{5}." + TAIL),
    # line on the same solution: four non-empty lines, blank lines are not segments; 0.5 shows 2.
    (QUADRATIC, "line", 0.5,
     "Find the sum of the roots of $x^2-5x+6=0$.\n\n"
     "Here is a reference solution to this problem:\n"
     "We factor the quadratic:\n$$x^2-5x+6=(x-2)(x-3).$$\n"
     "The final answer is \\boxed{5}." + TAIL),
    # sentence: "So the answer is $\boxed{14}$." becomes "So the answer is", so 5 sentences; 0.5 shows 2.
    (PENS, "sentence", 0.0,
     "A pen costs $3.5$ dollars. How much do $4$ pens cost?\n\nThe final answer is \\boxed{14}." + TAIL),
    (PENS, "sentence", 0.5,
     "A pen costs $3.5$ dollars. How much do $4$ pens cost?\n\n"
     "Here is a reference solution to this problem:\n"
     "Each pen costs $3.5$ dollars. Is that per pen?\n"
     "The final answer is \\boxed{14}." + TAIL),
    (PENS, "sentence", 1.0,
     "A pen costs $3.5$ dollars. How much do $4$ pens cost?\n\n"
     "Here is a reference solution to this problem:\n"
     "Each pen costs $3.5$ dollars. Is that per pen? Yes! So $4$ pens cost $4 \\cdot 3.5 = 14$ dollars.\n"
     "So the answer is\n"
     "The final answer is \\boxed{14}." + TAIL),
    # sentence on one-operation-per-line text: each line is a sentence; 0.5 shows 1 of 3.
    (ARITHMETIC, "sentence", 0.5,
     "Compute 17+25*3-8.\n\n"
     "Here is a reference solution to this problem:\n25*3=75\n"
     "The final answer is \\boxed{84}." + TAIL),
    (ARITHMETIC, "sentence", 1.0,
     "Compute 17+25*3-8.\n\n"
     "Here is a reference solution to this problem:\n25*3=75\n17+75=92\n92-8=84\n"
     "The final answer is \\boxed{84}." + TAIL),
]


@pytest.mark.parametrize(("problem", "unit", "alpha", "expected"), TEACHER_CASES)
def test_teacher_message(problem, unit, alpha, expected):
    assert teacher_message(problem, alpha, PromptTemplates(segment_unit=unit)) == expected


@pytest.mark.parametrize(("alpha", "expected"), [
    (0.0, "Compute 17+25*3-8.\n\nThe final answer is \\boxed{84}." + TAIL),
    # 24 characters (newlines included) after stripping the boxed line; 0.5 shows 12 of them.
    (0.5,
     "Compute 17+25*3-8.\n\n"
     "Here is a reference solution to this problem:\n25*3=75\n17+7\n"
     "The final answer is \\boxed{84}." + TAIL),
    (1.0,
     "Compute 17+25*3-8.\n\n"
     "Here is a reference solution to this problem:\n25*3=75\n17+75=92\n92-8=84\n"
     "The final answer is \\boxed{84}." + TAIL),
])
def test_teacher_message_token_unit(char_tokenizer, alpha, expected):
    templates = PromptTemplates(segment_unit="token")
    assert teacher_message(ARITHMETIC, alpha, templates, tokenizer=char_tokenizer) == expected


def test_teacher_message_token_unit_trims_whitespace_at_the_cut(char_tokenizer):
    # "25*3=75\n" is 8 tokens of 24; alpha 1/3 cuts right after the newline, which is rstripped.
    templates = PromptTemplates(segment_unit="token")
    message = teacher_message(ARITHMETIC, 1 / 3, templates, tokenizer=char_tokenizer)
    assert message == (
        "Compute 17+25*3-8.\n\nHere is a reference solution to this problem:\n25*3=75\n"
        "The final answer is \\boxed{84}." + TAIL
    )


def test_templates_fill_by_exact_name_and_leave_latex_braces_alone():
    templates = PromptTemplates(
        instruction="Box it: \\boxed{}.",
        student="Q: {question} | {instruction} | {unknown} | {}",
        answer_line="ANSWER {answer} {answer}",
        teacher="[{question}]{reference_block}<{answer_line}>",
        reference_intro="REF",
    )
    problem = Problem(id="p", question="Is {answer} a set $\\{x\\}$?", solution="a\nb\n\\boxed{7}", answer="7")
    assert student_message(problem, templates) == (
        "Q: Is {answer} a set $\\{x\\}$? | Box it: \\boxed{}. | {unknown} | {}"
    )
    assert teacher_message(problem, 1.0, templates) == "[Is {answer} a set $\\{x\\}$?]REF\na\nb\n<ANSWER 7 7>"


def test_default_answer_line_boxes_the_answer():
    templates = PromptTemplates()
    assert templates.answer_line == "The final answer is \\boxed{{answer}}."
    problem = Problem(id="p", question="q", solution="\\boxed{\\frac{1}{576}}", answer="\\frac{1}{576}")
    assert teacher_message(problem, 1.0, templates) == "q\n\nThe final answer is \\boxed{\\frac{1}{576}}." + TAIL


def test_templates_reject_missing_placeholders_and_unknown_fields():
    with pytest.raises(ValueError, match=r"'teacher' lacks the placeholder\(s\) \{answer_line\}"):
        PromptTemplates(teacher="{question}{reference_block}")
    with pytest.raises(ValueError, match=r"'answer_line' lacks the placeholder\(s\) \{answer\}"):
        PromptTemplates(answer_line="The answer is below.")
    with pytest.raises(ValueError, match="extra"):
        PromptTemplates(temperature=1.0)


# --- chat_prompt -------------------------------------------------------------------------------------------


def test_chat_prompt_without_chat_template_raises(char_tokenizer):
    assert char_tokenizer.chat_template is None
    with pytest.raises(ValueError, match="has no chat template.*chat_template"):
        chat_prompt(char_tokenizer, "Compute 6*7.", {})


def test_chat_prompt_applies_template_with_kwargs(char_tokenizer):
    tokenizer = char_tokenizer.__class__(tokenizer_object=char_tokenizer.backend_tokenizer, unk_token="[UNK]")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>"
        "{% if enable_thinking is defined and not enable_thinking %}<no-think>{% endif %}{% endif %}"
    )
    assert chat_prompt(tokenizer, "Compute 6*7.", {}) == "<|user|>Compute 6*7.\n<|assistant|>"
    assert chat_prompt(tokenizer, "Compute 6*7.", {"enable_thinking": False}) == (
        "<|user|>Compute 6*7.\n<|assistant|><no-think>"
    )
