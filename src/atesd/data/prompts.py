"""Token ids of student and teacher prompts and of reference solutions, built once per problem (and exposure)
and reused; and the lengths of the sequences a training step builds from them, measured against the model's
context before training starts (`PromptBuilder.fits`, `PromptBuilder.truncated`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from typing import Any, cast

from transformers import PreTrainedTokenizerBase

from atesd.data.problem import DataError, Problem
from atesd.data.segments import exposed_reference, segment_spans, strip_final_boxed
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
        self._encodable: dict[str, bool] = {}
        for name, text in templates.model_dump().items():  # a template the tokenizer cannot encode, by name
            if isinstance(text, str):
                try:
                    self.encode(text)
                except DataError as error:
                    raise DataError(str(error), field=f"templates.{name}") from None
        self.templates = templates
        self.student_chat_kwargs = dict(student_chat_kwargs)
        self.teacher_chat_kwargs = dict(teacher_chat_kwargs)
        self.teacher_boundary = self._boundary_text()
        self._student = lru_cache(maxsize=None)(self._student_ids)
        self._solution = lru_cache(maxsize=None)(self._solution_ids)
        self._teacher = lru_cache(maxsize=200_000)(self._teacher_ids)
        self._segments = lru_cache(maxsize=None)(self._segment_texts)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; a DataError names the characters of a text the tokenizer cannot encode."""
        try:
            # The chat template already wrote any special tokens the model needs.
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        except Exception as error:  # noqa: BLE001 - the tokenizers library raises a bare Exception
            self.check_characters(text)
            raise DataError(f"the tokenizer cannot encode the text: {error}") from None

    def check_characters(self, text: str) -> None:
        """A DataError naming the characters of `text` the tokenizer cannot encode, if it has any. Each distinct
        character is tried once (a tokenizer that fails on text, the embedded one, fails on its characters)."""
        unknown = "".join(sorted(c for c in set(text) if not self._encodes(c)))
        if unknown:
            raise DataError(f"the tokenizer cannot encode the characters {unknown!r}: remove or replace them")

    def _encodes(self, character: str) -> bool:
        if character not in self._encodable:
            try:
                self.tokenizer(character, add_special_tokens=False)
                self._encodable[character] = True
            except Exception:  # noqa: BLE001 - as in encode
                self._encodable[character] = False
        return self._encodable[character]

    def student(self, problem: Problem) -> list[int]:
        return self._student(problem)

    def teacher(self, problem: Problem, alpha: float) -> list[int]:
        reference = exposed_reference(problem.solution, alpha, self.templates.segment_unit, self.tokenizer)
        return self._teacher(problem, reference)

    def segments(self, problem: Problem) -> int:
        """m, the number of reference segments exposure counts in (`templates.segment_unit`)."""
        return len(self._segments(problem))

    def segment_texts(self, problem: Problem) -> tuple[str, ...]:
        """The texts of those m segments, in order."""
        return self._segments(problem)

    def solution(self, problem: Problem) -> list[int]:
        """The reference solution as a completion, ending with EOS (what probe NLL and g_t score)."""
        return self._solution(problem)

    # ------------------------------------------------------------------ lengths against the model's context

    def fits(self, problem: Problem, context: int, max_new_tokens: int) -> bool:
        """Whether every sequence a step builds for `problem` fits in `context` tokens: the student or the teacher
        prompt (at full exposure, its longest) followed by a rollout of `max_new_tokens` or by the reference
        solution. Nothing is cached, and a problem whose texts are short enough in bytes is not tokenized: every
        tokenizer atesd meets (byte-level BPE, SentencePiece, the embedded one) spends at least a byte of text
        per token, plus at most one token for a leading space and the EOS."""
        self.check_characters(problem.question + problem.solution)
        student, teacher = self._student_text(problem), self._teacher_text(problem, self._full_reference(problem))
        upper = max(_bytes(student), _bytes(teacher)) + 1 + max(max_new_tokens, _bytes(problem.solution) + 2)
        return upper <= context or self.longest(problem, max_new_tokens) <= context

    def longest(self, problem: Problem, max_new_tokens: int) -> int:
        """The tokens of the longest sequence a step builds for `problem` (see `fits`)."""
        student = len(self.encode(self._student_text(problem)))
        teacher = len(self.encode(self._teacher_text(problem, self._full_reference(problem))))
        return max(student, teacher) + max(max_new_tokens, len(self._solution_ids(problem)))

    def truncated(self, problem: Problem, context: int, max_new_tokens: int) -> Problem | None:
        """`problem` with its reference solution cut to the longest prefix with which it `fits`; None when none
        does (its question alone is too long). The question is never cut: it is the problem."""
        # No token is longer than the vocabulary's longest, so a prefix of this many characters holds more tokens
        # than the context: the rest of a long reference need not be tokenized to find where to cut it.
        solution = problem.solution[: 2 * context * max(len(token) for token in self.tokenizer.get_vocab())]
        encoding = self.tokenizer(solution, add_special_tokens=False, return_offsets_mapping=self.tokenizer.is_fast)
        ids = encoding["input_ids"]

        def prefix(kept: int) -> Problem | None:
            if kept == 0:
                return None
            # decode gives one sequence's text (transformers annotates it str | list[str], for batches too)
            text = solution[: encoding["offset_mapping"][kept - 1][1]] if self.tokenizer.is_fast \
                else cast(str, self.tokenizer.decode(ids[:kept]))
            return replace(problem, solution=text) if text.strip() else None

        # The longest kept prefix whose sequences fit, by bisection (no prefix longer than the context can).
        low, high = 0, min(len(ids), context)
        while low < high:
            middle = (low + high + 1) // 2
            candidate = prefix(middle)
            if candidate is not None and self.longest(candidate, max_new_tokens) <= context:
                low = middle
            else:
                high = middle - 1
        return prefix(low)

    def _full_reference(self, problem: Problem) -> str:
        return exposed_reference(problem.solution, 1.0, self.templates.segment_unit, self.tokenizer)

    # ------------------------------------------------------------------ texts and ids

    def _student_text(self, problem: Problem) -> str:
        return chat_prompt(self.tokenizer, student_message(problem, self.templates), self.student_chat_kwargs)

    def _teacher_text(self, problem: Problem, reference: str) -> str:
        message = teacher_message_with_reference(problem, reference, self.templates)
        return chat_prompt(self.tokenizer, message, self.teacher_chat_kwargs) + self.teacher_boundary

    def _boundary_text(self) -> str:
        """What follows the teacher's chat prompt before the completion (`templates.teacher_boundary`).

        ``student``: the text the student's prompt has after the point where the teacher's ends, found by
        rendering one message both ways; the teacher's must be a prefix of the student's (true of Qwen3's
        template: enable_thinking false only appends the empty think block)."""
        boundary = self.templates.teacher_boundary
        if boundary == "think":
            return self.templates.think_open
        if boundary == "open":
            return ""
        student = chat_prompt(self.tokenizer, "x", self.student_chat_kwargs)
        teacher = chat_prompt(self.tokenizer, "x", self.teacher_chat_kwargs)
        if not student.startswith(teacher):
            raise DataError("the teacher's prompt is not a prefix of the student's with this chat template and "
                            "these chat kwargs, so there is no student boundary to add: set "
                            "templates.teacher_boundary to open or think", field="templates.teacher_boundary")
        return student[len(teacher):]

    def _student_ids(self, problem: Problem) -> list[int]:
        return self.encode(self._student_text(problem))

    def _solution_ids(self, problem: Problem) -> list[int]:
        return self.encode(problem.solution) + [self.tokenizer.eos_token_id]

    def _segment_texts(self, problem: Problem) -> tuple[str, ...]:
        reasoning = strip_final_boxed(problem.solution)
        return tuple(reasoning[start:end] for start, end in
                     segment_spans(reasoning, self.templates.segment_unit, self.tokenizer))

    def _teacher_ids(self, problem: Problem, reference: str) -> list[int]:
        return self.encode(self._teacher_text(problem, reference))


def _bytes(text: str) -> int:
    return len(text.encode("utf-8"))
