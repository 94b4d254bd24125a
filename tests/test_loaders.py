"""Loading problems from JSONL files and Hugging Face datasets, and the errors bad rows raise."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import pytest

from atesd.data import ColumnMap, DataError, Problem, load_hf_dataset, load_jsonl, problems_from_rows

ROWS = [
    {"id": "add-1", "problem": "Compute 2+3.", "solution": "2+3=5\n\\boxed{5}", "answer": "5", "level": 1},
    {"id": "half-1", "problem": "Halve $1$.", "solution": "$1/2$\n$\\boxed{\\frac{1}{2}}$",
     "answer": "\\frac{1}{2}", "level": 2},
]


def write_jsonl(path: Path, lines: list[object | str]) -> Path:
    """Write rows as JSON lines; a str is written as it is (for blank and broken lines)."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
                    encoding="utf-8")
    return path


def only_integers(answer: str) -> None:
    if not answer.isdigit():
        raise ValueError("not a non-negative integer")


# --- JSONL --------------------------------------------------------------------------------------------------


def test_load_jsonl_good_file(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [ROWS[0], "", "  ", ROWS[1]])
    problems = load_jsonl(path)
    assert problems == [
        Problem(id="add-1", question="Compute 2+3.", solution="2+3=5\n\\boxed{5}", answer="5"),
        Problem(id="half-1", question="Halve $1$.", solution="$1/2$\n$\\boxed{\\frac{1}{2}}$",
                answer="\\frac{1}{2}"),
    ]
    assert [p.meta for p in problems] == [{"level": 1}, {"level": 2}]


def test_load_jsonl_accepts_integer_answers_and_ids_and_names_rows_without_id(tmp_path):
    path = write_jsonl(tmp_path / "ints.jsonl", [
        {"problem": "Compute 6*7.", "solution": "6*7=42", "answer": 42},
        "",
        {"id": 7, "problem": "Compute 1+1.", "solution": "1+1=2", "answer": " 2 "},
    ])
    problems = load_jsonl(path)
    assert [(p.id, p.answer) for p in problems] == [("ints-1", "42"), ("7", "2")]


def test_load_jsonl_benchmark_without_solution_uses_boxed_answer(tmp_path):
    path = write_jsonl(tmp_path / "aime.jsonl", [{"id": "aime-1", "problem": "Find $x$.", "answer": "204"}])
    assert load_jsonl(path) == [Problem(id="aime-1", question="Find $x$.", solution="\\boxed{204}", answer="204")]


def test_load_jsonl_missing_file():
    with pytest.raises(FileNotFoundError, match=re.escape("no such JSONL file: /nonexistent/train.jsonl")):
        load_jsonl("/nonexistent/train.jsonl")


def test_load_jsonl_row_missing_problem(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], {"id": "x", "solution": "\\boxed{1}", "answer": "1"}])
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert str(info.value) == (
        f"{path}, row 2, field 'problem': missing (the row has columns ['answer', 'id', 'solution']); "
        "set data.columns.question to the column that holds it"
    )
    assert (info.value.source, info.value.row, info.value.field) == (str(path), 2, "problem")


def test_load_jsonl_empty_answer(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["", {**ROWS[0], "answer": "  "}])
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert str(info.value) == f"{path}, row 2, field 'answer': is empty"


def test_load_jsonl_null_solution(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{**ROWS[0], "solution": None}])
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert str(info.value) == f"{path}, row 1, field 'solution': expected a string, got NoneType: None"


def test_load_jsonl_wrong_type_for_problem(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{**ROWS[0], "problem": ["Compute", "2+3."]}])
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert str(info.value) == (
        f"{path}, row 1, field 'problem': expected a string, got list: ['Compute', '2+3.']"
    )


def test_load_jsonl_float_answer_is_a_type_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{**ROWS[0], "answer": 0.5}])
    with pytest.raises(DataError, match=re.escape("row 1, field 'answer': expected a string, got float: 0.5")):
        load_jsonl(path)


def test_load_jsonl_non_json_line_names_its_line_number(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], "", '{"id": "b", "problem": '])
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert (info.value.source, info.value.row, info.value.field) == (str(path), 3, None)
    assert str(info.value).startswith(f"{path}, row 3: not valid JSON: ")


def test_load_jsonl_bytes_that_are_not_utf8_name_their_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b'\n{"id": "x", "problem": "Caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl, row 2: not valid UTF-8 \(byte 28 of the line\)"):
        load_jsonl(path)


def test_load_jsonl_accepts_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\n")
    assert [p.id for p in load_jsonl(path)] == ["add-1"]


def test_load_jsonl_line_that_is_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], ["Compute 2+3.", "5"]])
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert str(info.value) == f"{path}, row 2: expected a JSON object, got list"


def test_load_jsonl_answer_from_solution_boxed_when_no_answer_column(tmp_path):
    rows = [{key: value for key, value in row.items() if key != "answer"} for row in ROWS]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    assert [p.answer for p in load_jsonl(path)] == ["5", "\\frac{1}{2}"]
    # The same when the column exists but the column map says not to use it.
    path = write_jsonl(tmp_path / "e.jsonl", [{**ROWS[0], "answer": "ignored"}])
    assert load_jsonl(path, ColumnMap(answer=None))[0].answer == "5"


def test_load_jsonl_solution_without_boxed_when_answer_must_come_from_it(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "problem": "Compute 2+3.", "solution": "It is 5."}])
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert str(info.value) == (
        f"{path}, row 1, field 'solution': has no \\boxed{{}} final answer, and the row has no answer column "
        "to take it from"
    )


def test_load_jsonl_row_with_neither_answer_nor_solution(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "problem": "Compute 2+3."}])
    with pytest.raises(DataError, match=re.escape("row 1, field 'answer': missing: a row needs an answer")):
        load_jsonl(path)


def test_load_jsonl_check_answer_rejects(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(DataError) as info:
        load_jsonl(path, check_answer=only_integers)
    assert str(info.value) == (
        f"{path}, row 2, field 'answer': answer '\\\\frac{{1}}{{2}}' rejected: not a non-negative integer"
    )
    assert (info.value.source, info.value.row, info.value.field) == (str(path), 2, "answer")


def test_load_jsonl_check_answer_on_answer_from_solution_names_solution_column(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "problem": "Halve 1.", "solution": "\\boxed{0.5}"}])
    with pytest.raises(DataError) as info:
        load_jsonl(path, check_answer=only_integers)
    assert (info.value.row, info.value.field) == (1, "solution")


def test_load_jsonl_duplicate_ids_name_both_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], ROWS[1], "", {**ROWS[1], "problem": "Again."}])
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert str(info.value) == f"{path}, row 4, field 'id': duplicate id 'half-1', already used in row 2"


def test_load_jsonl_custom_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"uid": "q1", "question": "Compute 2+3.", "target": "5"}])
    columns = ColumnMap(id="uid", question="question", solution=None, answer="target")
    assert load_jsonl(path, columns) == [
        Problem(id="q1", question="Compute 2+3.", solution="\\boxed{5}", answer="5"),
    ]


# --- rows and column maps -----------------------------------------------------------------------------------


def test_problems_from_rows_names_rows_from_one_and_uses_the_source_as_id_prefix():
    rows = [{"problem": "Compute 2+3.", "answer": "5"}, {"problem": "Compute 6*7.", "answer": "42"}]
    problems = problems_from_rows(rows, ColumnMap(id=None), "mini")
    assert [p.id for p in problems] == ["mini-1", "mini-2"]
    with pytest.raises(DataError, match=re.escape("mini, row 2: expected an object with named columns, got str")):
        problems_from_rows([rows[0], "Compute 6*7."], ColumnMap(), "mini")


def test_column_map_forbids_unknown_fields():
    with pytest.raises(ValueError, match="extra"):
        ColumnMap(problem="question")


# --- Hugging Face datasets ----------------------------------------------------------------------------------


def test_load_hf_dataset_from_save_to_disk(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    problems = load_hf_dataset(str(tmp_path / "saved"))
    assert problems == [
        Problem(id="add-1", question="Compute 2+3.", solution="2+3=5\n\\boxed{5}", answer="5"),
        Problem(id="half-1", question="Halve $1$.", solution="$1/2$\n$\\boxed{\\frac{1}{2}}$",
                answer="\\frac{1}{2}"),
    ]
    assert problems[1].meta == {"level": 2}


def test_load_hf_dataset_dict_from_save_to_disk_picks_the_split(tmp_path):
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:1]),
                                   "test": datasets.Dataset.from_list(ROWS[1:])})
    splits.save_to_disk(str(tmp_path / "saved"))
    assert [p.id for p in load_hf_dataset(str(tmp_path / "saved"), split="test")] == ["half-1"]
    with pytest.raises(ValueError, match=re.escape("has no split 'validation'; it has ['test', 'train']")):
        load_hf_dataset(str(tmp_path / "saved"), split="validation")


def test_load_hf_dataset_from_local_json_via_load_dataset(tmp_path):
    path = write_jsonl(tmp_path / "bench.jsonl", [
        {"id": "b-1", "problem": "Find $x$.", "answer": "204"},
        {"id": "b-2", "problem": "Find $y$.", "answer": "17"},
    ])
    problems = load_hf_dataset("json", data_files=str(path), cache_dir=str(tmp_path / "cache"))
    assert problems == [
        Problem(id="b-1", question="Find $x$.", solution="\\boxed{204}", answer="204"),
        Problem(id="b-2", question="Find $y$.", solution="\\boxed{17}", answer="17"),
    ]


def test_load_hf_dataset_errors_name_dataset_and_split(tmp_path):
    datasets.Dataset.from_list([{"id": "a", "problem": "Find $x$.", "answer": ""}]).save_to_disk(
        str(tmp_path / "saved"))
    with pytest.raises(DataError) as info:
        load_hf_dataset(str(tmp_path / "saved"))
    assert str(info.value) == f"{tmp_path / 'saved'}[train], row 1, field 'answer': is empty"
