"""The peer table over each broker, codec and mode: announcements on `<key>.peers`, who is there, lag, departures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from backends.base import BackendConfig, Mode
from backends.local import LocalBackend
from sidecar import __version__
from sidecar.daemon import Daemon
from sidecar.fleet import peers_topic
from tests.brokers import BrokerServer
from tests.contract.conftest import Setup, setups
from tests.contract.raw import raw_publish, raw_subscriber
from tests.utils import (
    RawClient,
    SpawnedDaemon,
    eventually,
    http_get,
    metric,
    publish_frame,
    run_daemon,
    syncar,
    wait_for,
)

INTERVAL = 0.2  # seconds between announcements: a peer is gone after 0.6 s of silence


def names(daemon: Daemon) -> list[str]:
    """The instances in a daemon's peer table, itself first."""
    return [str(row["instance"]) for row in daemon.fleet.describe()["peers"]]  # type: ignore[attr-defined]


def row_of(daemon: Daemon, instance: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = daemon.fleet.describe()["peers"]  # type: ignore[assignment]
    return next(row for row in rows if row["instance"] == instance)


async def put_on_bus(broker: BrokerServer | None, uri: str, topic: str, body: bytes) -> None:
    """Publish `body` on `topic` behind the daemons' backs, as a stranger on the broker."""
    if broker is None:
        stranger = LocalBackend(BackendConfig(uri=uri, instance_id="stranger"))
        await stranger.start()
        await stranger.publish(topic, [body])
        await stranger.close()
    else:
        await raw_publish(broker, topic, body)


@contextlib.asynccontextmanager
async def daemons(
    setup: Setup, broker: BrokerServer | None, sock_dir: Path, *names: str, **extra: Any
) -> AsyncIterator[tuple[str, str, list[Daemon]]]:
    """Daemons on one fresh key, announcing every INTERVAL: (key, uri, daemons)."""
    key = f"peers-{uuid.uuid4().hex}"
    uri = broker.uri if broker is not None else f"local://{key}"
    settings = {"backend": uri, "codec": setup.codec, "key": key, "mode": setup.mode, "announce_interval": INTERVAL}
    async with contextlib.AsyncExitStack() as stack:
        started = [
            await stack.enter_async_context(
                run_daemon(sock_dir / f"{name}.sock", instance_id=f"{name}-{key[6:14]}", **settings, **extra)
            )
            for name in names
        ]
        yield key, uri, started


async def test_daemons_on_one_key_list_each_other(setup: Setup, broker: BrokerServer | None, sock_dir: Path) -> None:
    async with daemons(setup, broker, sock_dir, "a", "b") as (_, _, (a, b)):
        await wait_for(lambda: len(names(a)) == 2 and len(names(b)) == 2, what="each to hear the other")
        assert names(a) == [a.settings.instance_id, b.settings.instance_id]
        me, peer = row_of(a, a.settings.instance_id), row_of(a, b.settings.instance_id)
        assert me["self"] is True and peer["self"] is False
        assert (peer["version"], peer["codec"], peer["mode"]) == (__version__, setup.codec, str(setup.mode))
        assert 0 <= peer["heard_seconds_ago"] < 10
        # Every view of the table: /peers, and the metrics with a series per peer.
        assert a.http is not None
        status, body = await http_get(a.http.port, "/peers")
        assert status == 200
        table = orjson.loads(body)
        assert [row["instance"] for row in table["peers"]] == names(a)
        assert (table["interval"], table["key"]) == (INTERVAL, a.settings.key)
        assert metric(a.metrics, "syncar_peers") == 1
        assert metric(a.metrics, "syncar_peer_heard_seconds", peer=b.settings.instance_id) >= 0


async def test_the_table_follows_a_peers_sequence(setup: Setup, broker: BrokerServer | None, sock_dir: Path) -> None:
    async with daemons(setup, broker, sock_dir, "a", "b") as (_, _, (a, b)):
        receiver = await RawClient.connect(a.settings.socket, {})
        sender = await RawClient.connect(b.settings.socket, {})
        for n in range(50):
            await sender.send(publish_frame(data=n))
        await receiver.events(50)
        b_id = b.settings.instance_id
        await wait_for(lambda: row_of(a, b_id)["seq"] == 50 if b_id in names(a) else False, what="b's seq of 50")
        # The syncar codec numbers the events: all arrived, no lag. feathers-sync's carries no number to follow.
        assert row_of(a, b_id)["lag"] == (0 if setup.codec == "syncar" else None)
        if setup.codec == "syncar":
            assert metric(a.metrics, "syncar_peer_lag_events", peer=b_id) == 0
        await receiver.close()
        await sender.close()


async def test_a_daemon_that_stops_leaves_the_tables_at_once(
    setup: Setup, broker: BrokerServer | None, sock_dir: Path
) -> None:
    async with daemons(setup, broker, sock_dir, "a") as (key, uri, (a,)):
        settings = {"backend": uri, "codec": setup.codec, "key": key, "mode": setup.mode, "announce_interval": 3600.0}
        async with run_daemon(sock_dir / "b.sock", instance_id=f"b-{key[6:14]}", **settings) as b:
            await wait_for(lambda: b.settings.instance_id in names(a), what="a to hear b")
        # b announces once an hour: only its last announcement, `leaving`, can have taken it out this soon.
        await wait_for(lambda: names(a) == [a.settings.instance_id], what="b gone from a's table")
        assert metric(a.metrics, "syncar_peers") == 0


# The local bus has no plain client to listen with; the other brokers show it.
@setups(lambda s: s.broker != "local")
async def test_announcements_never_reach_the_key(setup: Setup, broker: BrokerServer | None, sock_dir: Path) -> None:
    assert broker is not None
    key = f"peers-{uuid.uuid4().hex}"
    async with raw_subscriber(broker, key) as on_key, raw_subscriber(broker, peers_topic(key)) as on_peers:
        settings = {"backend": broker.uri, "codec": setup.codec, "key": key, "mode": setup.mode}
        async with run_daemon(
            sock_dir / "a.sock", instance_id=f"a-{key[6:14]}", announce_interval=INTERVAL, **settings
        ):
            # Three announcements went by on <key>.peers (in durable mode too: they go by broadcast)...
            for _ in range(3):
                announcement = orjson.loads(await asyncio.wait_for(on_peers.get(), 10))
                assert announcement["instance"] == f"a-{key[6:14]}"
        # ...and none on the key, where feathers-sync apps listen.
        assert on_key.empty()


@setups(lambda s: s.codec == "syncar")  # signing needs the syncar codec
async def test_forged_announcements_are_dropped_when_signing(
    setup: Setup, broker: BrokerServer | None, sock_dir: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("a-signing-key-of-32-characters!!\n")
    other = tmp_path / "other"
    other.write_text("another-key-nobody-here-has-1234\n")
    async with daemons(setup, broker, sock_dir, "a", "b", signing_key_file=keys) as (key, uri, (a, b)):
        await wait_for(lambda: len(names(a)) == 2, what="a to hear b, signed")
        forged = orjson.dumps(
            {
                "v": 1,
                "instance": "intruder",
                "version": __version__,
                "codec": setup.codec,
                "mode": str(setup.mode),
                "seq": 0,
                "started": 0.0,
                "interval": 3600.0,
            }
        )
        await put_on_bus(broker, uri, peers_topic(key), forged)
        await wait_for(
            lambda: metric(a.metrics, "syncar_announcements_rejected_total", reason="unsigned") >= 1,
            what="the unsigned announcement dropped",
        )
        # Signed by a stranger's key: dropped as a forged event is.
        from sidecar.signing import Signer, load_keys

        await put_on_bus(broker, uri, peers_topic(key), Signer(load_keys(other), 60.0).sign(forged))
        await wait_for(
            lambda: metric(a.metrics, "syncar_announcements_rejected_total", reason="unknown_key") >= 1,
            what="the announcement signed with another key dropped",
        )
        assert "intruder" not in names(a) and "intruder" not in names(b)


# A spawned daemon shares no local bus; once per broker is enough.
@setups(lambda s: s.broker != "local" and s.mode is Mode.BROADCAST and s.codec == "syncar")
async def test_syncar_peers_lists_the_fleet_and_a_killed_daemon_goes(
    setup: Setup, broker: BrokerServer | None, sock_dir: Path
) -> None:
    assert broker is not None
    async with daemons(setup, broker, sock_dir, "a") as (key, uri, (a,)):
        c = SpawnedDaemon(
            sock_dir / "c.sock", "--backend", uri, "--key", key, "--instance-id", "c-1", "--announce-interval", "0.2"
        )
        try:
            await c.ready()
            await wait_for(lambda: "c-1" in names(a), what="a to hear c")
            http = f"127.0.0.1:{c.http_port}"

            async def c_hears_a() -> bool:
                shown = await asyncio.to_thread(syncar, "peers", "--json", "--http", http)
                assert shown.returncode == 0, shown.stderr
                rows = orjson.loads(shown.stdout)["peers"]
                return [row["instance"] for row in rows] == ["c-1", a.settings.instance_id]

            await eventually(c_hears_a, what="syncar peers --json to list c, then a")
            shown = await asyncio.to_thread(syncar, "peers", "--http", http)
            assert shown.returncode == 0, shown.stderr
            lines = shown.stdout.splitlines()
            assert lines[0] == f"key {key}, announcements every 0.2s"
            assert lines[1].split() == ["INSTANCE", "VERSION", "CODEC", "MODE", "SEQ", "LAG", "HEARD"]
            assert lines[2].split() == ["*", "c-1", __version__, "syncar", "broadcast", "0", "0", "self"]
            assert lines[3].split()[:6] == [a.settings.instance_id, __version__, "syncar", "broadcast", "0", "0"]
            # Killed, it says nothing: it is gone from a's table after three missed announcements.
            c.process.send_signal(signal.SIGKILL)
            await c.exited()
            await wait_for(lambda: "c-1" not in names(a), what="c gone from a's table")
        finally:
            c.kill()


async def test_a_peer_that_differs_is_warned_of_once_with_what_to_do(
    setup: Setup, broker: BrokerServer | None, sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sidecar.fleet")
    async with daemons(setup, broker, sock_dir, "a") as (key, uri, (a,)):
        me = a.fleet.me
        other_codec = "feathers-sync" if setup.codec == "syncar" else "syncar"
        other_mode = "broadcast" if setup.mode is Mode.DURABLE else "durable"
        peers: dict[str, dict[str, object]] = {
            "old": {"version": "0.0.9"},
            "codec": {"codec": other_codec},
            "mode": {"mode": other_mode},
            a.settings.instance_id: {"run": "another-run", "started": 1.0},  # a second daemon given a's id
        }
        for _ in range(3):  # announced again and again: warned of once
            for instance, differs in peers.items():
                announcement = msgspec.structs.replace(me, instance=instance, **differs)
                await put_on_bus(broker, uri, peers_topic(key), msgspec.json.encode(announcement))
        await wait_for(lambda: {"old", "codec", "mode"} <= set(names(a)), what="a to hear the three peers")
        await wait_for(lambda: len(warnings(caplog)) >= 4, what="four warnings")
        lines = warnings(caplog)
        assert len(lines) == 4, lines
        [old] = [line for line in lines if line.startswith("peer old ")]
        assert f"runs syncar 0.0.9, this daemon {__version__}: fine during a rolling upgrade" in old
        [codec] = [line for line in lines if line.startswith("peer codec ")]
        assert f"uses codec {other_codec}, this daemon {setup.codec}: each drops the other's events" in codec
        assert "give every daemon of a key the same --codec" in codec
        [mode] = [line for line in lines if line.startswith("peer mode ")]
        assert f"runs in {other_mode} mode, this daemon in {setup.mode}" in mode and "one --mode" in mode
        [twin] = [line for line in lines if line.startswith("another daemon")]
        assert f"announces this daemon's instance id {a.settings.instance_id}: give each daemon its own" in twin


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "sidecar.fleet" and r.levelno == logging.WARNING]
