"""Every relative link and #anchor in README.md, docs/*.md and results/*.md resolves (no model, fast).

Checked: Markdown links and images ``[text](target)`` outside code, and plain-text references to the
repository's own pages written from its root (``docs/method.md#evaluation``, ``results/LAB.md``).
Anchors follow GitHub's rule: the heading's text, lower-cased, with every character that is not a letter,
a digit, a space, ``-`` or ``_`` dropped, spaces turned into ``-``, and ``-1``, ``-2``, ... added to repeats.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "results").glob("*.md")])

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
# A page of this repository named from its root in running text: docs/method.md#evaluation, results/LAB.md.
PLAIN_REFERENCE = re.compile(r"(?<![\w./-])((?:docs|results)/[\w./-]*?\.md)(#[\w\-\u00b7\u0370-\u03ff]+)?")


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """The page's lines outside fenced code blocks, with their numbers."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text only
    text = "".join(ch for ch in text.strip().lower() if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(path):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def references(path: Path) -> list[tuple[int, str, Path]]:
    """(line, target as written, the folder it is relative to) of every link and plain-text page reference."""
    refs = []
    for number, line in prose_lines(path):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            refs.append((number, target, path.parent))
        for page, anchor in PLAIN_REFERENCE.findall(line):
            refs.append((number, page + anchor, ROOT))
    return list(dict.fromkeys(refs))


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken(path: Path) -> list[str]:
    problems = []
    for number, target, base in references(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (base / file_part).resolve() if file_part else path
        where = f"{shown(path)}:{number}: {target}"
        if not resolved.exists():
            problems.append(f"{where}: no such file or folder")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where}: no heading with anchor #{anchor} in {shown(resolved)}")
    return problems


def test_the_anchor_rule_is_githubs():
    assert slug("The longer budget: 300 updates (every method, 3 base models × 3 seeds)") == \
        "the-longer-budget-300-updates-every-method-3-base-models--3-seeds"
    assert slug("What the reward says about α") == "what-the-reward-says-about-α"
    assert slug("`diagnose.md`, `diagnose.csv`") == "diagnosemd-diagnosecsv"
    assert slug("2026-12-04: the GPU check on one H200") == "2026-12-04-the-gpu-check-on-one-h200"


def test_the_checker_finds_a_broken_link_and_a_broken_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](missing.md) [bad](#nowhere) `[code](span.md)`\n\n"
                    "```\n[code](block.md)\n```\ndocs/method.md#no-such-heading\n")
    assert [target for _, target, _ in references(page)] == ["#title", "missing.md", "#nowhere",
                                                             "docs/method.md#no-such-heading"]
    assert [problem.split(": ", 1)[1] for problem in broken(page)] == [
        "missing.md: no such file or folder", "#nowhere: no heading with anchor #nowhere in " + str(page),
        "docs/method.md#no-such-heading: no heading with anchor #no-such-heading in docs/method.md"]


@pytest.mark.parametrize("path", PAGES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(path):
    assert broken(path) == []
