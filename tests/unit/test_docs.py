"""The documentation holds together: every relative link in README.md and docs/*.md points at a file (and
an anchor) that exists, and the README stays a front door (at most 250 lines)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

pytestmark = pytest.mark.disable_socket

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 250

#: `[text](target)` and `![alt](target)`; the target ends at the first space (a title may follow) or `)`.
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str, *, inline_code: bool = False) -> list[str]:
    """The lines outside fenced code blocks; inline code removed unless asked for (links in code are
    not links, but a heading's code is part of its anchor)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line if inline_code else INLINE_CODE.sub("", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(path.read_text(encoding="utf-8"), inline_code=True):
        heading = HEADING.match(line)
        if not heading:
            continue
        base = slug(heading.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    links = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if not EXTERNAL.match(target):
                links.append(target)
    return links


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and unquote(anchor).lower() not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return broken


@pytest.mark.parametrize("path", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_and_anchor_that_exist(path: Path) -> None:
    # Given a document of the repository
    # When its relative links are resolved against its own directory
    broken = broken_links(path)
    # Then each names a file that exists, and a heading of it when it names an anchor
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {broken}"


def test_the_readme_is_a_front_door() -> None:
    # Given the README
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    # Then it is at most 250 lines (the rest belongs in docs/)
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines, at most {README_MAX_LINES}"


def test_the_checks_find_a_broken_link_and_a_missing_anchor(tmp_path: Path) -> None:
    # Given a document with a good link, a link to a missing file and one to a missing anchor
    (tmp_path / "other.md").write_text(
        "# A `Title`: with punctuation\n\n## Twice\n\n## Twice\n", encoding="utf-8"
    )
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-title-with-punctuation) [ok](other.md#twice-1) [ok](#here) [web](https://example.com)\n"
        "[gone](missing.md) [nowhere](other.md#nowhere)\n`[in code](missing-too.md)`\n"
        "```\n[in a fence](missing-three.md)\n```\n# Here\n",
        encoding="utf-8",
    )
    # When its links are checked
    broken = broken_links(page)
    # Then exactly the two bad ones are reported
    assert broken == ["missing.md: no such file", "other.md#nowhere: no heading #nowhere in other.md"]
