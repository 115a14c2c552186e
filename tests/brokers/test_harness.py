"""The broker harness keeps the promises the rest of the suite stands on: no port handed out twice, and no broker
a test killed left down for the tests after it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import free_port, serve
from tests.brokers.nats import NatsServer


def test_free_ports_are_never_handed_out_twice_nor_taken_from_the_ephemeral_range() -> None:
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
    assert not [port for port in ports if low <= port <= high]


@pytest.fixture(scope="module")
def shared() -> Iterator[NatsServer]:
    yield from serve(NatsServer())


@pytest.mark.nats
def test_a_test_kills_a_shared_broker_and_ends_without_restarting_it(shared: NatsServer) -> None:
    shared.kill()
    assert shared.process is None


@pytest.mark.nats
def test_the_next_test_finds_it_running(shared: NatsServer) -> None:
    """tests/conftest.py's brokers_left_running restarted it after the test before."""
    assert shared.process is not None and shared.process.poll() is None
    assert shared.ready()
