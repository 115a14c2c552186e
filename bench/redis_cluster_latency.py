"""Where a broadcast's milliseconds go on a Redis Cluster, without syncar: one publisher paced at 100 and 1,000
messages a second, one subscriber in another process, each a plain socket speaking RESP, on the test suite's local
cluster (three masters, three replicas); publish-to-delivery latency from a monotonic timestamp in each body.

    .venv/bin/python -m bench.redis_cluster_latency [--seconds 4] [--reps 3] [--size 256]

The rows, alternated within each repetition and summarised as medians of the reps' p50 and p99:

- classic, the publisher on one master and the subscriber on another: the message crosses the cluster bus;
- the same with TCP_NODELAY set on every node's outbound cluster-bus sockets (from outside, with pidfd_getfd(2);
  Redis 7.0 sets it on the links it accepts but not on those it connects, so Nagle's algorithm holds a small message
  until the peer acknowledges the previous one), then cleared again;
- classic, both on one node: no bus hop;
- sharded (SPUBLISH, SSUBSCRIBE), both on the master of the channel's slot, where a sharded subscriber must be;
- sharded, the subscriber on that master's replica: the shard's copy crosses the bus as classic's does.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import multiprocessing
import os
import socket
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

from tests.brokers.redis_cluster import ClusterNode, RedisCluster

CHANNEL = b"syncar-latency"
RATES = (100, 1000)
SYS_PIDFD_GETFD = 438  # x86-64 and arm64


@dataclass(frozen=True)
class Row:
    name: str
    publish: bytes
    subscribe: bytes
    publisher: ClusterNode
    subscriber: ClusterNode
    nodelay: bool = False


def command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args)


def connect(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def subscriber(port: int, verb: bytes, count: int, ready: Event, found: Queue[list[float]]) -> None:
    """Subscribe, say so, then the latency of `count` messages in ms (their bodies start `T<monotonic ns>;`)."""
    conn = connect(port)
    conn.sendall(command(verb, CHANNEL))
    pending = b""
    while b"\r\n:1\r\n" not in pending:
        pending += conn.recv(65536)
    ready.set()
    latencies: list[float] = []
    pending = b""
    while len(latencies) < count:
        data = conn.recv(65536)
        now = time.monotonic_ns()
        if not data:
            break
        pending += data
        while (start := pending.find(b"T")) >= 0 and (end := pending.find(b";", start)) >= 0:
            latencies.append((now - int(pending[start + 1 : end])) / 1e6)
            pending = pending[end + 1 :]
    found.put(latencies)


def measure(row: Row, rate: int, seconds: float, size: int) -> tuple[float, float]:
    """p50 and p99 in ms of `rate` messages a second for `seconds`."""
    count = int(rate * seconds)
    context = multiprocessing.get_context("spawn")
    ready, found = context.Event(), context.Queue()
    reader = context.Process(target=subscriber, args=(row.subscriber.port, row.subscribe, count, ready, found))
    reader.start()
    try:
        if not ready.wait(10):
            raise RuntimeError(f"{row.name}: the subscriber did not subscribe")
        with connect(row.publisher.port) as out:
            began = time.monotonic()
            for n in range(count):
                time.sleep(max(0.0, began + n / rate - time.monotonic()))
                body = b"T%d;" % time.monotonic_ns()
                out.sendall(command(row.publish, CHANNEL, body.ljust(size, b"x")))
                if not out.recv(100).startswith(b":"):
                    raise RuntimeError(f"{row.name}: {row.publish.decode()} refused")
        latencies = sorted(found.get(timeout=30))
    finally:
        reader.join(5)
        if reader.is_alive():
            reader.kill()
    return latencies[len(latencies) // 2], latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)]


def outbound_bus_sockets(cluster: RedisCluster) -> Iterator[tuple[int, int]]:
    """(pid, fd) of every node's sockets connected to another node's bus port (the links it opened)."""
    bus_ports = {node.bus_port for node in cluster.nodes.values()}
    for node in cluster.nodes.values():
        assert node.process is not None
        pid = node.process.pid
        inodes = set()
        for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].split(":")[1], 16) in bus_ports and fields[3] == "01":  # established, to a bus port
                inodes.add(f"socket:[{fields[9]}]")
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    yield pid, int(fd)


def set_bus_nodelay(cluster: RedisCluster, value: int) -> int:
    """TCP_NODELAY on (1) or off (0) on the outbound bus sockets, through a copy of each; how many."""
    libc = ctypes.CDLL(None, use_errno=True)
    done = 0
    for pid, fd in outbound_bus_sockets(cluster):
        pidfd = os.pidfd_open(pid)
        try:
            copy = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
            if copy < 0:
                raise OSError(ctypes.get_errno(), f"pidfd_getfd of fd {fd} of pid {pid}")
            with socket.socket(fileno=copy) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, value)
            done += 1
        finally:
            os.close(pidfd)
    return done


def rows(cluster: RedisCluster) -> list[Row]:
    owner = cluster.owner(CHANNEL.decode())
    other = next(node for node in cluster.nodes.values() if node is not owner and cluster.is_master(node))
    replica = cluster.replica_of(owner)
    classic, sharded = (b"PUBLISH", b"SUBSCRIBE"), (b"SPUBLISH", b"SSUBSCRIBE")
    return [
        Row("classic, master A to master B", *classic, owner, other),
        Row("classic, A to B, bus links TCP_NODELAY", *classic, owner, other, nodelay=True),
        Row("classic, both on master A", *classic, owner, owner),
        Row("sharded, both on the slot's master", *sharded, owner, owner),
        Row("sharded, master to its replica", *sharded, owner, replica),
    ]


def main(seconds: float, reps: int, size: int) -> None:
    cluster = RedisCluster()
    try:
        cluster.start()
        table = rows(cluster)
        found: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for rep in range(reps):
            print(f"rep {rep + 1}/{reps}, load {os.getloadavg()[0]:.1f}", flush=True)
            for row in table:
                if row.nodelay:
                    set_bus_nodelay(cluster, 1)
                try:
                    for rate in RATES:
                        found.setdefault((row.name, rate), []).append(measure(row, rate, seconds, size))
                finally:
                    if row.nodelay:
                        set_bus_nodelay(cluster, 0)
        load = ", ".join(f"{figure:.1f}" for figure in os.getloadavg())
        print(f"\n{size} B bodies, {seconds:g} s per rate, medians of {reps} reps; load average now {load}")
        print(f"| {'':40} | " + " | ".join(f"p50/p99 ms at {rate:,}/s" for rate in RATES) + " |")
        for row in table:
            cells = []
            for rate in RATES:
                runs = found[(row.name, rate)]
                cells.append(f"{statistics.median(r[0] for r in runs):.2f}/{statistics.median(r[1] for r in runs):.2f}")
            print(f"| {row.name:40} | " + " | ".join(f"{cell:>21}" for cell in cells) + " |")
    finally:
        cluster.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per row and rate")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--size", type=int, default=256, help="body bytes")
    args = parser.parse_args()
    main(args.seconds, args.reps, args.size)
