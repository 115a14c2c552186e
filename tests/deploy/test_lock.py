"""constraints.txt: what scripts/install, CI and the image install, pinned by scripts/lock."""

from __future__ import annotations

import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.helpers import dockerfile_instructions
from tests.utils import REPO

CONSTRAINTS = REPO / "constraints.txt"
#: The installer's own tools, which a venv brings and no constraints file pins.
INSTALLER = {"pip", "setuptools", "wheel"}


def pins() -> list[Requirement]:
    lines = [line.split("#")[0].strip() for line in CONSTRAINTS.read_text().splitlines()]
    return [Requirement(line) for line in lines if line]


def pins_here() -> dict[str, str]:
    """Name -> pinned version, for the pins whose marker holds on this interpreter and platform."""
    found: dict[str, str] = {}
    for pin in pins():
        if pin.marker is None or pin.marker.evaluate():
            (spec,) = pin.specifier
            found[canonicalize_name(pin.name)] = spec.version
    return found


def test_every_pin_is_exact_and_made_by_scripts_lock() -> None:
    assert CONSTRAINTS.read_text().splitlines()[1].strip() == "#    scripts/lock", "regenerate it with scripts/lock"
    for pin in pins():
        (spec,) = pin.specifier
        assert spec.operator == "==", f"{pin} is not pinned"
        assert not pin.extras, f"{pin}: a constraint cannot carry extras"


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [
        Requirement(text)
        for group in (project["dependencies"], *project["optional-dependencies"].values())
        for text in group
    ]
    pinned = pins_here()
    for requirement in declared:
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        if name == "syncar":  # an extra made of another (test includes syncar[otel]), whose entries are checked
            continue
        assert name in pinned, f"{requirement} is not in constraints.txt: run scripts/lock"
        assert requirement.specifier.contains(pinned[name]), f"{name}=={pinned[name]} is outside {requirement}"


def test_this_venv_is_the_pinned_set() -> None:
    """scripts/install installed exactly what constraints.txt says: nothing unpinned, nothing at another version."""
    pinned = pins_here()
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in INSTALLER or name == "syncar":
            continue
        assert name in pinned, f"{name} {dist.version} is installed but not pinned: run scripts/lock"
        assert dist.version == pinned[name], (
            f"{name} {dist.version} is installed, constraints.txt pins {pinned[name]}: run scripts/install"
        )


def test_scripts_install_and_the_image_install_the_pins() -> None:
    install = (REPO / "scripts/install").read_text()
    assert "--constraint constraints.txt -e '.[test,bench]'" in install
    runs = [arguments for instruction, arguments in dockerfile_instructions() if instruction == "RUN"]
    (wheel,) = [run for run in runs if "pip wheel" in run]
    assert 'pip wheel --wheel-dir /wheels --constraint constraints.txt ".${EXTRAS:+[$EXTRAS]}"' in wheel
