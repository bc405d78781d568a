"""The README and the pages under docs/: every relative link resolves, and the README stays short.

A link is Markdown's ``[text](target)`` or ``![alt](target)``, outside fenced code blocks and inline code.
Links to http(s), mailto and other schemes are not followed. A relative target must name an existing file
or folder (relative to the page that links it); a ``#anchor`` into a Markdown file, or into the page
itself, must name one of its headings, slugged as GitHub does (lowercase, punctuation other than hyphens
and spaces removed, spaces turned into hyphens, ``-1``, ``-2``, ... for repeated headings).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOC_PAGES = sorted((ROOT / "docs").glob("*.md"))
#: the README is a few screens; everything else lives in docs/ (issue #23).
README_MAX_BYTES = 15_000

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]+`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(markdown: str) -> list[str]:
    """The lines of ``markdown`` outside fenced code blocks (fenced lines become empty, keeping line numbers)."""
    lines, in_fence = [], False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            lines.append("")
        else:
            lines.append("" if in_fence else line)
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading's text: inline markup dropped, lowercase, punctuation except
    hyphens and spaces (and underscores, which are word characters) removed, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").replace("*", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def heading_anchors(markdown: str) -> set[str]:
    """Every anchor a page's headings define; a repeated slug gets ``-1``, ``-2``, ... as on GitHub."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(markdown):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        if slug in seen:
            seen[slug] += 1
            anchors.add(f"{slug}-{seen[slug]}")
        else:
            seen[slug] = 0
            anchors.add(slug)
    return anchors


def relative_links(markdown: str) -> list[tuple[int, str]]:
    """(line number, target) of every link and image outside code whose target has no URL scheme."""
    prose = "\n".join(prose_lines(markdown))
    prose = INLINE_CODE.sub(lambda code: "\n" * code.group(0).count("\n"), prose)  # keep line numbers
    links = []
    for match in LINK.finditer(prose):
        target = match.group(1)
        if not SCHEME.match(target):
            links.append((prose.count("\n", 0, match.start()) + 1, target))
    return links


def broken_links(page: Path) -> list[str]:
    """One message per link of ``page`` whose file is missing or whose #anchor names no heading there."""
    problems = []
    for line, target in relative_links(page.read_text(encoding="utf-8")):
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / unquote(path_part)).resolve() if path_part else page
        where = f"{page.name}:{line}: link {target!r}"
        if not linked.exists():
            problems.append(f"{where}: no file {linked}")
        elif anchor and linked.suffix == ".md":
            anchors = heading_anchors(linked.read_text(encoding="utf-8"))
            if unquote(anchor).lower() not in anchors:
                problems.append(f"{where}: {linked.name} has no heading #{anchor} (its anchors: {sorted(anchors)})")
    return problems


def test_readme_is_at_most_15000_bytes():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes, more than {README_MAX_BYTES:,}: move detail to docs/"


@pytest.mark.parametrize("page", [README, *DOC_PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    assert broken_links(page) == []


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for _, t in relative_links(README.read_text("utf-8"))}
    assert DOC_PAGES, "docs/ holds no Markdown pages"
    assert [p.name for p in DOC_PAGES if p.resolve() not in linked] == []


@pytest.mark.parametrize("heading, slug", [
    ("Results (embedded default, held-out test prompts)", "results-embedded-default-held-out-test-prompts"),
    ("Budget-conditioned agents (`--budget-range`)", "budget-conditioned-agents---budget-range"),
    ("Evaluating (`evaluate_agent.py`)", "evaluating-evaluate_agentpy"),
    ("DomainEval: an independent judge (`python -m judge`)", "domaineval-an-independent-judge-python--m-judge"),
    ("Progress lines, and timing your own machine", "progress-lines-and-timing-your-own-machine"),
    ("See [the model card](model-card.md) — **now**", "see-the-model-card--now"),
])
def test_github_slug(heading: str, slug: str):
    assert github_slug(heading) == slug


def test_checker_reports_each_broken_link_and_nothing_else(tmp_path: Path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Part two (`x.py`)\n\n## Same\n\n## Same\n", encoding="utf-8")
    (tmp_path / "pic.png").write_bytes(b"\x89PNG")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n"
        "[fine](other.md) [fine](other.md#part-two-xpy) [fine](other.md#same-1) ![fine](pic.png)\n"
        "[fine](#page) [fine](https://example.com/missing.md) [fine](mailto:a@b.c) [fine](other.md \"title\")\n"
        "[missing file](gone.md)\n"
        "![missing image](docs/pic.png)\n"
        "[missing anchor](other.md#part-three)\n"
        "[missing own anchor](#no-such-heading)\n"
        "[third Same](other.md#same-2)\n"
        "`[in inline code](gone.md)` and\n"
        "```\n[in a fence](gone.md)\n```\n",
        encoding="utf-8")
    problems = broken_links(page)
    assert [p.split(": link ")[0] for p in problems] == [f"page.md:{n}" for n in (4, 5, 6, 7, 8)]
    assert "'gone.md'" in problems[0] and "no file" in problems[0]
    assert "'docs/pic.png'" in problems[1]
    assert "other.md has no heading #part-three" in problems[2]
    assert "page.md has no heading #no-such-heading" in problems[3]
    assert "#same-2" in problems[4]
