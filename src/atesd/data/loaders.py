"""Loading problems from JSONL files and Hugging Face datasets, validating every row as it is read.

A row becomes a `Problem` through a `ColumnMap` that says which column holds what. Every bad row fails
here, with the file or dataset, the row and the column in the message.

Training data has reference solutions; the answer is its own column or, when there is none, the content of
the solution's last ``\\boxed{}``. Benchmarks have no solution: their `solution` is then the boxed answer
itself, since a benchmark problem is only ever put to the student (whose prompt holds no solution), and
`Problem` requires a non-empty solution.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from atesd.data.problem import DataError, Problem


class ColumnMap(BaseModel):
    """Which column of a data row holds each part of a problem."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        "id", description="Column with a unique problem id; None (or absent) names rows <source>-<row>."
    )
    question: str = Field("problem", description="Column with the question text.")
    solution: str | None = Field(
        "solution", description="Column with the reference solution; None (or absent) for benchmarks."
    )
    answer: str | None = Field(
        "answer",
        description="Column with the final answer; None (or absent) takes the solution's last \\boxed{}.",
    )


def problems_from_rows(
    rows: Iterable[Mapping[str, Any]],
    columns: ColumnMap,
    source: str,
    check_answer: Callable[[str], None] | None = None,
    *,
    id_prefix: str | None = None,
) -> list[Problem]:
    """Validated problems from data rows; rows are numbered from 1 in errors.

    `check_answer` may reject an answer by raising ValueError (e.g. one the grader cannot parse). Rows
    without an id are named ``f"{id_prefix}-{row}"``, `id_prefix` defaulting to `source`.
    """
    return _problems(enumerate(rows, start=1), columns, source, check_answer, id_prefix)


def _problems(
    numbered_rows: Iterable[tuple[int, Any]],
    columns: ColumnMap,
    source: str,
    check_answer: Callable[[str], None] | None,
    id_prefix: str | None,
) -> list[Problem]:
    problems = []
    first_row_of_id: dict[str, int] = {}
    for row_number, row in numbered_rows:
        problem = _problem(row, row_number, columns, source, check_answer, id_prefix or source)
        if problem.id in first_row_of_id:
            raise DataError(
                f"duplicate id {problem.id!r}, already used in row {first_row_of_id[problem.id]}",
                source=source, row=row_number, field=columns.id or "id",
            )
        first_row_of_id[problem.id] = row_number
        problems.append(problem)
    return problems


def _problem(
    row: Any,
    row_number: int,
    columns: ColumnMap,
    source: str,
    check_answer: Callable[[str], None] | None,
    id_prefix: str,
) -> Problem:
    def error(message: str, column: str | None) -> DataError:
        return DataError(message, source=source, row=row_number, field=column)

    def text(column: str, accept_int: bool = False) -> str:
        if column not in row:
            raise error(f"missing (the row has columns {sorted(row)})", column)
        value = row[column]
        if accept_int and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise error(f"expected a string, got {type(value).__name__}: {value!r:.80}", column)
        if not value.strip():
            raise error("is empty", column)
        return value

    if not isinstance(row, Mapping):
        raise error(f"expected an object with named columns, got {type(row).__name__}", None)

    question = text(columns.question)
    has_solution = columns.solution is not None and columns.solution in row
    has_answer = columns.answer is not None and columns.answer in row
    solution = text(columns.solution) if has_solution else None

    if has_answer:
        answer_column = columns.answer
        answer = text(columns.answer, accept_int=True).strip()
    elif solution is not None:
        # The grading module depends on data (see DESIGN.md), so import it here, not at module level.
        from atesd.eval.grading import extract_boxed

        answer_column = columns.solution
        answer = (extract_boxed(solution) or "").strip()
        if not answer:
            raise error("has no \\boxed{} final answer, and the row has no answer column to take it from",
                        answer_column)
    else:
        raise error(f"missing: a row needs an answer column or a solution with a \\boxed{{}} answer "
                    f"(the row has columns {sorted(row)})", columns.answer or columns.solution or "answer")

    if check_answer is not None:
        try:
            check_answer(answer)
        except ValueError as exc:
            raise error(f"answer {answer!r} rejected: {exc}", answer_column) from exc

    if columns.id is not None and columns.id in row:
        problem_id = text(columns.id, accept_int=True)
    else:
        problem_id = f"{id_prefix}-{row_number}"

    used = {columns.id, columns.question, columns.solution, columns.answer}
    meta = {key: value for key, value in row.items() if key not in used}
    return Problem(
        id=problem_id,
        question=question,
        solution=solution if solution is not None else f"\\boxed{{{answer}}}",
        answer=answer,
        meta=meta,
    )


def load_jsonl(
    path: str | os.PathLike[str],
    columns: ColumnMap | None = None,
    check_answer: Callable[[str], None] | None = None,
) -> list[Problem]:
    """Problems from a JSONL file, one JSON object per line; blank lines are skipped.

    Rows are numbered by their line in the file, and rows without an id are named ``<file stem>-<line>``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such JSONL file: {path}")
    source = str(path)

    def numbered_rows() -> Iterable[tuple[int, Any]]:
        with path.open(encoding="utf-8") as file:
            for line_number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"not valid JSON: {exc}", source=source, row=line_number) from exc
                if not isinstance(row, dict):
                    raise DataError(f"expected a JSON object, got {type(row).__name__}", source=source,
                                    row=line_number)
                yield line_number, row

    return _problems(numbered_rows(), columns or ColumnMap(), source, check_answer, path.stem)


def load_hf_dataset(
    name_or_path: str,
    split: str = "train",
    columns: ColumnMap | None = None,
    check_answer: Callable[[str], None] | None = None,
    **load_kwargs: Any,
) -> list[Problem]:
    """Problems from one split of a Hugging Face dataset: a hub name, a builder such as ``"json"`` with
    ``data_files=...``, or a directory written by `save_to_disk`.

    `load_kwargs` go to `datasets.load_dataset` (or `datasets.load_from_disk` for a saved directory; a
    saved single `Dataset` has no splits, so `split` then only names it in errors and ids).
    Errors name the source as ``name_or_path[split]``, which also prefixes the ids of rows without one.
    """
    # `datasets` (with pyarrow and pandas) is slow to import; only this loader needs it.
    import datasets

    source = f"{name_or_path}[{split}]"
    directory = Path(name_or_path)
    if (directory / "state.json").is_file() or (directory / "dataset_dict.json").is_file():
        dataset = datasets.load_from_disk(str(directory), **load_kwargs)
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"{name_or_path} has no split {split!r}; it has {sorted(dataset)}")
            dataset = dataset[split]
    else:
        dataset = datasets.load_dataset(name_or_path, split=split, **load_kwargs)
    return problems_from_rows(dataset, columns or ColumnMap(), source, check_answer)
