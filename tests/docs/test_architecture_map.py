"""docs/architecture.md maps every module: each Python module of sidecar/, backends/ and bench/ and each module of
the Node plugin is named in its folder's table, and every module a table names exists."""

from __future__ import annotations

import re

import pytest

from tests.utils import REPO

#: The tables of the map, by the folder their modules are in: a table follows a line that starts with the folder.
FOLDERS = {"sidecar/": "*.py", "backends/": "*.py", "bench/": "*.py", "clients/node/": "index.*"}
NODE_LIB = "clients/node/lib/"


def tables() -> dict[str, set[str]]:
    """Folder -> the file names in the first column of its table."""
    text = (REPO / "docs" / "architecture.md").read_text()
    named: dict[str, set[str]] = {}
    for folder in FOLDERS:
        start = re.search(rf"^`{re.escape(folder)}`,", text, re.M)
        assert start is not None, f"no table for {folder} in docs/architecture.md"
        rows = re.match(r"(?:\n*[^|\n].*\n)*\n*((?:\|.*\n)+)", text[start.end() :])
        assert rows is not None, f"no table after the line on {folder}"
        names = set()
        for row in rows[1].splitlines()[2:]:
            names |= set(re.findall(r"`([\w./-]+)`", row.split("|")[1]))
        named[folder] = names
    return named


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_module_is_on_the_map(folder: str) -> None:
    files = {path.name for path in (REPO / folder).glob(FOLDERS[folder])}
    if folder == "clients/node/":
        files |= {f"lib/{path.name}" for path in (REPO / NODE_LIB).glob("*.js")}
    named = tables()[folder]
    assert sorted(files - named) == [], f"modules of {folder} missing from docs/architecture.md"
    assert sorted(name for name in named if not (REPO / folder / name).exists()) == [], "mapped, but not there"
