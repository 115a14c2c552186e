"""The fault tests' stage: real daemons as child processes on one broker, apps as tasks, a stream between them.

A `Scenario` starts instances `a` (the publisher's), `b` and `c` (receivers'),
streams at 1,000 events/s, and uses the publisher's count as its clock
("another 1,000 events") so every phase is bounded in events and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.brokers import BrokerServer
from tests.faults.apps import ExternalReceiver, Publisher, Receiver, StatusWatch, dropped, now, scrape
from tests.faults.proxy import TcpProxy
from tests.faults.report import Row, count_row
from tests.utils import SpawnedDaemon, wait_for

BROKERS = ("redis", "rabbitmq", "nats")
MODES = ("broadcast", "durable")

#: A phase of N events at 1,000 events/s takes N ms; it may take longer while the publisher's daemon is away.
PHASE_SLACK = 30.0
#: How long the end of a test waits for acks and for the last events to arrive.
SETTLE_TIMEOUT = {"broadcast": 6.0, "durable": 10.0}
#: Broadcast mode: stop waiting once nothing new has arrived for this long (the rest is lost).
QUIET = 1.5


def fault_case(
    case: str, *, brokers: tuple[str, ...] = BROKERS, why_not: str = "", server: str = "server"
) -> pytest.MarkDecorator:
    """Mark a test as fault case `case`, generated for each (broker, mode) that can run it (tests/faults/conftest.py).

    Brokers not in `brokers` are listed under the table as not run, because `why_not`. The broker is the session
    fixture `<broker>_<server>`: `redis_server` by default, `redis_sentinel` for the Sentinel group.
    """
    return pytest.mark.fault_case.with_args(case, brokers, why_not, server)


def via(uri: str, port: int) -> str:
    """`uri` with its port replaced, to send a daemon through a proxy."""
    parts = urlsplit(uri)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    host = hostport.rsplit(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo + '@' if userinfo else ''}{host}:{port}"))


class Instance:
    """One syncar, restartable with the same instance id and socket (durable state is found again)."""

    def __init__(self, label: str, directory: Path, args: list[str]) -> None:
        self.label = label
        self.socket = directory / f"{label}.sock"
        self.args = args
        self.runs = 0
        self.daemon = self._spawn()

    def _spawn(self) -> SpawnedDaemon:
        self.runs += 1
        return SpawnedDaemon(self.socket, *self.args, name=f"{self.label}-run{self.runs}")

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        self.daemon.kill()

    async def restart(self) -> None:
        self.daemon = self._spawn()
        await self.daemon.ready()

    @property
    def alive(self) -> bool:
        return self.daemon.process.poll() is None


@dataclass
class Scenario:
    case: str
    broker_name: str
    mode: str
    server: BrokerServer
    directory: Path
    key: str
    instances: dict[str, Instance] = field(default_factory=dict)
    proxies: dict[str, TcpProxy] = field(default_factory=dict)
    publisher: Publisher | None = None
    receivers: dict[str, Receiver | ExternalReceiver] = field(default_factory=dict)
    receiver_labels: dict[str, str] = field(default_factory=dict)  # app name -> its daemon's label
    watches: dict[str, StatusWatch] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    unacked: int = 0  # publishes never acknowledged, once finish() has waited for them

    async def start(
        self,
        labels: tuple[str, ...],
        receivers: dict[str, str],
        *,
        proxied: tuple[str, ...] = (),
        daemon_args: dict[str, list[str]] | None = None,
        stalling: dict[str, tuple[int, float]] | None = None,
    ) -> None:
        """Start daemons `labels` (the first one is the publisher's), a status watch on each, then the apps.

        `receivers` maps an app's name to its daemon's label; `proxied` daemons reach the broker through a TcpProxy;
        `stalling` apps (name -> (after how many events, for how many seconds)) run in a process of their own and
        block it for a while.
        """
        for label in labels:
            backend = self.server.uri
            if label in proxied:
                self.proxies[label] = proxy = await TcpProxy.start(self.server.port)
                backend = via(backend, proxy.port)
            args = [
                "--backend",
                backend,
                "--key",
                self.key,
                "--mode",
                self.mode,
                "--instance-id",
                f"{label}-{self.key[-10:]}",
                "--shutdown-timeout",
                "2",
                "--instance-ttl",
                "60",
                *(daemon_args or {}).get(label, []),
            ]
            self.instances[label] = Instance(label, self.directory, args)
        await asyncio.gather(*(i.daemon.ready() for i in self.instances.values()))
        for label, instance in self.instances.items():
            self.watches[label] = watch = StatusWatch(instance.socket)
            await watch.start()
        self.receiver_labels = dict(receivers)
        for name, label in receivers.items():
            socket = self.instances[label].socket
            receiver: Receiver | ExternalReceiver
            if name in (stalling or {}):
                after, seconds = (stalling or {})[name]
                receiver = ExternalReceiver(name, socket, self.directory, stall_after=after, stall_seconds=seconds)
            else:
                receiver = Receiver(name, socket)
            self.receivers[name] = receiver
            await receiver.start()
        self.publisher = Publisher(self.instances[labels[0]].socket)
        await self.publisher.start()

    @property
    def publisher_label(self) -> str:
        return next(iter(self.instances))

    @property
    def pub(self) -> Publisher:
        assert self.publisher is not None, "start() first"
        return self.publisher

    async def stream(self, events: int) -> None:
        """Let the publisher publish `events` more (about events/1000 seconds)."""
        target = self.pub.count + events
        await wait_for(
            lambda: self.pub.count >= target,
            events / self.pub.rate + PHASE_SLACK,
            f"the publisher to publish {events} more events",
        )

    async def finish(self, settle: float | None = None) -> None:
        """Stop publishing, wait for the acks, let the last events arrive, scrape every daemon's metrics. `settle`:
        how long each wait may take (default: the mode's SETTLE_TIMEOUT)."""
        settle = SETTLE_TIMEOUT[self.mode] if settle is None else settle
        self.unacked = await self.pub.stop(ack_timeout=settle)
        acked = set(self.pub.acked)
        deadline = now() + settle
        while now() < deadline:
            if all(acked <= r.received() for r in self.receivers.values()):
                break
            last = max((r.records[-1][1] for r in self.receivers.values() if r.records), default=0.0)
            if self.mode == "broadcast" and now() - max(last, max(self.pub.acked.values(), default=0.0)) > QUIET:
                break  # nothing has come for a while: the rest was lost
            await asyncio.sleep(0.05)
        for receiver in self.receivers.values():
            await receiver.finish()
        for label, instance in self.instances.items():
            if instance.alive:
                self.metrics[label] = await scrape(instance.daemon.http_port)

    def count(self, fault_end: float) -> dict[str, Row]:
        """Each receiving app's counts (also kept for the session's table)."""
        return {
            name: count_row(
                self.case,
                self.broker_name,
                self.mode,
                name,
                publisher=self.pub,
                records=receiver.records,
                fault_end=fault_end,
                notes=self.notes(name),
            )
            for name, receiver in self.receivers.items()
        }

    def notes(self, name: str) -> str:
        """What the receiving daemon's metrics, the app and the publisher say about the losses."""
        label = self.receiver_labels[name]
        parts = []
        if reconnects := self.metric(label, "syncar_backend_reconnects_total"):
            parts.append(f"reconnects {reconnects:.0f}")
        if drops := dropped(self.metrics.get(label, {})):
            parts.append("dropped " + ", ".join(f"{reason} {n}" for reason, n in sorted(drops.items())))
        if slow := self.metric(label, 'syncar_client_disconnects_total{reason="slow_client"}'):
            parts.append(f"slow_client disconnects {slow:.0f}")
        if gaps := self.receivers[name].gaps:
            parts.append(f"resume_gap {gaps}")
        if self.instances[label].runs > 1:
            parts.append("metrics of the restarted run")
        if self.unacked:
            parts.append(f"publisher: {self.unacked} unacked ({self.pub.unacked_ids()})")
        return "; ".join(parts)

    def max_delay(self, name: str, since: float, until: float) -> float:
        """The longest publish-to-app delay of the events `name` got that were published in [since, until]."""
        published = self.pub.published
        return max(
            (t - published[n] for n, t in self.receivers[name].records if since <= published[n] <= until), default=0.0
        )

    def metric(self, label: str, name: str) -> float:
        return self.metrics.get(label, {}).get(name, 0.0)

    async def close(self) -> None:
        for app in (*self.receivers.values(), *([self.publisher] if self.publisher else []), *self.watches.values()):
            with contextlib.suppress(Exception):
                await app.close()
        for instance in self.instances.values():
            if instance.alive:
                with contextlib.suppress(AssertionError):
                    await instance.daemon.stop(timeout=5)
            instance.kill()
        for proxy in self.proxies.values():
            await proxy.close()
