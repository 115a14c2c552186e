"""Redis Cluster (`redis[s]+cluster://h1:7000,h2:7001,...`): which node each connection of the Redis backend goes to.

The backend keeps its single-node connections (`backends.redis_base`); a cluster only decides where they connect,
asked again on every (re)connect, as Sentinel's master is:

- broadcast mode uses classic pub/sub, which a cluster relays to every node: any live node serves both PUBLISH and
  SUBSCRIBE. A daemon chooses the master of its key's slot (`key_slot` of the pub/sub channel, `--key`) if the
  nodes say it is a live master and it answers, else the first node of the URI (tried in turn from a random one)
  that answers. So every daemon of a fleet meets on one node, and no event crosses the cluster bus: the bus links
  a node opens have Nagle on (Redis 7.0 sets no TCP_NODELAY on them, and no setting does), which cost 14.78 ms p50
  at 1,000 events/s between daemons on two masters against 0.69 ms on one (docs/benchmarks/history.md, "Where Redis
  Cluster's milliseconds go"). A node that dies
  costs its clients one reconnect to another node, without waiting for the cluster to fail it over (the dead
  master, not yet failed, is no choice when it does not answer; docs/backends/redis.md has the measurements
  against sharded pub/sub): until their next reconnect, those daemons stay on the node they reached, the new
  master or any other, so a fleet may be split over two nodes after a failover.
  Every connection of a backend goes to one node, the one chosen last, for as long as it answers: a PUBLISH
  crosses the cluster bus from the node that took it, and with Nagle on the bus a batch published on one node can
  be overtaken by the next one published on another (the subscriber's own, say). With each connection asking
  afresh, every ask after a kill named another node: the reader and the publishing connection, made again after
  each loss, were on different nodes, and fault case 10 saw a batch of 20 events arrive after the next;
- durable mode keeps all of a key's streams under one hash tag (`syncar:stream:{key}`), so they share one slot:
  a connection goes to the master that owns it, as the nodes' `CLUSTER NODES` say. Until the cluster has promoted
  a replica of a dead master, that is still the dead one, and the reconnect loop tries again.

A reply that says the slot is served elsewhere (`MOVED`, `READONLY` from a demoted master, `CLUSTERDOWN`) is a lost
connection: the reconnect asks the cluster again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.connection import Connection, SSLConnection
from redis.crc import key_slot

from backends.base import host_port
from backends.tls import tls_refusal, tls_refused

#: Replies that mean this node no longer serves the slot (or the cluster cannot serve it yet): locate it again.
ELSEWHERE = (redis_errors.MovedError, redis_errors.AskError, redis_errors.ReadOnlyError, redis_errors.ClusterDownError)


class ClusterMap:
    """The nodes of a cluster, as the URI lists them and as the cluster announces itself; where to connect."""

    def __init__(self, seeds: list[tuple[str, int]], probe_kwargs: dict[str, Any], tls: bool) -> None:
        self.seeds = seeds
        self.slot: int | None = None  # durable mode: connect to this slot's master; None: to any live node
        self.home: int | None = None  # broadcast mode: the slot whose master a daemon chooses first, if it is live
        self.members: tuple[str, ...] = ()  # every node, as the last CLUSTER NODES said
        self._announced: list[tuple[str, int]] = []
        self._probe_kwargs, self._tls = probe_kwargs, tls
        self._start = random.randrange(len(seeds))
        self._chosen: tuple[str, int] | None = None  # broadcast mode: the node every connection goes to

    def place(self, key: str) -> None:
        """Connect to the master of `key`'s slot from now on."""
        self.slot = key_slot(key.encode())

    def prefer(self, key: str) -> None:
        """Broadcast mode: choose the master of `key`'s slot while it is live and answers, so that a fleet with one
        key meets on one node; else any node that answers."""
        self.home = key_slot(key.encode())

    async def address(self) -> tuple[str, int]:
        """Where to connect now: in broadcast mode the node chosen last while it answers, else the live master of
        the preferred slot if it answers, else the first node to answer; then the URI's nodes, then those the
        cluster announced. If none will do: a node's refusal of our TLS certificate, if one refused it (a permanent
        error, whichever node was tried last), else the last node's error."""
        failure: BaseException = redis_errors.ConnectionError("no cluster node listed")
        before = self._chosen
        chosen = [before] if self.slot is None and before is not None else []
        seeds = [node for node in self.seeds[self._start :] + self.seeds[: self._start] if node not in chosen]
        announced = [node for node in self._announced if node not in self.seeds and node not in chosen]
        silent: set[tuple[str, int]] = set()  # nodes that did not answer this time
        for host, port in chosen + seeds + announced:
            try:
                nodes = await self._ask(host, port)
            except (redis_errors.AuthenticationError, redis_errors.AuthorizationError):
                raise  # a refusal: no other node will take us either
            except Exception as exc:  # any failure of this node: the next may answer
                failure = failure if tls_refused(failure) else exc
                silent.add((host, port))
                continue
            self._announced = [node.address for node in nodes]
            self.members = tuple(sorted(host_port(*node.address) for node in nodes))
            if self.slot is None:
                return await self._choose((host, port), before, nodes, silent)
            owner = next((node for node in nodes if node.serves(self.slot)), None)
            if owner is not None:
                return owner.address
            if not tls_refused(failure):
                failure = redis_errors.ClusterDownError(
                    f"{host_port(host, port)} knows no live master of slot {self.slot}"
                )
        raise failure

    async def _choose(
        self, answered: tuple[str, int], before: tuple[str, int] | None, nodes: list[Node], silent: set[tuple[str, int]]
    ) -> tuple[str, int]:
        """Broadcast mode, once `answered` answered with `nodes`: the node chosen `before` if that is it; else the
        preferred slot's master if the nodes say it is live and it answers too, else `answered`. Every connection
        goes there from now on, unless another one chose meanwhile: then it follows that one, not a third node."""
        choice = answered
        if answered != before and self.home is not None:
            choice = await self._live_master(self.home, nodes, silent) or answered
        if self._chosen is not None and self._chosen != before:
            return self._chosen  # another connection moved while we asked
        self._chosen = choice  # until it no longer answers
        return choice

    async def _live_master(self, slot: int, nodes: list[Node], silent: set[tuple[str, int]]) -> tuple[str, int] | None:
        """The master of `slot` if `nodes` say it is live and it says so itself; None if it does not answer (dead
        but not failed yet, say: no reason to wait for the cluster's failover)."""
        owner = next((node.address for node in nodes if node.serves(slot)), None)
        if owner is None or owner in silent:
            return None
        try:
            own = await self._ask(*owner)
        except Exception:  # any failure of that node: any other live node will do
            return None
        return owner if any(node.address == owner and node.serves(slot) for node in own) else None

    async def _ask(self, host: str, port: int) -> list[Node]:
        conn = (SSLConnection if self._tls else Connection)(host=host, port=port, **self._probe_kwargs)
        try:
            await conn.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
            await conn.send_command("CLUSTER", "NODES")
            reply: bytes = await conn.read_response()
        except redis_errors.ConnectionError as exc:
            if not isinstance(conn, SSLConnection) or tls_refused(exc):
                raise
            timeout = self._probe_kwargs["socket_connect_timeout"]
            refusal = await tls_refusal(host, port, conn.ssl_context.get(), timeout)
            if refusal is None:
                raise
            raise refusal from exc
        finally:
            await conn.disconnect(nowait=True)
        nodes = (Node.parse(line, host) for line in reply.decode().splitlines() if line.strip())
        return [node for node in nodes if node.known]


@dataclass(frozen=True, slots=True)
class Node:
    """One line of CLUSTER NODES: `<id> <ip:port@bus[,hostname]> <flags> <master> <ping> <pong> <epoch> <link>
    <slot ranges...>`."""

    address: tuple[str, int]
    live_master: bool
    slots: tuple[tuple[int, int], ...]
    known: bool  # a member: not a node still in handshake, nor one whose address is unknown

    @classmethod
    def parse(cls, line: str, asked: str) -> Node:
        fields = line.split()
        host, _, port = fields[1].partition("@")[0].rpartition(":")
        flags = fields[2].split(",")
        spans = [span.partition("-") for span in fields[8:] if not span.startswith("[")]  # [..]: slots migrating
        return cls(
            (host.strip("[]") or asked, int(port)),
            "master" in flags and "fail" not in flags and "fail?" not in flags,
            tuple((int(first), int(last or first)) for first, _, last in spans),
            "handshake" not in flags and "noaddr" not in flags and int(port) > 0,
        )

    def serves(self, slot: int) -> bool:
        return self.live_master and any(first <= slot <= last for first, last in self.slots)


class ClusterConnection(Connection):
    """A connection that asks its `ClusterMap` where to go each time it connects."""

    def __init__(self, *, cluster: ClusterMap, **kwargs: Any) -> None:
        self.cluster = cluster
        super().__init__(**kwargs)

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if not self.is_connected:
            self.host, self.port = await self.cluster.address()
        await super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ELSEWHERE as exc:
            await self.disconnect(nowait=True)
            where = host_port(self.host, self.port)
            raise redis_errors.ConnectionError(f"{where} does not serve the slot now: {exc}") from exc


class ClusterSSLConnection(ClusterConnection, SSLConnection):
    pass
