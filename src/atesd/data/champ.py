"""The CHAMP problems (Concept and Hint-Augmented Math Problems) from the PyPI package `champ-dataset`.

270 competition-style problems, each with a reference solution written as a list of steps and a final
answer. A solution becomes one line per step, so the default segment unit (`line`) exposes the teacher to
whole CHAMP steps, followed by a last line holding only the boxed answer (which segmenting strips, see
`atesd.data.segments`). Install with ``pip install 'atesd[champ]'``; it ships its data, so no download.

CHAMP's answers are free text with math marked by ``@@...@@`` ("@@C(10, 5)@@, or equivalently @@252@@",
"The limit exists and is equal to @@2/3@@", "No"). The gold answer is the marked math that the text says is
equivalent to the rest (the last marked span after "equivalent"), else the first marked span, else a leading
number, else the whole text (answers such as "No" then only match exactly).
"""

from __future__ import annotations

import re

from atesd.data.problem import Problem

SOURCE = "champ"
_MARKED = re.compile(r"@@(.*?)@@")
_LEADING_NUMBER = re.compile(r"^(-?\d+(?:\.\d+)?)(?:\s|$)")


def champ_answer(raw_answer: str) -> str:
    """The gold answer of a CHAMP raw answer text (see the module docstring)."""
    marked = _MARKED.findall(raw_answer)
    if marked:
        return (marked[-1] if "equivalent" in raw_answer else marked[0]).strip()
    plain = raw_answer.strip()
    number = _LEADING_NUMBER.match(plain)
    return number.group(1) if number else plain


def load_champ(version: str = "v0") -> list[Problem]:
    """All CHAMP problems, in the package's order, with their category in ``meta["bucket"]``."""
    try:
        import champ_dataset
    except ImportError as error:
        raise ImportError("the 'champ' source needs the champ-dataset package: pip install 'atesd[champ]'") from error
    dataset = champ_dataset.load(version)
    problems = []
    for identifier, item in dataset.problems.items():
        answer = champ_answer(item.raw_answer)
        steps = [step.text.strip() for step in item.solution.steps if step.text.strip()]
        solution = "\n".join([*steps, f"$\\boxed{{{answer}}}$"])
        problems.append(Problem(id=identifier, question=item.text, solution=solution, answer=answer,
                                meta={"bucket": item.category}))
    return problems
