"""nats_internals.BulkParser against nats-py's own parser: the same calls for the same bytes, however reads cut them."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.aio.transport import TcpTransport
from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from backends.nats_internals import BulkParser


class Recorder:
    """What a parser calls on its client, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        assert type(data) is bytes
        self.calls.append(("msg", sid, subject, reply, data, headers))

    async def _process_ping(self) -> None:
        self.calls.append(("ping",))

    async def _process_pong(self) -> None:
        self.calls.append(("pong",))

    async def _process_info(self, info: dict[str, Any]) -> None:
        self.calls.append(("info", info))

    async def _process_err(self, message: str) -> None:
        self.calls.append(("err", message))


def msg(sid: int, payload: bytes, reply: bytes = b"") -> bytes:
    return b"MSG k.events %d %b%d\r\n%b\r\n" % (sid, reply + b" " if reply else b"", len(payload), payload)


HEADERS = b"NATS/1.0\r\nA: b\r\n\r\n"
STREAM = b"".join(
    [
        b'INFO {"server_id":"x","max_payload":1048576}\r\n',
        msg(1, b'{"v":1}'),
        msg(2, b""),
        b"PONG\r\n",
        msg(1, bytes(range(256)) * 300, reply=b"_INBOX.a"),
        b"+OK\r\n",
        b"HMSG k.events 3 %d %d\r\n%b%b\r\n" % (len(HEADERS), len(HEADERS) + 5, HEADERS, b"hello"),
        msg(1, b"MSG k.events 1 5\r\n\r\n" * 50),
        b"PING\r\n",
        b"-ERR 'Slow Consumer'\r\n",
        msg(4, b"x" * 70_000),
        msg(4, b"\r\n"),
        b"PONG\r\n",
    ]
)


async def parsed(parser_class: type[Parser], reads: list[bytes]) -> list[tuple[Any, ...]]:
    recorder = Recorder()
    parser = parser_class(recorder)
    for data in reads:
        await parser.parse(data)
    assert not parser.buf, "bytes left over"
    return recorder.calls


def cut(data: bytes, at: list[int]) -> list[bytes]:
    edges = [0, *sorted(at), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(edges)]


async def test_the_same_calls_as_nats_py_in_one_read_and_in_reads_of_each_size() -> None:
    expected = await parsed(Parser, [STREAM])
    assert [call[0] for call in expected].count("msg") == 7
    assert await parsed(BulkParser, [STREAM]) == expected
    for size in (1, 2, 3, 7, 64, 4096, 32768):
        reads = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
        assert await parsed(BulkParser, reads) == expected, f"reads of {size} bytes"


async def test_the_same_calls_as_nats_py_however_reads_cut_the_bytes() -> None:
    expected = await parsed(Parser, [STREAM])
    chance = random.Random(17)
    for _ in range(300):
        reads = cut(STREAM, chance.sample(range(1, len(STREAM)), chance.randint(1, 40)))
        assert await parsed(BulkParser, reads) == expected, [len(read) for read in reads]


async def test_a_reset_forgets_a_payload_half_read() -> None:
    recorder = Recorder()
    parser = BulkParser(recorder)
    await parser.parse(msg(1, b"x" * 1000)[:500])
    parser.reset()  # nats-py's, on a reconnect
    await parser.parse(msg(2, b"fresh"))
    assert recorder.calls == [("msg", 2, b"k.events", b"", b"fresh", None)]


async def test_an_unknown_operation_is_a_protocol_error_as_in_nats_py() -> None:
    with pytest.raises(ProtocolError):
        await parsed(BulkParser, [msg(1, b"ok") + b"NONSENSE\r\n"])


async def test_the_state_that_reading_as_bytes_arrive_relies_on() -> None:
    """nats_internals._ReadHere and deliver_from_reader use nats-py's transport's StreamReader and writer, a
    subscription's sid, and asyncio's StreamReader's waiter and buffer: gone or renamed, this says which. (Without
    them the connection is read as nats-py reads it: tests/backends/test_nats.py's handed-over test fails too.)"""
    transport = TcpTransport()  # type: ignore[no-untyped-call]  # unannotated in nats-py
    for name in ("_io_reader", "_io_writer"):
        assert hasattr(transport, name), f"nats-py's TcpTransport.{name} is gone: see nats_internals._ReadHere"
    assert isinstance(getattr(Client(), "_transport", ...), type(None)), "nats-py's Client._transport is gone"
    assert getattr(Subscription(Client(), 7), "_id", None) == 7, "nats-py's Subscription._id is not its sid"
    stream = asyncio.StreamReader()
    assert getattr(stream, "_waiter", ...) is None and getattr(stream, "_buffer", None) == bytearray(), (
        "asyncio's StreamReader._waiter or _buffer is gone: see nats_internals._waits_on_nothing"
    )
