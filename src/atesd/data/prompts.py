"""Token ids of student and teacher prompts and of reference solutions, built once per problem (and exposure)
and reused."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from transformers import PreTrainedTokenizerBase

from atesd.data.problem import Problem
from atesd.data.segments import exposed_reference
from atesd.data.templates import (
    PromptTemplates,
    chat_prompt,
    require_chat_template,
    student_message,
    teacher_message_with_reference,
)


class PromptBuilder:
    """Chat-formatted, tokenized prompts. Teacher prompts are cached by how many segments they expose, so a
    continuous α costs one tokenization per distinct prompt text."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, templates: PromptTemplates,
                 student_chat_kwargs: Mapping[str, Any], teacher_chat_kwargs: Mapping[str, Any]) -> None:
        require_chat_template(tokenizer)  # fail at set-up, not at the first prompt
        self.tokenizer = tokenizer
        self.templates = templates
        self.student_chat_kwargs = dict(student_chat_kwargs)
        self.teacher_chat_kwargs = dict(teacher_chat_kwargs)
        self._student = lru_cache(maxsize=None)(self._student_ids)
        self._solution = lru_cache(maxsize=None)(self._solution_ids)
        self._teacher = lru_cache(maxsize=200_000)(self._teacher_ids)

    def encode(self, text: str) -> list[int]:
        # The chat template already wrote any special tokens the model needs.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def student(self, problem: Problem) -> list[int]:
        return self._student(problem)

    def teacher(self, problem: Problem, alpha: float) -> list[int]:
        reference = exposed_reference(problem.solution, alpha, self.templates.segment_unit, self.tokenizer)
        return self._teacher(problem, reference)

    def solution(self, problem: Problem) -> list[int]:
        """The reference solution as a completion, ending with EOS (what probe NLL and g_t score)."""
        return self._solution(problem)

    def _student_ids(self, problem: Problem) -> list[int]:
        message = student_message(problem, self.templates)
        return self.encode(chat_prompt(self.tokenizer, message, self.student_chat_kwargs))

    def _solution_ids(self, problem: Problem) -> list[int]:
        return self.encode(problem.solution) + [self.tokenizer.eos_token_id]

    def _teacher_ids(self, problem: Problem, reference: str) -> list[int]:
        message = teacher_message_with_reference(problem, reference, self.templates)
        return self.encode(chat_prompt(self.tokenizer, message, self.teacher_chat_kwargs))
