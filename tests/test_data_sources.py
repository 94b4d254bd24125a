"""Training data and benchmark sources: Parquet and `datasets` with the OPSD dataset's columns, column-map
errors, skipping invalid rows, the benchmark registry, and the CHAMP problems with their steps as segments."""

from __future__ import annotations

import re
from pathlib import Path

import datasets
import pytest

from atesd.data import DataError, Problem
from atesd.data.champ import champ_answer, load_champ
from atesd.data.segments import exposed_reference, segment_spans, strip_final_boxed
from atesd.data.sources import hold_out_probe, load_benchmark, load_problems

# The columns of siyanzhao/Openthoughts_math_30k_opsd: a problem and a solution ending with its boxed answer.
OPSD_ROWS = [
    {"problem": "Compute $2+3$.", "solution": "We add.\n$2+3=5$.\nSo the answer is $\\boxed{5}$."},
    {"problem": "Halve $1$.", "solution": "Half of one is a fraction.\n$\\boxed{\\frac{1}{2}}$"},
]


def test_parquet_with_the_opsd_columns_takes_the_answer_from_the_last_boxed(tmp_path):
    path = tmp_path / "opsd.parquet"
    datasets.Dataset.from_list(OPSD_ROWS).to_parquet(str(path))
    problems = load_problems(str(path))
    assert [(p.id, p.answer) for p in problems] == [(f"{path}-1", "5"), (f"{path}-2", "\\frac{1}{2}")]
    assert problems[0].question == "Compute $2+3$." and problems[0].solution == OPSD_ROWS[0]["solution"]


def test_saved_dataset_with_the_opsd_columns_loads_with_the_default_mapping(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(OPSD_ROWS)}).save_to_disk(str(tmp_path / "opsd"))
    problems = load_problems(str(tmp_path / "opsd"), split="train")
    assert [p.answer for p in problems] == ["5", "\\frac{1}{2}"]


def test_wrong_question_column_names_the_columns_present_and_the_key_to_set(tmp_path):
    path = tmp_path / "renamed.parquet"
    datasets.Dataset.from_list([{"question": r["problem"], "solution": r["solution"]} for r in OPSD_ROWS]
                               ).to_parquet(str(path))
    with pytest.raises(DataError) as info:
        load_problems(str(path))
    message = str(info.value)
    assert str(path) in message and "no column 'problem'" in message
    assert "['question', 'solution']" in message and "data.columns.question" in message


def test_no_solution_and_no_answer_column_names_the_key_to_set(tmp_path):
    path = tmp_path / "bare.parquet"
    datasets.Dataset.from_list([{"problem": "Compute 1+1.", "reasoning": "1+1=2, \\boxed{2}"}]).to_parquet(str(path))
    with pytest.raises(DataError, match=r"no column 'solution'.*\['problem', 'reasoning'\].*data\.columns\.solution"):
        load_problems(str(path))


def test_invalid_rows_stop_the_load_unless_skipped(tmp_path):
    path = tmp_path / "mixed.parquet"
    rows = [*OPSD_ROWS, {"problem": "No answer here.", "solution": "I give up."}]
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    with pytest.raises(DataError, match=r"row 3, field 'solution': has no \\boxed\{\} final answer"):
        load_problems(str(path))
    assert [p.answer for p in load_problems(str(path), skip_invalid=True)] == ["5", "\\frac{1}{2}"]


@pytest.mark.parametrize("name", ["train.csv", "train.json", "data.TSV"])
def test_a_data_file_of_another_kind_is_named_not_taken_for_a_hub_id(tmp_path, name):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / name}: cannot read '{Path(name).suffix.lower()}'")):
        load_problems(str(tmp_path / name))  # missing: still never sent to the hub
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(DataError, match="cannot read '.md' files"):
        load_problems(str(tmp_path / "notes.md"))


def test_a_probe_set_as_large_as_the_data_names_the_setting():
    problems = [Problem(id=str(i), question="q", solution="s", answer="1") for i in range(3)]
    with pytest.raises(DataError, match=r"data/x.jsonl: data.probe_size 3 leaves no training problems out of "
                                        r"the 3 it has: lower data.probe_size"):
        hold_out_probe(problems, 3, seed=0, source="data/x.jsonl")


def test_missing_parquet_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such Parquet file: .*absent.parquet"):
        load_problems(str(tmp_path / "absent.parquet"))


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        load_benchmark("aime2024")
    assert "unknown benchmark 'aime2024'" in str(info.value)
    for known in ("embedded", "aime24", "aime25", "hmmt25", "champ", ".jsonl"):
        assert known in str(info.value)


# --- CHAMP --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "gold"), [
    ("239", "239"),
    ("@@C(10, 5)@@, or equivalently @@252@@", "252"),
    ("The limit exists and is equal to @@2/3@@", "2/3"),
    ("@@2^floor(n/2)*floor(n/2)!@@", "2^floor(n/2)*floor(n/2)!"),
    ("100 (i.e., all numbers)", "100"),
    ("No", "No"),
])
def test_champ_answer(raw, gold):
    assert champ_answer(raw) == gold


@pytest.fixture(scope="module")
def champ():
    return load_champ()


def test_champ_has_270_problems_with_categories_as_buckets(champ):
    assert len(champ) == 270 and len({p.id for p in champ}) == 270
    assert {p.meta["bucket"] for p in champ} == {"Combinatorics", "Inequality", "Number-Theory", "Polynomial",
                                                 "Sequence"}
    first = next(p for p in champ if p.id == "P_Combinatorics_1")
    assert first.answer == "239" and first.question.startswith("Let a string consist of digit 1, 2, 3.")


def test_champ_steps_are_the_segments(champ):
    import champ_dataset

    raw = champ_dataset.load("v0").problems
    for problem in champ:
        steps = [step.text.strip() for step in raw[problem.id].solution.steps]
        reasoning = strip_final_boxed(problem.solution)
        assert [reasoning[a:b] for a, b in segment_spans(reasoning, "line")] == steps
        assert exposed_reference(problem.solution, 1.0, "line") == "\n".join(steps)
        assert re.search(r"\\boxed\{(.*)\}", problem.solution).group(1) == problem.answer


def test_champ_loads_as_a_training_source_and_a_benchmark(champ):
    assert load_problems("champ") == champ
    assert load_benchmark("champ") == champ
