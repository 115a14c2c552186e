"""The amqp:// URI's host list and the order its hosts are tried in (backends/amqp_common.py, amqp_connection.py)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from yarl import URL

from backends.amqp_common import parse_uri
from backends.amqp_connection import Hosts, node_of
from backends.base import BackendConfigError


def test_a_host_list_is_one_url_per_host_with_the_same_credentials_vhost_and_options() -> None:
    options = parse_uri("amqp://u:p%40ss@h1:5673,h2,[::1]:5674/prod?heartbeat=5&queue_type=quorum", "pod-1")
    assert [node_of(url) for url in options.urls] == ["h1:5673", "h2:5672", "[::1]:5674"]
    for url in options.urls:
        assert (url.user, url.password, url.path) == ("u", "p@ss", "/prod")
        assert url.query["heartbeat"] == "5" and url.query["name"] == "syncar pod-1"
        assert "queue_type" not in url.query  # syncar's own option, not aiormq's
    assert options.vhost == "prod" and options.queue_type == "quorum"
    assert options.secrets == ("p@ss", "p%40ss")


def test_amqps_hosts_default_to_the_tls_port() -> None:
    assert [node_of(url) for url in parse_uri("amqps://h1,h2:5000/", "i").urls] == ["h1:5671", "h2:5000"]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("amqp://u:pw-secret@h1,,h3/", r"^amqp: invalid URI: an empty host in the host list 'h1,,h3'$"),
        ("amqp://u:pw-secret@h1:5672,h2:x/", r"^amqp: invalid URI: port could not be cast"),
        ("amqp://u:pw-secret@/", r"^amqp: the URI names no host"),
    ],
)
def test_a_bad_host_list_is_one_line_without_the_password(uri: str, expected: str) -> None:
    with pytest.raises(BackendConfigError, match=expected) as raised:
        parse_uri(uri, "i")
    assert "pw-secret" not in str(raised.value)


URLS = tuple(URL(f"amqp://127.0.0.1:{port}/") for port in (1, 2, 3))


def test_daemons_start_at_random_hosts_so_a_fleet_spreads() -> None:
    rng = random.Random(7)
    starts = Counter(node_of(Hosts(URLS, rng).current) for _ in range(3000))
    assert set(starts) == {"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}
    assert min(starts.values()) > 800, starts


def test_failed_attempts_go_through_the_hosts_in_turn() -> None:
    hosts = Hosts(URLS, random.Random(1))
    first = hosts.current
    tried = [first, *(hosts.next() for _ in range(5))]
    assert tried[:3] == tried[3:] and set(tried) == set(URLS)
    assert [URLS.index(url) for url in tried[:3]] in ([0, 1, 2], [1, 2, 0], [2, 0, 1])


def test_a_lost_connection_moves_to_another_host_and_the_fleet_on_it_spreads() -> None:
    rng = random.Random(3)
    landed: Counter[URL] = Counter()
    for _ in range(3000):
        hosts = Hosts(URLS, rng)
        while hosts.current != URLS[0]:
            hosts.next()
        landed[hosts.leave()] += 1
    assert set(landed) == {URLS[1], URLS[2]} and min(landed.values()) > 1300, landed
    single = Hosts(URLS[:1])
    assert single.leave() == single.next() == URLS[0]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("amqp://h1/", "classic"),  # one node: nothing to replicate to (and the 3.10 window, amqp_topology)
        ("amqp://h1,h2,h3/", "quorum"),  # a cluster: a queue with a member on each node
        ("amqp://h1,h2,h3/?queue_type=classic", "classic"),
        ("amqp://h1/?queue_type=quorum", "quorum"),
    ],
)
def test_durable_queues_are_quorum_queues_on_a_host_list_unless_the_uri_says(uri: str, expected: str) -> None:
    assert parse_uri(uri, "i").queue_type == expected
