"""The README's settings table and `syncar run --help` say the same: every setting is a row with its flag, its
environment variable and its default, no row names a setting that is not one, and every URI scheme syncar takes
is named both in the table and in the help."""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

from backends import BACKENDS
from sidecar.config import Settings, env_of
from tests.utils import REPO, syncar

#: A row of the table: flags, environment variables, default, meaning.
_ROW = re.compile(r"^\| (`--.*?) \| (.*?) \| (.*?) \| (.*) \|$", re.M)


def rows() -> dict[str, tuple[str, str, str]]:
    """Flag -> (environment variable, default cell, meaning), a row naming two flags counted as two."""
    readme = (REPO / "README.md").read_text()
    table = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    found = {}
    for flags, envs, default, meaning in _ROW.findall(table):
        names, variables = re.findall(r"`(--[a-z-]+)`", flags), re.findall(r"`(SYNCAR_[A-Z_]+)`", envs)
        defaults = [d.strip() for d in default.split(",")] if len(names) > 1 else [default]
        if len(defaults) == 1:  # `none` for both
            defaults *= len(names)
        assert len(names) == len(variables) == len(defaults), f"a row of {names} reads two ways"
        for name, variable, value in zip(names, variables, defaults, strict=True):
            found[name] = (variable, value, meaning)
    return found


def shown(value: Any) -> str | None:
    """A default as the table writes it, or None for no default (the cell then says what happens instead)."""
    if value is None or value is False or value == ():
        return None
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_setting_has_its_row_and_every_row_a_setting() -> None:
    table = rows()
    flags = {"--" + name.replace("_", "-"): name for name in Settings.model_fields}
    assert sorted(set(flags) - set(table)) == [], "settings missing from the README's table"
    assert sorted(set(table) - set(flags)) == [], "rows of the README's table that are no setting"
    for flag, name in flags.items():
        variable, cell, _ = table[flag]
        assert variable == env_of(name), flag
        field = Settings.model_fields[name]
        if field.default_factory is not None:  # computed where it runs: the cell says how
            continue
        default = field.default
        if name == "socket_mode":
            expected: str | None = f"{default:04o}"
        else:
            expected = shown(default)
        literal = re.match(r"`([^`]*)`", cell)
        if expected is None:
            assert literal is None, f"{flag}: the table gives a default ({cell}), the setting has none"
        else:
            assert literal is not None and literal[1] == expected, f"{flag}: the table says {cell}, syncar {expected}"


def test_every_uri_scheme_is_named_in_the_table_and_the_help() -> None:
    _, _, meaning = rows()["--backend"]
    help_text = " ".join(syncar("run", "--help").stdout.split())
    described = help_text.split("--backend BACKEND", 1)[1].split("[SYNCAR_BACKEND]", 1)[0]
    for scheme in BACKENDS:
        # `redis+sentinel://` (and `rediss+`) names rediss+sentinel:// too.
        plain = scheme.replace("rediss+", "redis+")
        assert f"`{plain}://`" in meaning, f"{scheme}:// is not in the README's --backend row"
        assert f"{plain}://" in described, f"{scheme}:// is not in syncar run --help's --backend"
