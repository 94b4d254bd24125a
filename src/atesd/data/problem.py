"""The `Problem` record every part of atesd works on, and its validation.

A problem is a question, a reference solution (whose reasoning is split into segments when a teacher prompt
is built, see `atesd.data.segments`) and a final answer. Records are validated when they are made so that a
bad row fails where it is read, with the file, row and field in the message, and not deep inside training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from atesd.errors import UserError


class DataError(UserError, ValueError):
    """A data record is unusable. The message names the source (file or dataset), the row and the field."""

    def __init__(self, message: str, *, source: str | None = None, row: int | None = None,
                 field: str | None = None) -> None:
        where = []
        if source is not None:
            where.append(str(source))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.source, self.row, self.field = source, row, field


@dataclass(frozen=True)
class Problem:
    """One math problem.

    `solution` is the full reference solution text y*; it may end with the boxed final answer, which
    segmenting leaves out so that the answer is never counted twice. `answer` is the final answer a* as a
    string (e.g. ``118`` or ``\\frac{1}{576}``). `meta` carries free-form tags such as a difficulty bucket.
    """

    id: str
    question: str
    solution: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("id", "question", "solution", "answer"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise DataError(f"expected a string, got {type(value).__name__}", field=name)
            if not value.strip():
                raise DataError("is empty", field=name)
