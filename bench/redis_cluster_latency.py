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
- sharded, the subscriber on that master's replica: the shard's copy crosses the bus as classic's does;
- syncar: two daemons (`--backend redis+cluster://<one node>`), an app on each, the first publishing Feathers
  events of `--size` bytes of data: the daemons given two masters, A (the channel's slot master) and B (as is,
  then with TCP_NODELAY on the bus), then both given A. A broadcast daemon goes to the master of its key's slot
  when it is live, so the one given B meets the other on A (before that change it stayed on B and the event
  crossed the bus).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import orjson

from bench.payload import Events, now_us, stamp_of
from tests.brokers import free_port
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
    syncar: bool = False


def command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args)


def connect(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def subscriber(port: int, verb: bytes, count: int, ready: Event, found: Queue[list[float]]) -> None:
    """Subscribe, say so, then the latency of `count` messages in ms (their bodies start `T<monotonic ns>;`), or
    of those that came until 3 s of silence."""
    conn = connect(port)
    conn.sendall(command(verb, CHANNEL))
    pending = b""
    while b"\r\n:1\r\n" not in pending:
        pending += conn.recv(65536)
    ready.set()
    latencies: list[float] = []
    pending = b""
    conn.settimeout(3.0)
    with contextlib.suppress(TimeoutError):
        while len(latencies) < count and (data := conn.recv(65536)):
            now = time.monotonic_ns()
            pending += data
            while (start := pending.find(b"T")) >= 0 and (end := pending.find(b";", start)) >= 0:
                latencies.append((now - int(pending[start + 1 : end])) / 1e6)
                pending = pending[end + 1 :]
    found.put(latencies)


def app(path: str, subscribe: list[dict[str, str]]) -> socket.socket:
    """An app of a syncar daemon, past its welcome."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10.0)
    conn.connect(path)
    conn.sendall(orjson.dumps({"type": "hello", "client": "bench", "subscribe": subscribe}) + b"\n")
    welcome = b""
    while b"\n" not in welcome:
        welcome += conn.recv(65536)
    return conn


def syncar_subscriber(path: str, count: int, ready: Event, found: Queue[list[float]]) -> None:
    """As `subscriber`, an app of the daemon at `path` receiving the events `bench.payload` makes."""
    conn = app(path, [{"path": "messages", "event": "created"}])
    ready.set()
    latencies: list[float] = []
    pending = b""
    conn.settimeout(3.0)
    with contextlib.suppress(TimeoutError):
        while len(latencies) < count and (data := conn.recv(1 << 20)):
            now = now_us()
            *lines, pending = (pending + data).split(b"\n")
            latencies += [(now - stamp_of(line)) / 1000 for line in lines if line.startswith(b'{"type":"event"')]
    found.put(latencies)


@contextlib.contextmanager
def daemons(row: Row) -> Iterator[tuple[str, str]]:
    """Two syncar daemons, given the publisher's node and the subscriber's (each goes to the master of the
    channel's slot, if it is live); their sockets' paths."""
    where = tempfile.mkdtemp(prefix="syncar-bench-cluster-")
    paths = (f"{where}/a.sock", f"{where}/b.sock")
    started = []
    try:
        for label, node in (("a", row.publisher), ("b", row.subscriber)):
            argv = ["--backend", f"redis+cluster://{node.address}", "--socket", f"{where}/{label}.sock"]
            argv += ["--key", CHANNEL.decode(), "--instance-id", label, "--http", f"127.0.0.1:{free_port()}"]
            started.append(subprocess.Popen([sys.executable, "-m", "sidecar", "run", *argv, "--log-level", "warning"]))
        deadline = time.monotonic() + 30
        while not all(os.path.exists(path) for path in paths):
            if time.monotonic() > deadline or any(daemon.poll() is not None for daemon in started):
                raise RuntimeError(f"{row.name}: the daemons did not start")
            time.sleep(0.1)
        yield paths
    finally:
        for daemon in started:
            daemon.terminate()
        for daemon in started:
            daemon.wait(10)
        shutil.rmtree(where, ignore_errors=True)


def measure(row: Row, rate: int, seconds: float, size: int, sockets: tuple[str, str] | None) -> tuple[float, float]:
    """p50 and p99 in ms of `rate` messages a second for `seconds`: raw, or through the daemons at `sockets`."""
    count = int(rate * seconds)
    context = multiprocessing.get_context("spawn")
    ready, found = context.Event(), context.Queue()
    if sockets is None:
        reader = context.Process(target=subscriber, args=(row.subscriber.port, row.subscribe, count, ready, found))
        out = connect(row.publisher.port)
        send = raw_sender(out, row, size)
    else:
        reader = context.Process(target=syncar_subscriber, args=(sockets[1], count, ready, found))
        out = app(sockets[0], [])
        events = Events(size)
        send = lambda n: out.sendall(events.frame(n, now_us()))  # noqa: E731
    reader.start()
    try:
        if not ready.wait(10):
            raise RuntimeError(f"{row.name}: the subscriber did not subscribe")
        began = time.monotonic()
        for n in range(count):
            time.sleep(max(0.0, began + n / rate - time.monotonic()))
            send(n)
        latencies = sorted(found.get(timeout=60))
    finally:
        out.close()
        reader.join(5)
        if reader.is_alive():
            reader.kill()
    if len(latencies) < count * 0.9:
        raise RuntimeError(f"{row.name}: {len(latencies)} of {count} messages arrived")
    return latencies[len(latencies) // 2], latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)]


def raw_sender(out: socket.socket, row: Row, size: int) -> Callable[[int], None]:
    def send(_: int) -> None:
        body = b"T%d;" % time.monotonic_ns()
        out.sendall(command(row.publish, CHANNEL, body.ljust(size, b"x")))
        if not out.recv(100).startswith(b":"):
            raise RuntimeError(f"{row.name}: {row.publish.decode()} refused")

    return send


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
    """TCP_NODELAY on (1) or off (0) on the outbound bus sockets, through a copy of each; how many had it already
    (a link the node renewed meanwhile, after a late PONG, is a new socket without it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    had = 0
    for pid, fd in outbound_bus_sockets(cluster):
        pidfd = os.pidfd_open(pid)
        try:
            copy = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
            if copy < 0:
                raise OSError(ctypes.get_errno(), f"pidfd_getfd of fd {fd} of pid {pid}")
            with socket.socket(fileno=copy) as sock:
                had += sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, value)
        finally:
            os.close(pidfd)
    return had


def clear_bus_nodelay(cluster: RedisCluster, row: Row) -> None:
    """Back to Redis's own setting; say if a bus link lost TCP_NODELAY during the row (the node renewed it)."""
    kept, links = set_bus_nodelay(cluster, 0), sum(1 for _ in outbound_bus_sockets(cluster))
    if kept < links:
        print(f"  {row.name}: {links - kept} of {links} outbound bus links were renewed without TCP_NODELAY")


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
        Row("syncar, daemons given masters A and B", *classic, owner, other, syncar=True),
        Row("syncar, given A and B, bus TCP_NODELAY", *classic, owner, other, nodelay=True, syncar=True),
        Row("syncar, both daemons given master A", *classic, owner, owner, syncar=True),
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
                with contextlib.ExitStack() as stack:
                    sockets = stack.enter_context(daemons(row)) if row.syncar else None
                    if row.nodelay:
                        set_bus_nodelay(cluster, 1)
                        stack.callback(clear_bus_nodelay, cluster, row)
                    for rate in RATES:
                        found.setdefault((row.name, rate), []).append(measure(row, rate, seconds, size, sockets))
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
    parser.add_argument("--size", type=int, default=256, help="body bytes (raw), data bytes of an event (syncar)")
    args = parser.parse_args()
    main(args.seconds, args.reps, args.size)
