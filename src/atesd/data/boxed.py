"""Finding boxed answers: the ``\\boxed{...}`` / ``\\fbox{...}`` openings, their matching braces, and the last
boxed answer of a text.

Grading (which reads the last boxed answer of a completion) and segmenting (which strips the final boxed
answer from a reference solution) share these, so an answer read from a solution is exactly the one stripped.
"""

from __future__ import annotations

import re

# `\boxed {x}` (with a space) is valid LaTeX and models do write it, so the space is allowed.
BOX_OPENING = re.compile(r"\\(?:boxed|fbox)\s*\{")


def matching_brace(text: str, open_index: int) -> int | None:
    """Index of the `}` closing the `{` at `open_index`, or None if it is never closed.

    Backslash escapes (`\\{`, `\\}`, `\\\\`) are skipped: an escaped brace is text (a set in LaTeX), not grouping.
    """
    depth = 0
    i = open_index
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Return the content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, braces matched.

    Nested braces are kept (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``). Returns None when there is no
    boxed answer or when the last one is never closed (a completion cut off by the token limit).
    """
    openings = list(BOX_OPENING.finditer(text))
    if not openings:
        return None
    close = matching_brace(text, openings[-1].end() - 1)
    return None if close is None else text[openings[-1].end() : close]
