"""A Redis Sentinel group for the tests: one master, one replica and three sentinels on loopback, started once.

Each sentinel is `redis-server <its config> --sentinel` with the config file in its own temp dir (Sentinel
rewrites it). `down-after-milliseconds` is 2000 (1000 gave a spurious second failover in 2 of 8 runs at a
load of 12 on 2 cores) and `failover-timeout` 3000, so a killed master is replaced within
a few seconds. `fail_over()` kills the master as a crash would, waits until the sentinels name the replica master,
and starts the old master again as a replica of the new one, so the group is whole again for the next test;
`switch_over()` has the sentinels demote a live master.
"""

from __future__ import annotations

import socket
import time
from typing import BinaryIO

from tests.brokers import START_TIMEOUT, BrokerServer, port_open, require_binary
from tests.brokers.redis import RedisServer, RedisTlsServer

MASTER_NAME = "mymaster"
DOWN_AFTER_MS = 2000
FAILOVER_TIMEOUT_MS = 3000


def command(port: int, *args: str) -> list[str]:
    """A command to the server on `port`, answered as a list of strings (RESP2, read by hand: the tests' side
    needs no event loop)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall((f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)).encode())
        reader = conn.makefile("rb")
        return _flatten(_read(reader))


def _read(reader: BinaryIO) -> object:
    line = reader.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:].decode()
    if kind in (b"+", b":"):
        return rest
    if kind == b"-":
        raise RuntimeError(rest)
    if kind == b"$":
        return None if rest == "-1" else reader.read(int(rest) + 2)[:-2].decode()
    if kind == b"*":
        return [] if rest == "-1" else [_read(reader) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected reply {line!r}")


def _flatten(reply: object) -> list[str]:
    if isinstance(reply, list):
        return [item for part in reply for item in _flatten(part)]
    return [] if reply is None else [str(reply)]


class RedisNode(RedisServer):
    """A data node of the group: a master, or a replica of the node on `replica_of`."""

    def __init__(self, replica_of: int | None = None) -> None:
        super().__init__()
        self.replica_of = replica_of

    def listen_args(self) -> list[str]:
        replica = ["--replicaof", "127.0.0.1", str(self.replica_of)] if self.replica_of else []
        return [*super().listen_args(), *replica]


class SentinelServer(BrokerServer):
    """A sentinel watching the master on `master_port`; with `tls`, the certificates of that (TLS-only) master: the
    sentinel then speaks only TLS, to its clients and to the master."""

    name = "redis-sentinel"

    def __init__(self, master_port: int, quorum: int = 2, tls: RedisTlsServer | None = None) -> None:
        self.binary = require_binary("redis-server")
        super().__init__()
        listen = f"port {self.port}\n"
        if tls is not None:
            listen = (
                f"port 0\ntls-port {self.port}\ntls-replication yes\ntls-ca-cert-file {tls.ca}\n"
                f"tls-cert-file {tls.server_cert}\ntls-key-file {tls.server_key}\n"
                f"tls-client-cert-file {tls.client_cert}\ntls-client-key-file {tls.client_key}\n"
            )
        (self.dir / "sentinel.conf").write_text(
            f"{listen}bind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )

    @property
    def uri(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{MASTER_NAME}"

    def command(self) -> list[str]:
        return [self.binary, str(self.dir / "sentinel.conf"), "--sentinel", "--logfile", "", "--daemonize", "no"]


class SentinelGroup:
    """The master, its replica and three sentinels; `uri` lists the three sentinels."""

    def __init__(self) -> None:
        master = RedisNode()
        self.nodes = {master.port: master}
        replica = RedisNode(replica_of=master.port)
        self.nodes[replica.port] = replica
        self.sentinels = [SentinelServer(master.port) for _ in range(3)]
        self.start_seconds = 0.0

    @property
    def uri(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}"

    def start(self) -> None:
        began = time.monotonic()
        for server in (*self.nodes.values(), *self.sentinels):
            server.start()
        self.wait_whole()
        self.start_seconds = time.monotonic() - began

    def master_port(self) -> int:
        """The master's port, as the first sentinel that answers says."""
        for sentinel in self.sentinels:
            if port_open(sentinel.port):
                return int(command(sentinel.port, "SENTINEL", "get-master-addr-by-name", MASTER_NAME)[1])
        raise RuntimeError("no sentinel answers")

    @property
    def master(self) -> RedisNode:
        return self.nodes[self.master_port()]

    def wait_whole(self) -> None:
        """Until every sentinel sees the master healthy, its replica linked and the two other sentinels."""
        deadline = time.monotonic() + START_TIMEOUT
        while not self._whole():
            if time.monotonic() > deadline:
                raise RuntimeError(f"sentinel group not whole within {START_TIMEOUT}s; see {self.sentinels[0].dir}")
            time.sleep(0.1)

    def _whole(self) -> bool:
        try:
            ports = {self.master_port()}
            for sentinel in self.sentinels:
                info = command(sentinel.port, "SENTINEL", "master", MASTER_NAME)
                fields = dict(zip(info[::2], info[1::2], strict=False))
                ports.add(int(fields["port"]))
                if fields["flags"] != "master" or fields["num-slaves"] != "1" or fields["num-other-sentinels"] != "2":
                    return False
                replica = command(sentinel.port, "SENTINEL", "replicas", MASTER_NAME)
                if "s_down" in ",".join(replica) or "disconnected" in ",".join(replica):
                    return False
            replica_port = next(port for port in self.nodes if port not in ports)
            return len(ports) == 1 and "master_link_status:up" in command(replica_port, "INFO", "replication")[0]
        except (OSError, RuntimeError, KeyError, StopIteration):
            return False

    def fail_over(self) -> float:
        """kill -9 the master; return how long the sentinels took to name another; restore the group."""
        old = self.master
        old.kill()
        began = time.monotonic()
        while self.master_port() == old.port:
            if time.monotonic() - began > START_TIMEOUT:
                raise RuntimeError(f"the sentinels did not fail over within {START_TIMEOUT}s")
            time.sleep(0.05)
        took = time.monotonic() - began
        old.replica_of = self.master_port()
        old.start()
        self.wait_whole()
        return took

    def switch_over(self) -> None:
        """`SENTINEL FAILOVER` while the master is up: the sentinels promote the replica. They demote the old
        master only about 10 s later (and then disconnect its clients); it is demoted here at once, its clients
        left connected, so that they meet what a client of a demoted master meets: READONLY."""
        old = self.master_port()
        command(self.sentinels[0].port, "SENTINEL", "failover", MASTER_NAME)
        deadline = time.monotonic() + START_TIMEOUT
        while self.master_port() == old:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sentinels did not switch over within {START_TIMEOUT}s")
            time.sleep(0.05)
        self.nodes[old].replica_of = new = self.master_port()  # how to start it, should a later test restart it
        command(old, "REPLICAOF", "127.0.0.1", str(new))
        self.wait_whole()

    def cleanup(self) -> None:
        for server in (*self.sentinels, *self.nodes.values()):
            server.cleanup()
