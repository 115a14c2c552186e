"""Broadcast on a Redis Cluster: classic pub/sub (any node; the cluster bus copies every message to every node)
against sharded pub/sub (SPUBLISH and SSUBSCRIBE on the master of the channel's slot), on the test suite's local
cluster (three masters, three replicas, cluster-node-timeout 1500 ms).

    .venv/bin/python -m bench.redis_cluster [--messages 50000] [--runs 3]

Throughput: one publisher pipelines `--messages` bodies of 1.2 KB (a Feathers event) in batches of 100 to one node,
one subscriber on another node (classic) or on the slot's master (sharded, where it must be) counts them; events/s
from the first to the last received. Recovery: the publisher sends 1,000 a second, the node the subscriber reads is
killed with SIGKILL; each side reconnects where `backends.redis_cluster.ClusterMap` says (classic: any live node;
sharded: the slot's master, the dead one until the cluster promotes its replica) and the subscriber resubscribes.
Printed: how long the subscriber heard nothing, and how many messages it missed. The cluster is made whole again
between runs. Latency at 100 and 1,000 messages/s, and where it goes: `python -m bench.redis_cluster_latency`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

from redis.asyncio.connection import Connection

from backends.redis_cluster import ClusterMap
from tests.brokers.redis_cluster import RedisCluster

CHANNEL = "feathers-sync"
BODY = b"x" * 1200
RATE = 1000
KILL_AFTER, RUN_FOR = 2.0, 10.0


class Side:
    """One connection of a mode: PUBLISH/SUBSCRIBE (classic) or SPUBLISH/SSUBSCRIBE (sharded)."""

    def __init__(self, cluster: RedisCluster, sharded: bool, avoid: int | None = None) -> None:
        seeds = [("127.0.0.1", port) for port in cluster.nodes if port != avoid]
        self.map = ClusterMap(seeds, {"protocol": 2, "socket_connect_timeout": 1.0}, tls=False)
        if sharded:
            self.map.place(CHANNEL)
        self.publish, self.subscribe = ("SPUBLISH", "SSUBSCRIBE") if sharded else ("PUBLISH", "SUBSCRIBE")
        self.conn: Connection | None = None

    async def connect(self) -> Connection:
        """Until a node takes us (with a 50 ms pause between attempts)."""
        while True:
            try:
                host, port = await self.map.address()
                conn = Connection(host=host, port=port, protocol=2, socket_connect_timeout=1.0)
                await conn.connect()  # type: ignore[no-untyped-call]
                self.conn = conn
                return conn
            except Exception:  # any failure: try again, as the backend's reconnect does
                await asyncio.sleep(0.05)


async def throughput(cluster: RedisCluster, sharded: bool, messages: int) -> float:
    sub = Side(cluster, sharded)
    conn = await sub.connect()
    await conn.send_command(sub.subscribe, CHANNEL)
    await conn.read_response()
    pub = Side(cluster, sharded, avoid=None if sharded else conn.port)  # classic: another node than the reader's
    out = await pub.connect()
    got, first, last = 0, 0.0, 0.0

    async def read() -> None:
        nonlocal got, first, last
        while got < messages:
            reply = await conn.read_response()
            if isinstance(reply, list) and reply[0] in (b"message", b"smessage"):
                got += 1
                first, last = first or time.monotonic(), time.monotonic()

    reader = asyncio.create_task(read())
    for start in range(0, messages, 100):
        count = min(100, messages - start)
        await out.send_packed_command(out.pack_commands([(pub.publish, CHANNEL, BODY)] * count))
        for _ in range(count):
            await out.read_response()
    await asyncio.wait_for(reader, 60)
    await conn.disconnect()
    await out.disconnect()
    return messages / (last - first)


async def recovery(cluster: RedisCluster, sharded: bool) -> dict[str, Any]:
    sub, pub = Side(cluster, sharded), Side(cluster, sharded)
    heard: list[tuple[float, int]] = []
    sent = 0

    async def subscriber() -> None:
        while True:
            conn = await sub.connect()
            try:
                await conn.send_command(sub.subscribe, CHANNEL)
                while True:
                    reply = await conn.read_response(timeout=0.5)
                    if reply is None:  # silent for 0.5 s: a dead node gives no error until then
                        raise ConnectionError("silent")
                    if isinstance(reply, list) and reply[0] in (b"message", b"smessage"):
                        heard.append((time.monotonic(), int(reply[2])))
            except Exception:  # lost: reconnect and resubscribe
                await conn.disconnect(nowait=True)

    async def publisher() -> None:
        nonlocal sent
        began = time.monotonic()
        conn = await pub.connect()
        while time.monotonic() - began < RUN_FOR:
            try:
                await conn.send_command(pub.publish, CHANNEL, str(sent))
                await asyncio.wait_for(conn.read_response(), 0.5)
                sent += 1
            except Exception:  # lost: reconnect; the message is sent again
                await conn.disconnect(nowait=True)
                conn = await pub.connect()
            await asyncio.sleep(max(0.0, began + sent / RATE - time.monotonic()))
        await conn.disconnect()

    while not cluster.is_master(cluster.nodes[(await sub.connect()).port]):  # classic: a master's death is the case
        sub = Side(cluster, sharded)
    assert sub.conn is not None
    victim = cluster.nodes[sub.conn.port]
    await sub.conn.disconnect()
    reading = asyncio.create_task(subscriber())
    publishing = asyncio.create_task(publisher())
    await asyncio.sleep(KILL_AFTER)
    victim.kill()
    killed = time.monotonic()
    await publishing
    await asyncio.sleep(1.0)
    reading.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reading
    after = [at for at, _ in heard if at > killed]
    gap = (after[0] - max(at for at, _ in heard if at <= killed)) if after else float("inf")
    await asyncio.to_thread(cluster.wait_whole)
    return {"silent_s": round(gap, 2), "sent": sent, "lost": sent - len({n for _, n in heard})}


async def main(messages: int, runs: int) -> None:
    cluster = RedisCluster()
    try:
        await asyncio.to_thread(cluster.start)
        for run in range(runs):
            for sharded in (False, True):
                mode = "sharded" if sharded else "classic"
                rate = await throughput(cluster, sharded, messages)
                found = await recovery(cluster, sharded)
                print(f"run {run + 1} {mode:8} {rate:9,.0f} msg/s  kill -9 of the reader's master: {found}", flush=True)
    finally:
        cluster.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.runs))
