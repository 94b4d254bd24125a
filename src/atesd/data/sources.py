"""Where a run's problems come from: the training set with its held-out probe set, and the benchmarks.

Training data is the embedded task, reasoning-gym's procedural tasks (`atesd.data.reasoning_gym`, with settings of
their own), a named source (``champ``), a JSONL or Parquet file, or a `datasets` id/path (a hub dataset such as
``siyanzhao/Openthoughts_math_30k_opsd``, whose ``problem`` and ``solution`` columns the default column map reads,
the answer coming from the solution's last ``\boxed{}``). The probe set (docs/method.md#statistics) is a fixed set
of training problems held out of training, so probe_nll measures progress on problems the student has never been
trained on. Benchmarks are named (``aime24``, ``aime25``, ``hmmt25``, ``champ``, ``embedded``, and
``reasoning-gym``, held out of its training problems) or given as a JSONL path; a named benchmark is read from
``$ATESD_BENCHMARK_DIR/<name>.jsonl`` when that file exists (for machines with no hub access), and from its hub
dataset otherwise.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from atesd.data.champ import load_champ
from atesd.data.loaders import ColumnMap, load_hf_dataset, load_jsonl
from atesd.data.problem import DataError, Problem

# Sources that ship with a Python package, usable as training data and as benchmarks.
NAMED_SOURCES: dict[str, Callable[[], list[Problem]]] = {"champ": load_champ}


@dataclass(frozen=True)
class BenchmarkSource:
    hub_id: str
    split: str
    columns: ColumnMap


BENCHMARKS: dict[str, BenchmarkSource] = {
    "aime24": BenchmarkSource("HuggingFaceH4/aime_2024", "train", ColumnMap(id="id", solution=None)),
    "aime25": BenchmarkSource("yentinglin/aime_2025", "train", ColumnMap(id="id", solution=None)),
    "hmmt25": BenchmarkSource("MathArena/hmmt_feb_2025", "train", ColumnMap(id="problem_idx", solution=None)),
}


AnswerCheck = Callable[[str], None]
# Data file types that are not ours: named in an error, never taken for a hub id.
DATA_FILE_SUFFIXES = (".csv", ".tsv", ".json", ".txt", ".xlsx", ".xls", ".arrow", ".gz", ".zip")


def load_problems(source: str, split: str = "train", columns: ColumnMap | None = None,
                  skip_invalid: bool = False, check_answer: AnswerCheck | None = None) -> list[Problem]:
    """Problems from a named source, a JSONL or Parquet file, or a `datasets` id/path. `check_answer` may
    reject an answer by raising ValueError (the grader's `check_answer_parses`: an answer it could never
    match). With `skip_invalid`, rows that fail validation are left out (and counted in a warning)."""
    if source in NAMED_SOURCES:
        return NAMED_SOURCES[source]()
    suffix = Path(source).suffix.lower()
    if (Path(source).is_file() or suffix in DATA_FILE_SUFFIXES) and suffix not in (".jsonl", ".parquet"):
        # never handed to `datasets` as a hub id, which fails on the network with a misleading error
        raise DataError(f"cannot read '{suffix}' files: give a .jsonl or .parquet file, 'embedded', 'champ', or a "
                        "`datasets` id or directory", source=source)
    if source.endswith(".jsonl"):
        return load_jsonl(source, columns, check_answer=check_answer, skip_invalid=skip_invalid)
    if source.endswith(".parquet"):
        if not Path(source).is_file():
            raise FileNotFoundError(f"no such Parquet file: {source}")
        return load_hf_dataset("parquet", split="train", columns=columns, check_answer=check_answer,
                               skip_invalid=skip_invalid, source=source, data_files=source)
    return load_hf_dataset(source, split=split, columns=columns, check_answer=check_answer,
                           skip_invalid=skip_invalid)


def hold_out_probe(problems: list[Problem], probe_size: int, seed: int,
                   source: str | None = None) -> tuple[list[Problem], list[Problem]]:
    """Split off `probe_size` problems (chosen by `seed`) as the probe set: (train, probe); `source` names the
    data in the error."""
    if probe_size >= len(problems):
        raise DataError(f"data.probe_size {probe_size} leaves no training problems out of the {len(problems)} "
                        "it has: lower data.probe_size", source=source)
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    probe_ids = set(order[:probe_size])
    train = [p for i, p in enumerate(problems) if i not in probe_ids]
    probe = [p for i, p in enumerate(problems) if i in probe_ids]
    return train, probe


def benchmark_key(name_or_path: str) -> str:
    """The name a benchmark's result files carry: a named benchmark's name, a JSONL file's stem."""
    return Path(name_or_path).stem if name_or_path.endswith(".jsonl") else name_or_path


def check_benchmarks(names: list[str]) -> list[str]:
    """`names` when each is a known benchmark or a JSONL path and no two would write the same result files;
    else ValueError (the config checks ``eval.benchmarks`` with it, before any model is loaded)."""
    known = ["embedded", "reasoning-gym", *BENCHMARKS, *NAMED_SOURCES]
    seen: dict[str, str] = {}
    for name in names:
        if not name.endswith(".jsonl") and name not in known:
            raise ValueError(f"unknown benchmark '{name}': use one of {', '.join(known)} or a .jsonl path")
        if benchmark_key(name) in seen:
            raise ValueError(f"'{seen[benchmark_key(name)]}' and '{name}' would write the same result files "
                             f"(<label>-{benchmark_key(name)}.json): list each benchmark once, and rename one of "
                             "two JSONL files with the same name")
        seen[benchmark_key(name)] = name
    return names


def load_benchmark(name_or_path: str, check_answer: AnswerCheck | None = None) -> list[Problem]:
    """A benchmark by name or JSONL path (the embedded test split is handled by the caller); `check_answer`
    as in `load_problems`."""
    if name_or_path.endswith(".jsonl"):
        return load_jsonl(name_or_path, ColumnMap(solution=None), check_answer=check_answer)
    if name_or_path in NAMED_SOURCES:
        return NAMED_SOURCES[name_or_path]()
    check_benchmarks([name_or_path])
    local_dir = os.environ.get("ATESD_BENCHMARK_DIR")
    if local_dir and (Path(local_dir) / f"{name_or_path}.jsonl").is_file():
        return load_jsonl(Path(local_dir) / f"{name_or_path}.jsonl", ColumnMap(solution=None),
                          check_answer=check_answer)
    source = BENCHMARKS[name_or_path]
    return load_hf_dataset(source.hub_id, split=source.split, columns=source.columns,
                           check_answer=check_answer)
