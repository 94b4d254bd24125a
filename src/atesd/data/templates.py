"""Prompt templates: the student prompt, and the teacher prompt at exposure alpha.

The student sees the question and the instruction. The teacher sees the question, the first
floor(alpha * m) segments of the reference solution, the final answer (always, whatever alpha), a fixed
transition text asking it to reason in its own words, and the same instruction. alpha = 1 is the OPSD
teacher; alpha = 0 shows the answer only.

Placeholders such as ``{question}`` are filled by plain replacement of those exact names, not by
`str.format`, so LaTeX braces (``\\boxed{}``) in templates and in problem texts pass through untouched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from atesd.data.problem import Problem
from atesd.data.segments import SegmentUnit, exposed_reference
from atesd.settings import Section

_TRANSITION = (
    "After reading the reference solution above, make sure you truly understand the reasoning behind each "
    "step — do not copy or paraphrase it. Now, using your own words and independent reasoning, derive the "
    "same final answer to the problem above. Think step by step, explore different approaches, and don't "
    "be afraid to backtrack or reconsider if something doesn't work out."
)


class PromptTemplates(Section):
    """The texts of the student and teacher prompts, and how reference solutions are segmented."""


    instruction: str = Field(
        "Please reason step by step, and put your final answer within \\boxed{}.",
        description="Instruction closing both prompts; fills {instruction}.",
    )
    student: str = Field(
        "{question}\n\n{instruction}",
        description="Student prompt. Placeholders: {question}, {instruction}.",
    )
    reference_intro: str = Field(
        "Here is a reference solution to this problem:",
        description="Line introducing the exposed reference solution; left out with the reference when "
        "nothing of it is exposed.",
    )
    answer_line: str = Field(
        "The final answer is \\boxed{{answer}}.",
        description="Line giving the final answer to the teacher, at every exposure. Placeholder: {answer}.",
    )
    transition: str = Field(
        _TRANSITION,
        description="Text after the answer asking the teacher to reason in its own words; fills {transition}.",
    )
    teacher: str = Field(
        "{question}\n\n{reference_block}{answer_line}\n\n{transition}\n\n{instruction}",
        description="Teacher prompt. Placeholders: {question}, {reference_block} (reference_intro, newline, "
        "exposed reference, newline; empty at zero exposure), {answer_line}, {transition}, {instruction}.",
    )
    teacher_boundary: Literal["open", "think", "student"] = Field(
        "open",
        description="How the teacher's prompt ends before the student's completion (docs/method.md#the-thinking-"
        "boundary): open, as the chat template writes it with model.teacher_chat_kwargs (OPSD's code); think, "
        "followed by think_open, so that a teacher in thinking mode reads the completion as its reasoning "
        "(OPSD issue #10); student, followed by whatever the student's prompt adds after the teacher's (with "
        "Qwen3: the empty think block), so both read the completion after the same boundary.",
    )
    think_open: str = Field("<think>\n", description="What opens a thinking block (teacher_boundary: think).")
    segment_unit: SegmentUnit = Field(
        "line",
        description="Unit the exposure fraction counts in: line (non-empty lines), paragraph (blank-line "
        "blocks), sentence, or token (tokens of the model's tokenizer).",
    )

    @model_validator(mode="after")
    def _check_placeholders(self) -> PromptTemplates:
        required = {
            "student": ("{question}",),
            "answer_line": ("{answer}",),
            "teacher": ("{question}", "{reference_block}", "{answer_line}"),
        }
        for name, placeholders in required.items():
            missing = [p for p in placeholders if p not in getattr(self, name)]
            if missing:
                raise ValueError(f"template '{name}' lacks the placeholder(s) {', '.join(missing)}")
        return self


def _fill(template: str, **values: str) -> str:
    """`template` with each ``{name}`` of `values` replaced by its value, in one pass.

    One pass means a value that itself contains ``{answer}`` or the like is not filled again; braces
    that are not one of the given names are left as they are.
    """
    if not values:
        return template
    pattern = re.compile("|".join(re.escape("{" + name + "}") for name in values))
    return pattern.sub(lambda match: values[match.group(0)[1:-1]], template)


def student_message(problem: Problem, templates: PromptTemplates) -> str:
    """The student's user message: the question and the instruction, no privileged information."""
    return _fill(templates.student, question=problem.question, instruction=templates.instruction)


def teacher_message(problem: Problem, alpha: float, templates: PromptTemplates, tokenizer: Any = None) -> str:
    """The teacher's user message at exposure `alpha`; `tokenizer` is needed for the `token` unit only."""
    reference = exposed_reference(problem.solution, alpha, templates.segment_unit, tokenizer)
    return teacher_message_with_reference(problem, reference, templates)


def teacher_message_with_reference(problem: Problem, reference: str, templates: PromptTemplates) -> str:
    """The teacher's user message showing `reference` (an exposed prefix of the solution, maybe empty)."""
    reference_block = f"{templates.reference_intro}\n{reference}\n" if reference else ""
    return _fill(
        templates.teacher,
        question=problem.question,
        reference_block=reference_block,
        answer_line=_fill(templates.answer_line, answer=problem.answer),
        transition=templates.transition,
        instruction=templates.instruction,
    )


def chat_prompt(tokenizer: Any, message: str, chat_template_kwargs: Mapping[str, Any] | None = None) -> str:
    """`message` as one user turn in the tokenizer's chat template, ending with the assistant's turn opening.

    `chat_template_kwargs` go to the template, e.g. ``{"enable_thinking": False}`` for a Qwen3 student.

    The result is tokenized on its own and a completion's ids are appended to it (never re-tokenized from the
    joined text), so no BPE merge can join the prompt's last token with the completion's first one; see
    docs/models.md.
    """
    require_chat_template(tokenizer)
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": message}],
        tokenize=False,
        add_generation_prompt=True,
        **dict(chat_template_kwargs or {}),
    )


def require_chat_template(tokenizer: Any) -> None:
    """Raise a ValueError naming the config key to set when `tokenizer` has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"tokenizer {name!r} has no chat template: set model.chat_template to a Jinja chat template (or "
            "the path of a file holding one), or use a chat/instruct model"
        )
