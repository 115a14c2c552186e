"""`backends.BACKENDS`: one class per scheme and mode, each declaring its own features."""

from __future__ import annotations

import pytest

from backends import BACKENDS, load_backend
from backends.base import Backend, BackendConfig, BackendConfigError, Feature, Mode
from sidecar.errors import ConfigError

ENTRIES = [(scheme, mode) for scheme, modes in BACKENDS.items() for mode in modes]


@pytest.mark.parametrize(("scheme", "mode"), ENTRIES, ids=[f"{s}-{m}" for s, m in ENTRIES])
def test_each_mode_has_a_class_that_declares_it(scheme: str, mode: Mode) -> None:
    backend = load_backend(f"{scheme}://host", mode)
    assert (Feature.DURABLE in backend.features) is (mode is Mode.DURABLE)
    assert backend.supports is Backend.supports  # features are declared, never computed per instance
    other = Mode.BROADCAST if mode is Mode.DURABLE else Mode.DURABLE
    with pytest.raises(BackendConfigError, match=rf"^{backend.name}: {backend.__name__} has no {other} mode; "):
        backend(BackendConfig(f"{scheme}://host", "i", mode=other))


def test_the_modes_of_one_broker_are_different_classes() -> None:
    for scheme, modes in BACKENDS.items():
        if Mode.DURABLE in modes:
            assert load_backend(f"{scheme}://host", Mode.DURABLE) is not load_backend(f"{scheme}://host")


def test_a_backend_without_the_mode_is_one_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_backend("local://bus", Mode.DURABLE)
    assert str(caught.value) == "mode: the local backend has no durable mode"
