"""The embedded task: generated chain-of-thought arithmetic (docs/method.md#embedded-testbed).

A question such as ``Compute 17+25*3-8.`` is solved by the student in its own format, one line per
operation, in the usual order (multiplications first, then left to right), ending with the boxed answer::

    25*3=75
    17+75=92
    92-8=84
    \\boxed{84}

That text is kept in ``problem.meta["student_solution"]``: it is what the warm start teaches the model to write.
The *reference* solution (``problem.solution``, what a teacher prompt exposes and SFT imitates) is written in
the style of ``reference_style``:

- ``values`` (the embedded default): every step's value in order, without its operation (``= 8`` /
  ``= 6`` / ``= 13``), in another notation than the student's (no operands, spaces around ``=``). A teacher
  reading it finds the value a step should give by the value that precedes it, and finds nothing once the
  student's chain has left the true values; copying it is not the student's format.
- ``concise``: several operations per line, only the value at the end of each line (the intermediate values
  between are skipped), another notation (spaces around ``=``; products of a line computed together)::

      17+25*3-8 = 84

  for a longer one, ``3+5-2+7-1+4-6`` → ``3+5-2 = 6`` / ``6+7-1+4 = 16`` / ``16-6 = 10``. The values it
  shows are a subset of the student's running totals.
- ``steps``: the reference is the student's own one-line-per-operation solution (the old task).

Which style the default takes, and why, is in docs/method.md#embedded-testbed.

Problems are generated from a seed, so every split is reproducible, and the train, probe and test splits are
disjoint by question text. The number of operations is the difficulty knob; it is kept in
``problem.meta["bucket"]`` so that evaluations can report accuracy per difficulty.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from atesd.data.problem import DataError, Problem
from atesd.settings import Section

OPERATORS = "+-*"
REFERENCE_STYLES = ("concise", "steps", "values")


class EmbeddedTaskConfig(Section):
    """The settings of the generated arithmetic task (the config's ``data.task``)."""


    digits: int = Field(1, ge=1, description="Digits per operand.")
    min_ops: int = Field(2, ge=1, description="Fewest operations per problem.")
    max_ops: int = Field(6, ge=1, description="Most operations per problem (difficulty buckets ops=k).")
    operators: str = Field("+-", description="Operators drawn from (a subset of +-*).")
    reference_style: Literal["concise", "steps", "values"] = Field(
        "values", description="Style of the reference solutions: 'values' (each step's value without its "
        "operation; not the student's own format), 'concise' (several operations per line, intermediate values "
        "skipped) or 'steps' (the student's own format, one line per operation: imitating it is the whole "
        "solution).")
    train_size: int = Field(4000, ge=1, le=10_000_000)
    test_size: int = Field(200, ge=1, le=1_000_000)
    seed: int = Field(1234, description="Seeds the problem generator (independent of run.seed).")

    @model_validator(mode="after")
    def _task_can_be_generated(self) -> EmbeddedTaskConfig:
        if self.min_ops > self.max_ops:
            raise ValueError(f"min_ops ({self.min_ops}) is above max_ops ({self.max_ops})")
        unknown = sorted(set(self.operators) - set(OPERATORS))
        if not self.operators or unknown:
            raise ValueError(f"operators must be a non-empty subset of '{OPERATORS}', got '{self.operators}'")
        return self


@dataclass(frozen=True)
class ArithmeticSpec:
    """How to generate problems: operand size, number of operations and which operators appear."""

    digits: int = 2
    min_ops: int = 2
    max_ops: int = 4
    operators: str = OPERATORS
    reference_style: str = "concise"

    def __post_init__(self) -> None:
        if self.reference_style not in REFERENCE_STYLES:
            raise ValueError(f"reference_style must be one of {REFERENCE_STYLES}, got '{self.reference_style}'")
        if self.digits < 1:
            raise ValueError(f"digits must be >= 1, got {self.digits}")
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"need 1 <= min_ops <= max_ops, got min_ops={self.min_ops}, max_ops={self.max_ops}")
        unknown = set(self.operators) - set(OPERATORS)
        if not self.operators or unknown:
            raise ValueError(f"operators must be a non-empty subset of '{OPERATORS}', got '{self.operators}'")


def _apply(left: int, op: str, right: int) -> int:
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    return left * right


def solve_steps(operands: list[int], ops: list[str], slip: tuple[int, int] | None = None) -> tuple[list[str], int]:
    """The solution lines of an expression, multiplications first, then left to right. With ``slip=(k, d)`` line
    k's value is off by d and every later line computes on from the slipped value, as a chain that made one
    mistake and carried it on would."""
    values, pending = list(operands), list(ops)
    lines: list[str] = []
    for precedence in ("*", "+-"):
        i = 0
        while i < len(pending):
            if pending[i] in precedence:
                result = _apply(values[i], pending[i], values[i + 1])
                if slip is not None and len(lines) == slip[0]:
                    result += slip[1]
                lines.append(f"{values[i]}{pending[i]}{values[i + 1]}={result}")
                values[i : i + 2] = [result]
                del pending[i]
            else:
                i += 1
    return lines, values[0]


def concise_lines(operands: list[int], ops: list[str], question: str) -> list[str]:
    """A concise reference: the products folded into their terms, then the additions and subtractions in
    lines of 2 to 4 operations (chosen from a generator seeded by the question, so the problem draws of a
    split do not depend on the style), each showing only its result: ``3+5-2 = 6`` / ``6+7-1+4 = 16``."""
    rng = random.Random(f"concise:{question}")
    # Terms of the sum: each maximal product is one term (the reference writes it inline, not as a step).
    terms, signs, current, text = [], ["+"], operands[0], str(operands[0])
    for op, value in zip(ops, operands[1:]):
        if op == "*":
            current, text = current * value, f"{text}*{value}"
        else:
            terms.append((current, text))
            signs.append(op)
            current, text = value, str(value)
    terms.append((current, text))
    lines, total, index = [], None, 0
    while index < len(terms):
        size = rng.randint(2, 4) if total is not None else rng.randint(3, 5)  # terms on this line
        chunk = list(zip(signs[index : index + size], terms[index : index + size]))
        index += len(chunk)
        if total is None:
            (_, (value, text)), rest = chunk[0], chunk[1:]
            left, total = text, value
        else:
            left, rest = str(total), chunk
        for sign, (value, text) in rest:
            left += f"{sign}{text}"
            total = total + value if sign == "+" else total - value
        lines.append(f"{left} = {total}")
    return lines


def parse_expression(question: str) -> tuple[list[int], list[str]]:
    """The operands and operators of a generated question (``Compute 17+25*3-8.``)."""
    tokens = re.findall(r"\d+|[-+*]", question)
    return [int(t) for t in tokens[::2]], tokens[1::2]


def make_problem(rng: random.Random, num_ops: int, spec: ArithmeticSpec, problem_id: str) -> Problem:
    """One random problem with `num_ops` operations."""
    high = 10**spec.digits - 1
    operands = [rng.randint(1, high) for _ in range(num_ops + 1)]
    ops = [rng.choice(spec.operators) for _ in range(num_ops)]
    expression = "".join(f"{a}{op}" for a, op in zip(operands, ops)) + str(operands[-1])
    question = f"Compute {expression}."
    lines, answer = solve_steps(operands, ops)
    own = "\n".join(lines) + f"\n\\boxed{{{answer}}}"
    if spec.reference_style == "steps":
        reference = own
    else:
        body = (concise_lines(operands, ops, question) if spec.reference_style == "concise"
                else [f"= {line.rsplit('=', 1)[1]}" for line in lines])
        reference = "\n".join(body) + f"\n\\boxed{{{answer}}}"
    return Problem(
        id=problem_id,
        question=question,
        solution=reference,
        answer=str(answer),
        meta={"bucket": f"ops={num_ops}", "num_ops": num_ops, "student_solution": own},
    )


def make_splits(spec: ArithmeticSpec, sizes: dict[str, int], seed: int) -> dict[str, list[Problem]]:
    """Disjoint splits (e.g. ``{"train": 4000, "probe": 32, "test": 200}``), balanced over the operation counts.

    One generator draws all splits in a fixed order and rejects repeated questions, so that no question
    appears in two splits and a given seed always yields the same problems.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[Problem]] = {}
    num_ops_choices = list(range(spec.min_ops, spec.max_ops + 1))
    for split, size in sizes.items():
        problems: list[Problem] = []
        attempts = 0
        while len(problems) < size:
            attempts += 1
            if attempts > 100 * size + 1000:
                raise DataError(f"cannot draw {size} distinct '{split}' problems from {spec}: widen "
                                "data.task.digits or its operations, or ask for fewer problems", source="data.task")
            num_ops = num_ops_choices[len(problems) % len(num_ops_choices)]
            problem = make_problem(rng, num_ops, spec, f"{split}-{len(problems)}")
            if problem.question in seen:
                continue
            seen.add(problem.question)
            problems.append(problem)
        splits[split] = problems
    return splits


# The probe problems drawn before the test split, whatever data.probe_size is (the default probe size): the test
# and health problems then never depend on the probe size, and the default's are those of before this rule.
PROBE_DRAWN_FIRST = 32


def embedded_splits(task: EmbeddedTaskConfig, probe_size: int, health_size: int = 0) -> dict[str, list[Problem]]:
    """Train, probe and test problems of the embedded task (disjoint, from the task seed), and with `health_size`
    the held-out problems of the base model's health check, drawn after the others (which it leaves unchanged).

    The test split does not depend on `probe_size`: `PROBE_DRAWN_FIRST` probe problems are always drawn before
    it, the probe is the first `probe_size` of them, and a larger probe continues after the test and health
    problems."""
    spec = ArithmeticSpec(digits=task.digits, min_ops=task.min_ops, max_ops=task.max_ops, operators=task.operators,
                          reference_style=task.reference_style)
    sizes = {"train": task.train_size, "probe": PROBE_DRAWN_FIRST, "test": task.test_size}
    if health_size:
        sizes["health"] = health_size
    sizes["probe-more"] = max(0, probe_size - PROBE_DRAWN_FIRST)
    splits = make_splits(spec, sizes, seed=task.seed)
    splits["probe"] = splits["probe"][:probe_size] + splits.pop("probe-more")
    return splits
