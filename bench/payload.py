"""The events every contestant carries, as bytes made from one template, and the send time read back out of them.

The payload size is the size of the event's record (`data`) as JSON. Every contestant carries the same event a
Feathers 5 app emits for `messages.create(record)`: feathers-sync puts the hook context on the wire too (the record
four times over), and so do syncar's Node plugin and, here, its benchmark clients. The raw ceiling publishes
exactly feathers-sync's body. So for a payload of N bytes every broker message is about 4N + 250 bytes.

The record carries `n` (its number) and `t`: the send time in microseconds of CLOCK_MONOTONIC, which Python's
`time.monotonic_ns()` and Node's `process.hrtime.bigint()` both read, so a receiver in another process can tell
how long the event took.
"""

from __future__ import annotations

import time

#: A number of the width the benchmark's numbers have, to size the padding.
_SAMPLE_N = 100_000


def now_us() -> int:
    return time.monotonic_ns() // 1000


def pad_length(size: int) -> int:
    """Characters of padding that make the record `{"n","t","text","id"}` `size` bytes of JSON."""
    empty = b'{"n":%d,"t":%d,"text":"","id":%d}' % (_SAMPLE_N, now_us(), _SAMPLE_N)
    return max(size - len(empty), 0)


#: What a traced publish carries (W3C Trace Context, with a tracestate of two vendors), as an app's tracer sends it.
TRACE_FIELDS = (
    b',"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"'
    b',"tracestate":"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"'
)


class Events:
    """Makes the bytes of event number `n` sent at `t`: a syncar publish frame (with `trace`, carrying trace context),
    or feathers-sync's body."""

    def __init__(self, size: int, *, trace: bool = False) -> None:
        pad = b"x" * pad_length(size)
        args = b'{"n":%d,"t":%d,"text":"' + pad + b'"}'
        record = b'{"n":%d,"t":%d,"text":"' + pad + b'","id":%d}'
        # feathers-sync's body for a create, key for key what Feathers 5.0.50 + feathers-sync 3.1.1 send.
        self._body = (
            b'{"event":"created","path":"messages","data":'
            + record
            + b',"context":{"arguments":['
            + args
            + b',{"provider":"rest"}],"event":"created","result":'
            + record
            + b',"data":'
            + args
            + b',"params":{"provider":"rest"},"path":"messages","method":"create","type":"around"}}'
        )
        self._frame = (
            b'{"type":"publish","path":"messages","event":"created","data":'
            + record
            + b',"context":'
            + self._body[self._body.index(b'{"arguments"') : -1]
            + (TRACE_FIELDS if trace else b"")
            + b"}\n"
        )

    def body(self, n: int, t: int) -> bytes:
        return self._body % (n, t, n, n, t, n, t, n, n, t)

    def frame(self, n: int, t: int) -> bytes:
        return self._frame % (n, t, n, n, t, n, t, n, n, t)

    def frames(self, first: int, count: int, t: int) -> bytes:
        template = self._frame
        return b"".join([template % (n, t, n, n, t, n, t, n, n, t) for n in range(first, first + count)])


def stamp_of(message: bytes) -> int:
    """The `t` of the first record in a message: the data's, which comes before the context in every format.

    Raises:
        ValueError: there is none.
    """
    start = message.index(b'"t":') + 4
    return int(message[start : message.index(b",", start)])
