"""Every relative link of the repository's Markdown pages leads somewhere: the file or folder exists, and a `#anchor`
names a heading of the page it points into, as GitHub makes anchors of headings.

External links (`https:`, `mailto:`) are not followed: the tests run offline.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

from tests.utils import REPO

#: `[text](target)` and `![alt](target)`, the target up to a space (a title may follow) or the closing parenthesis.
_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.M | re.S)
_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def pages() -> list[Path]:
    """The Markdown pages git tracks; without git (a copy of the tree), every page outside node_modules, dist/ and the
    hidden folders (.venv)."""
    try:
        listed = subprocess.run(["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        ours = (page.relative_to(REPO).parts for page in REPO.rglob("*.md"))
        return sorted(
            REPO.joinpath(*parts)
            for parts in ours
            if not {"node_modules", "dist"} & set(parts) and not any(part.startswith(".") for part in parts)
        )
    return [REPO / name for name in listed.stdout.split()]


def _unfenced(text: str) -> str:
    """The page without its code blocks, blanked line for line so that line numbers hold."""
    return _FENCE.sub(lambda block: "\n" * block[0].count("\n"), text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, markup and punctuation dropped, spaces made hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    found: set[str] = set()
    for match in _HEADING.finditer(_unfenced(page.read_text())):
        base = slug(match[1])
        name, n = base, 0
        while name in found:  # GitHub numbers repeated headings: intro, intro-1, intro-2
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return frozenset(found)


def links(page: Path) -> list[tuple[int, str]]:
    text = _CODE.sub(lambda code: "\n" * code[0].count("\n"), _unfenced(page.read_text()))  # code is no link
    return [(text.count("\n", 0, m.start()) + 1, m[1]) for m in _LINK.finditer(text)]


def broken(page: Path) -> list[str]:
    wrong = []
    for line, target in links(page):
        if re.match(r"[a-z][a-z+.-]*:", target):  # https:, mailto: and the like
            continue
        path, _, anchor = target.partition("#")
        into = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(REPO)}:{line}: {target}"
        if not into.exists():
            wrong.append(f"{where}: no such file")
        elif REPO not in into.parents and into != REPO:
            wrong.append(f"{where}: outside the repository")
        elif anchor and into.suffix == ".md" and anchor not in anchors(into):
            wrong.append(f"{where}: no heading makes #{anchor} in {into.relative_to(REPO)}")
        elif anchor and into.suffix != ".md":
            wrong.append(f"{where}: an anchor into a file that is not Markdown")
    return wrong


def test_the_checker_sees_links_and_anchors() -> None:
    readme = REPO / "README.md"
    assert any(target.startswith("docs/") for _, target in links(readme))
    assert any("#" in target for page in pages() for _, target in links(page))
    assert slug("Replays and `durable` backlogs (v2)") == "replays-and-durable-backlogs-v2"


@pytest.mark.parametrize("page", pages(), ids=lambda page: str(page.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    wrong = broken(page)
    assert not wrong, "\n".join(wrong)
