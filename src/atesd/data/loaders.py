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
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from atesd.data.boxed import extract_boxed
from atesd.data.problem import DataError, Problem
from atesd.settings import Section

logger = logging.getLogger(__name__)
# The config section that holds the training data's column map, named in errors about missing columns.
COLUMNS_KEY = "data.columns"


class ColumnMap(Section):
    """Which column of a data row holds each part of a problem."""


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
    skip_invalid: bool = False,
) -> list[Problem]:
    """Validated problems from data rows; rows are numbered from 1 in errors.

    `check_answer` may reject an answer by raising ValueError (e.g. one the grader cannot parse). Rows
    without an id are named ``f"{id_prefix}-{row}"``, `id_prefix` defaulting to `source`. With
    `skip_invalid`, a row that fails validation is left out instead of raising; a warning counts them.
    """
    return _problems(enumerate(rows, start=1), columns, source, check_answer, id_prefix, skip_invalid)


def _problems(
    numbered_rows: Iterable[tuple[int, Any]],
    columns: ColumnMap,
    source: str,
    check_answer: Callable[[str], None] | None,
    id_prefix: str | None,
    skip_invalid: bool = False,
) -> list[Problem]:
    problems = []
    first_row_of_id: dict[str, int] = {}
    skipped: list[DataError] = []
    for row_number, row in numbered_rows:
        try:
            problem = _problem(row, row_number, columns, source, check_answer, id_prefix or source)
        except DataError as error:
            # A row that is not even an object, or lacks a column, is a wrong file or column map: never skipped.
            if not skip_invalid or error.field is None or (isinstance(row, Mapping) and error.field not in row):
                raise
            skipped.append(error)
            continue
        if problem.id in first_row_of_id:
            raise DataError(
                f"duplicate id {problem.id!r}, already used in row {first_row_of_id[problem.id]}",
                source=source, row=row_number, field=columns.id or "id",
            )
        first_row_of_id[problem.id] = row_number
        problems.append(problem)
    if skipped:
        logger.warning("%s: skipped %d invalid rows of %d (data.skip_invalid_rows); the first: %s", source,
                       len(skipped), len(skipped) + len(problems), skipped[0])
    if not problems:
        raise DataError("no valid rows" + (f" ({len(skipped)} skipped as invalid)" if skipped else ""),
                        source=source)
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
            raise error(f"missing (the row has columns {sorted(row)}){_set_column_hint(columns, column)}", column)
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
    solution = text(columns.solution) if columns.solution is not None and columns.solution in row else None

    answer_column: str | None
    if columns.answer is not None and columns.answer in row:
        answer_column = columns.answer
        answer = text(columns.answer, accept_int=True).strip()
    elif solution is not None:
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


def _set_column_hint(columns: ColumnMap, column: str) -> str:
    """'; set data.columns.<field>' for the column-map field that names `column`."""
    fields = [name for name, value in columns.model_dump().items() if value == column]
    return f"; set {COLUMNS_KEY}.{fields[0]} to the column that holds it" if fields else ""


def check_columns(present: Iterable[str], columns: ColumnMap, source: str) -> None:
    """Fail before reading rows when the column map names columns the data does not have.

    The question column is required; a solution or answer column is needed unless the other one is there.
    """
    present = sorted(present)
    have = set(present)

    def missing(field: str, column: str, why: str = "") -> DataError:
        return DataError(f"no column '{column}'{why}; the data has columns {present}: set {COLUMNS_KEY}.{field} "
                         "to the column that holds it", source=source)

    if columns.question not in have:
        raise missing("question", columns.question)
    has_solution = columns.solution is not None and columns.solution in have
    has_answer = columns.answer is not None and columns.answer in have
    if not has_solution and not has_answer:
        field = "solution" if columns.solution is not None else "answer"
        raise missing(field, getattr(columns, field) or field,
                      " (a problem needs a solution with a \\boxed{} answer, or an answer column)")


def load_jsonl(
    path: str | os.PathLike[str],
    columns: ColumnMap | None = None,
    check_answer: Callable[[str], None] | None = None,
    skip_invalid: bool = False,
) -> list[Problem]:
    """Problems from a JSONL file, one JSON object per line; blank lines are skipped.

    Rows are numbered by their line in the file, and rows without an id are named ``<file stem>-<line>``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such JSONL file: {path}")
    source = str(path)

    def numbered_rows() -> Iterable[tuple[int, Any]]:
        with path.open("rb") as file:  # decoded line by line, so that bad bytes are named by their line
            for line_number, raw in enumerate(file, start=1):
                try:
                    line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")  # a leading BOM is fine
                except UnicodeDecodeError as exc:
                    raise DataError(f"not valid UTF-8 (byte {exc.start + 1} of the line): save the file as UTF-8",
                                    source=source, row=line_number) from None
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

    return _problems(numbered_rows(), columns or ColumnMap(), source, check_answer, path.stem, skip_invalid)


def load_hf_dataset(
    name_or_path: str,
    split: str = "train",
    columns: ColumnMap | None = None,
    check_answer: Callable[[str], None] | None = None,
    skip_invalid: bool = False,
    source: str | None = None,
    **load_kwargs: Any,
) -> list[Problem]:
    """Problems from one split of a Hugging Face dataset: a hub name, a builder such as ``"json"`` with
    ``data_files=...``, or a directory written by `save_to_disk`.

    `load_kwargs` go to `datasets.load_dataset` (or `datasets.load_from_disk` for a saved directory; a
    saved single `Dataset` has no splits, so `split` then only names it in errors and ids).
    Errors name the source as `source` (default ``name_or_path[split]``), which also prefixes the ids of rows
    without one. The column map is checked against the dataset's columns before any row is read.
    """
    # `datasets` (with pyarrow and pandas) is slow to import; only this loader needs it.
    import datasets

    source = source or f"{name_or_path}[{split}]"
    columns = columns or ColumnMap()
    directory = Path(name_or_path)
    if (directory / "state.json").is_file() or (directory / "dataset_dict.json").is_file():
        dataset = datasets.load_from_disk(str(directory), **load_kwargs)
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise DataError(f"has no split {split!r}; it has {sorted(dataset)}: set data.train_split",
                                source=name_or_path)
            dataset = dataset[split]
    else:
        dataset = datasets.load_dataset(name_or_path, split=split, **load_kwargs)
    check_columns(dataset.column_names, columns, source)
    return problems_from_rows(dataset, columns, source, check_answer, skip_invalid=skip_invalid)
