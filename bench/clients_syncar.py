"""The syncar contestant's load generators: raw NDJSON over the daemon's unix socket, on blocking sockets.

No event loop and no client library: a publisher writes many publish frames per `sendall`, a subscriber reads a
MiB at a time and, in a throughput run, only counts newlines. That keeps them well ahead of the daemon.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import orjson

from bench.payload import Events, now_us, stamp_of
from bench.tally import Pacer, Spec, Tally

READ_BYTES = 1 << 20
EVENT_PREFIX = b'{"type":"event"'
ERROR_MARK = b'"type":"error"'


def _connect(spec: Spec, hello: dict[str, Any]) -> socket.socket:
    """Connect, say hello, and read up to the end of the welcome."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10.0)
    sock.connect(spec.target)
    sock.sendall(orjson.dumps({"type": "hello", **hello}) + b"\n")
    welcome = b""
    while b"\n" not in welcome:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("syncar closed the connection before its welcome")
        welcome += chunk
    line, _, rest = welcome.partition(b"\n")
    if orjson.loads(line).get("type") != "welcome":
        raise ConnectionError(f"expected a welcome, got {line[:200]!r}")
    if rest:
        raise ConnectionError("frames after the welcome before the publisher started")
    return sock


def publish(spec: Spec, ready: Callable[[], None]) -> dict[str, Any]:
    # subscribe [] : publish-only, so the daemon never writes events back to the load generator.
    sock = _connect(spec, {"client": "bench-pub", "subscribe": []})
    # Blocking without a timeout, so MSG_DONTWAIT reads return at once; the orchestrator bounds our life.
    sock.settimeout(None)
    ready()
    events, pacer = Events(spec.size, trace=spec.trace), Pacer(spec)
    errors = 0
    while (step := pacer.next()) is not None:
        count, pause = step
        if not count:
            time.sleep(pause)
            continue
        sock.sendall(events.frames(pacer.sent, count, now_us()))
        pacer.sent_now(count)
        if pacer.ticks % 64 == 0:
            errors += _errors_waiting(sock)
    result = pacer.finish()
    errors += _errors_waiting(sock)
    sock.close()
    return {**result, "errors": errors}


def _errors_waiting(sock: socket.socket) -> int:
    """Error frames the daemon sent us (outbox_full, say), read without blocking."""
    found = 0
    for _ in range(64):
        try:
            chunk = sock.recv(READ_BYTES, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            break
        if not chunk:
            break
        found += chunk.count(ERROR_MARK)
    return found


def subscribe(spec: Spec, ready: Callable[[], None]) -> dict[str, Any]:
    sock = _connect(spec, {"client": "bench-sub", "subscribe": [{"path": "messages", "event": "created"}]})
    sock.settimeout(0.05)
    tally = Tally(spec)
    ready()
    tail = b""
    while not tally.finished():
        try:
            data = sock.recv(READ_BYTES)
        except TimeoutError:
            continue
        if not data:
            break
        if not tally.latency:
            # Every frame after the welcome is an event (a status frame comes only if the broker goes away).
            tally.add(data.count(b"\n"))
            continue
        lines = (tail + data).split(b"\n")
        tail = lines.pop()
        count = 0
        for line in lines:
            if line.startswith(EVENT_PREFIX):
                tally.stamp(stamp_of(line))
                count += 1
        if count:
            tally.add(count)
    sock.close()
    return tally.result()
