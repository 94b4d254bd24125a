"""Procedural problems from `reasoning-gym` (``pip install 'atesd[reasoning-gym]'``), each with a worked solution as
the teacher's reference: unlimited real problems without a download (``data.train: reasoning-gym``, and the
benchmark ``reasoning-gym``, both read ``data.reasoning_gym``).

reasoning-gym generates each task's problems from a seed, with the task's own settings (``data.reasoning_gym
.settings``: the fields of its ``<Task>Config``, such as ``min_terms`` or ``max_digits``). Only tasks whose
solution atesd can write in steps are offered (`SOLUTIONS`):

- ``gsm_symbolic``: GSM-Symbolic templates; the reference is the template's own chain of thought
  (``metadata["answer_cot"]``) without its ``#### answer`` line (the teacher prompt gives the answer itself);
- ``chain_sum`` and ``products``: a chain of additions and subtractions, or of products; the reference computes it
  left to right, one operation a line (``15 - 43 = -28``, then ``-28 - 75 = -103``).

The training problems come from ``seed``, the benchmark's from ``seed + 1``, with every question that is also a
training question left out: small tasks (two one-digit terms) repeat questions, and a benchmark must be held out.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from atesd.data.problem import DataError, Problem

SOURCE = "reasoning-gym"


def gsm_solution(entry: dict[str, Any]) -> str:
    chain = entry["metadata"]["answer_cot"]
    return "\n".join(line for line in chain.splitlines() if not line.startswith("####")).strip()


def chain_solution(entry: dict[str, Any]) -> str:
    """The expression computed left to right, one operation a line; its terms are integers separated by
    `` + ``, `` - `` or `` * `` (reasoning-gym writes them so)."""
    tokens = entry["metadata"]["expression"].split()
    value, lines = int(tokens[0]), []
    for operator, operand in zip(tokens[1::2], tokens[2::2]):
        result = {"+": value + int(operand), "-": value - int(operand), "*": value * int(operand)}[operator]
        lines.append(f"{value} {operator} {operand} = {result}")
        value = result
    if str(value) != str(entry["answer"]):
        raise DataError(f"the computed value {value} differs from reasoning-gym's answer {entry['answer']}",
                        source=SOURCE)
    return "\n".join(lines)


SOLUTIONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "gsm_symbolic": gsm_solution,
    "chain_sum": chain_solution,
    "products": chain_solution,
}


def generate(task: str, settings: dict[str, Any], size: int, seed: int) -> list[dict[str, Any]]:
    """`size` entries of `task` from `seed`, as reasoning-gym makes them."""
    try:
        import reasoning_gym
    except ImportError as error:
        raise DataError("needs the reasoning-gym package: pip install 'atesd[reasoning-gym]'", source=SOURCE) from error
    try:
        dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **settings)
    except (TypeError, ValueError, AssertionError) as error:
        raise DataError(f"task {task!r} refuses its settings {settings}: {' '.join(str(error).split())}",
                        source=SOURCE) from None
    return [dataset[index] for index in range(size)]


def problems_of(entries: list[dict[str, Any]], task: str, prefix: str) -> list[Problem]:
    write = SOLUTIONS[task]
    return [Problem(id=f"{prefix}-{index}", question=entry["question"], solution=write(entry),
                    answer=str(entry["answer"]), meta={"source": SOURCE, "task": task})
            for index, entry in enumerate(entries)]


def training_problems(task: str, settings: dict[str, Any], size: int, seed: int) -> list[Problem]:
    """The training problems (with the probe set among them, split off by the caller)."""
    return problems_of(generate(task, settings, size, seed), task, f"{task}-train")


def benchmark_problems(task: str, settings: dict[str, Any], train_size: int, test_size: int,
                       seed: int) -> list[Problem]:
    """`test_size` problems from ``seed + 1`` whose questions are not among the training problems'; an error when
    the task has too few distinct questions to hold that many out."""
    seen = {normalized(entry["question"]) for entry in generate(task, settings, train_size, seed)}
    held_out: list[dict[str, Any]] = []
    drawn = 0
    while len(held_out) < test_size and drawn < 20 * test_size:
        batch = generate(task, settings, test_size, seed + 1 + drawn)
        drawn += test_size
        for entry in batch:
            key = normalized(entry["question"])
            if key not in seen:
                seen.add(key)
                held_out.append(entry)
    if len(held_out) < test_size:
        raise DataError(f"task {task!r} with settings {settings} gave only {len(held_out)} questions outside the "
                        f"{train_size} training problems: lower data.reasoning_gym.test_size or train_size, or "
                        "widen the task's settings", source=SOURCE)
    return problems_of(held_out[:test_size], task, f"{task}-test")


def normalized(question: str) -> str:
    return re.sub(r"\s+", " ", question.strip())
