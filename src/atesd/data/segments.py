"""Splitting a reference solution into reasoning segments, and the exposed prefix at exposure alpha.

The teacher prompt at exposure alpha shows the first floor(alpha * m) of the m segments of the reference
solution y*, then the final answer. Segments are character spans into the solution text, so an exposed
prefix is an exact slice of y* with its formatting (line breaks, indentation, LaTeX) untouched.

The final answer is always appended by the teacher prompt itself, so a solution that ends with its boxed
answer has that ending stripped first (`strip_final_boxed`); otherwise alpha = 1 would show the answer
twice and the boxed line would count as a reasoning segment.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any, Literal

from atesd.data.boxed import BOX_OPENING, matching_brace

SegmentUnit = Literal["line", "paragraph", "sentence", "token"]

# Math delimiters that may wrap a final boxed answer, longest first so that `$$` is not read as `$`.
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\[", "\\]"), ("\\(", "\\)"))
# What may follow the final boxed answer and still count as "the solution ends with it".
_TRAILER = re.compile(r"(?:\s|\.|\$|\\\]|\\\))*\Z")
# A sentence: from a non-space character up to `.`, `!` or `?` followed by whitespace or the end of the
# line, or up to the end of the line when no such mark comes.
_SENTENCE = re.compile(r"\S.*?(?:[.!?]+(?=\s|\Z)|\Z)", re.DOTALL)


def strip_final_boxed(solution: str) -> str:
    """The solution without its final `\\boxed{...}` (or `\\fbox{...}`) answer, when it ends with one;
    else the solution rstripped.

    "Ends with" ignores trailing whitespace, `.`, `$`, `\\]` and `\\)`. The boxed expression goes together
    with the `$`/`$$`/`\\[ \\]`/`\\( \\)` delimiters that wrap only it and the punctuation and whitespace
    left at the end, so a line holding only the boxed answer disappears. When the delimiters wrap more
    than the boxed answer (``$x = \\boxed{5}$``), the closing delimiter is kept so the math stays balanced.
    """
    text = solution.rstrip()
    # From the last opening backwards, so that the outer box of `\boxed{\boxed{5}}` is found too.
    for opening in reversed(list(BOX_OPENING.finditer(text))):
        close = matching_brace(text, opening.end() - 1)
        if close is not None and _TRAILER.match(text, close + 1):
            return _remove_boxed(text[: opening.start()], text[close + 1:])
    return text


def _remove_boxed(before: str, after: str) -> str:
    after = after.lstrip()
    kept_closers = ""
    for opener, closer in _DELIMITERS:
        if before.rstrip().endswith(opener) and after.startswith(closer):
            before = before.rstrip()[: -len(opener)]
            break
    else:
        kept_closers = "".join(re.findall(r"\$|\\\]|\\\)", after))
    # Trailing punctuation goes from the boxed answer's own line only, not from the line before it.
    head, newline, last_line = before.rpartition("\n")
    return (head + newline + last_line.rstrip(" \t.,;:")).rstrip() + kept_closers


def segment_spans(reasoning: str, unit: SegmentUnit, tokenizer: Any = None) -> list[tuple[int, int]]:
    """Character spans (start, end) of the segments of `reasoning`, in order.

    The first k segments are exactly ``reasoning[:spans[k-1][1]]``. `line`: non-empty lines (whitespace-only
    lines are not segments); `paragraph`: blocks separated by blank lines; `sentence`: sentences ending in
    `.`, `!` or `?` followed by whitespace or the end, a line break also ending a sentence; `token`: one
    span per token of `tokenizer` (a Hugging Face tokenizer). Line, paragraph and sentence spans exclude
    surrounding whitespace.
    """
    if unit == "line":
        return [(start, end) for start, end, _, _ in _lines(reasoning)]
    if unit == "paragraph":
        return _paragraph_spans(reasoning)
    if unit == "sentence":
        return [
            (start + match.start(), start + match.end())
            for start, _, line, _ in _lines(reasoning)
            for match in _SENTENCE.finditer(line)
        ]
    if unit == "token":
        if tokenizer is None:
            raise ValueError("segment unit 'token' needs a tokenizer, got tokenizer=None")
        return _token_spans(reasoning, tokenizer)
    raise ValueError(f"unknown segment unit {unit!r}; expected one of line, paragraph, sentence, token")


def _lines(text: str) -> list[tuple[int, int, str, int]]:
    """(start, end, stripped text, line number) of each non-blank line; start and end exclude the
    surrounding whitespace."""
    lines = []
    offset = 0
    for number, raw in enumerate(text.splitlines(keepends=True)):
        stripped = raw.strip()
        if stripped:
            start = offset + len(raw) - len(raw.lstrip())
            lines.append((start, start + len(stripped), stripped, number))
        offset += len(raw)
    return lines


def _paragraph_spans(text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    previous_number = None
    for start, end, _, number in _lines(text):
        # Consecutive non-blank lines form one paragraph; a skipped (blank) line starts a new one.
        if previous_number is not None and number == previous_number + 1:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
        previous_number = number
    return spans


def _token_spans(text: str, tokenizer: Any) -> list[tuple[int, int]]:
    if getattr(tokenizer, "is_fast", False):
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(start), int(end)) for start, end in encoding["offset_mapping"]]
    # Slow tokenizers have no offsets: decode each prefix of the ids and take how much of the text it
    # reproduces. Quadratic, but only reference solutions go through it.
    ids = tokenizer.encode(text, add_special_tokens=False)
    spans = []
    previous_end = 0
    for k in range(1, len(ids) + 1):
        decoded = tokenizer.decode(ids[:k], clean_up_tokenization_spaces=False)
        end = max(previous_end, _common_prefix_length(decoded, text))
        spans.append((previous_end, end))
        previous_end = end
    if spans:
        spans[-1] = (spans[-1][0], len(text))
    return spans


def _common_prefix_length(a: str, b: str) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def shown_segments(alpha: float, segments: int) -> int:
    """floor(alpha * m): how many of a reference's m segments the teacher sees at exposure `alpha`."""
    # The epsilon keeps e.g. alpha = 0.29, m = 100 at 29 segments although 0.29 * 100 = 28.999999999999996.
    return math.floor(alpha * segments + 1e-9)


def exposed_reference(solution: str, alpha: float, unit: SegmentUnit, tokenizer: Any = None) -> str:
    """The reference shown to the teacher at exposure `alpha`: the first floor(alpha * m) segments of the
    solution without its final boxed answer, as the exact prefix text (rstripped); '' when none.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) \
            or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a finite number in [0, 1], got alpha={alpha!r}")
    reasoning = strip_final_boxed(solution)
    spans = segment_spans(reasoning, unit, tokenizer)
    shown = shown_segments(alpha, len(spans))
    if shown == 0:
        return ""
    return reasoning[: spans[shown - 1][1]].rstrip()
