"""Fixtures of the container tests: the image, built once per session by scripts/image, and podman around it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.podman import Podman, podman_env, socket_dir


@pytest.fixture(scope="session")
def built_image() -> Podman:
    podman = Podman(podman_env())
    podman.build()
    return podman


@pytest.fixture
def podman(built_image: Podman) -> Iterator[Podman]:
    """Podman with the image built; every container the test named is removed after it."""
    yield built_image
    built_image.remove_all()


@pytest.fixture
def volume() -> Iterator[Path]:
    with socket_dir() as path:
        yield path
