"""Anything can arrive on the socket: each kind of bad input gets an error frame or a clean close,
and the daemon and every other client keep working."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar.hello import MAX_WILDCARD_PATTERNS
from tests.conftest import Connect
from tests.utils import TIMEOUT, RawClient, SpawnedDaemon, metric, publish_frame, run_daemon, wait_for


async def _still_relays(sock: Path, connect: Connect) -> None:
    """A fresh pair of clients can still exchange an event."""
    a = await connect(sock, {})
    b = await connect(sock, {})
    await a.send(publish_frame(data="still alive"))
    assert (await b.frame_of("event"))["data"] == "still alive"


async def test_malformed_json_gets_error_and_connection_stays(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock):
        bad = await connect(sock, {})
        listener = await connect(sock, {})
        await bad.send(b'{"type": "publish", "path": \n')
        error = await bad.frame()
        assert error["type"] == "error"
        assert error["code"] == "invalid_json"
        await bad.send(publish_frame(data="after the bad one"))
        assert (await listener.frame_of("event"))["data"] == "after the bad one"


async def test_json_nested_too_deep_gets_error_and_connection_stays(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock):
        client = await connect(sock, {})
        depth = 200_000
        await client.send(b'{"type":"publish","path":"p","event":"e","data":' + b"[" * depth + b"]" * depth + b"}\n")
        error = await client.frame()
        assert (error["type"], error["code"]) == ("error", "invalid_json")
        await _still_relays(sock, connect)


async def test_valid_json_that_is_not_an_object(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock):
        client = await connect(sock, {})
        for line in (b"[1,2,3]", b'"publish"', b"42", b"null", b"true"):
            await client.send(line + b"\n")
            error = await client.frame()
            assert (error["type"], error["code"]) == ("error", "invalid_frame"), line
        await _still_relays(sock, connect)


async def test_unknown_type(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock):
        client = await connect(sock, {})
        await client.send({"type": "subscribe-all-the-things"})
        error = await client.frame()
        assert error["code"] == "unknown_type"
        assert "subscribe-all-the-things" in error["message"]


async def test_missing_and_mistyped_fields(sock: Path, connect: Connect) -> None:
    cases: list[tuple[bytes, str]] = [
        (b'{"path":"messages"}', "type"),
        (b'{"type":7}', "type"),
        (b'{"type":"publish","event":"created"}', "path"),
        (b'{"type":"publish","path":"messages"}', "event"),
        (b'{"type":"publish","path":["x"],"event":"created"}', "path"),
        (b'{"type":"publish","path":"m","event":"created","id":12}', "id"),
        (b'{"type":"publish","path":"m","event":"created","id":"1","ack":"yes"}', "ack"),
        (b'{"type":"publish","path":"m","event":"created","ack":true}', "id"),
        (b'{"type":"publish","path":"m","event":""}', "event"),
    ]
    async with run_daemon(sock):
        client = await connect(sock, {})
        listener = await connect(sock, {})
        for line, field in cases:
            await client.send(line + b"\n")
            error = await client.frame()
            assert error["code"] == "invalid_frame", line
            assert field in error["message"], (line, error)
        await client.send(publish_frame(data="valid"))
        # Nothing from the bad frames was relayed: the first event the listener sees is the valid one.
        assert (await listener.frame_of("event"))["data"] == "valid"


async def test_bad_hello(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock):
        wrong_version = await connect(sock)
        await wrong_version.send({"type": "hello", "version": 99})
        assert (await wrong_version.frame())["code"] == "unsupported_version"
        bad_patterns = await connect(sock)
        await bad_patterns.send({"type": "hello", "subscribe": [{"path": 5}]})
        error = await bad_patterns.frame()
        assert error["code"] == "invalid_frame"
        assert "subscribe" in error["message"]
        twice = await connect(sock, {})
        await twice.send({"type": "hello"})
        assert (await twice.frame())["code"] == "invalid_frame"


async def test_line_over_max_frame_bytes_is_discarded_and_next_frames_count(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock, max_frame_bytes=4096):
        client = await connect(sock, {})
        listener = await connect(sock, {})
        huge = b'{"type":"publish","path":"m","event":"e","data":"' + b"x" * 100_000 + b'"}\n'
        await client.send(huge + b'{"type":"publish","path":"m","event":"e","data":"small"}\n')
        error = await client.frame()
        assert error["code"] == "frame_too_large"
        assert (await listener.frame_of("event"))["data"] == "small"


async def test_binary_garbage(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock):
        client = await connect(sock, {})
        await client.send(os.urandom(3000).replace(b"\n", b"\x00") + b"\n\xff\xfe\x00\x01\n")
        codes = {(await client.frame())["code"] for _ in range(2)}
        assert codes <= {"invalid_json", "invalid_frame"}
        await client.send({"type": "ping"})
        assert (await client.frame_of("pong"))["type"] == "pong"
        await _still_relays(sock, connect)


async def test_half_a_frame_then_silence_then_close(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock) as daemon:
        client = await connect(sock, {})
        await client.send(b'{"type":"publish","id":"half","ack":true,"path":"messages","eve')
        await _still_relays(sock, connect)  # the stalled client blocks nobody
        client.writer.write_eof()
        rest = [orjson.loads(line) for line in (await client.closed()).splitlines()]
        assert ("truncated_frame", "half") in [(frame.get("code"), frame.get("id")) for frame in rest], rest
        await wait_for(lambda: len(daemon.connections) == 2, what="the half-frame connection to be dropped")


async def test_client_that_never_reads_is_disconnected_and_others_keep_going(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock, client_queue_bytes=256 * 1024) as daemon:
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a plain socket nobody reads from
        stuck.connect(str(sock))
        stuck.sendall(b'{"type":"hello"}\n')
        reader = await connect(sock, {})
        publisher = await connect(sock, {})
        payload = b"y" * 8000
        # ~3 MB in all, far over the stuck client's bound; in rounds the live reader keeps up with.
        for _ in range(40):
            await publisher.send(b'{"type":"publish","path":"p","event":"e","data":"%s"}\n' % payload * 10)
            assert len(await reader.events(10)) == 10
        await wait_for(lambda: len(daemon.connections) == 2, what="the stuck client to be disconnected")
        leftover = bytearray()
        while chunk := stuck.recv(1 << 20):
            leftover += chunk
        stuck.close()
        assert len(leftover) < 2 * 1024 * 1024, "more than the queue bound plus socket buffers was held for it"


async def test_500_concurrent_connections_with_memory_bounded(sock: Path) -> None:
    max_frame = 64 * 1024
    daemon = SpawnedDaemon(sock, "--max-clients", "1000", "--max-frame-bytes", str(max_frame))
    try:
        await daemon.ready()
        baseline = daemon.rss_bytes()
        clients = await asyncio.gather(*(RawClient.connect(sock, {"client": f"c{i}"}) for i in range(500)))
        try:
            await clients[0].send(publish_frame(data="to everyone"))
            for client in clients[1:]:
                assert (await client.frame_of("event"))["data"] == "to everyone"
            # Each of them now sends garbage and an oversized frame.
            for client in clients:
                client.writer.write(b"garbage\n" + b"z" * 1_100_000 + b"\n")
            for client in clients:
                await client.writer.drain()
                assert (await client.frame())["code"] == "invalid_json"
                assert (await client.frame())["code"] == "frame_too_large"
            # What a connection may hold is bounded by the frame limit, whatever it is sent.
            growth = daemon.rss_bytes() - baseline
            assert growth < 500 * max_frame + 48 * 1024 * 1024, f"daemon RSS grew by {growth / 1e6:.1f} MB"
        finally:
            await asyncio.gather(*(client.close() for client in clients))
        assert await daemon.stop() == 0
    finally:
        daemon.kill()


async def test_too_many_clients_are_refused_cleanly(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock, max_clients=3):
        keep = [await connect(sock, {}) for _ in range(3)]
        extra = await connect(sock)
        rest = await extra.closed()
        assert b'"too_many_clients"' in rest
        await keep[0].send(publish_frame(data="fine"))
        assert (await keep[1].frame_of("event"))["data"] == "fine"


async def test_no_frame_to_an_app_holds_a_raw_carriage_return(sock: Path, connect: Connect) -> None:
    """A raw CR is JSON whitespace, but Node's readline and Python's text-mode readers end a line there: syncar
    sends every frame as one line by those rules too, whatever whitespace the publisher used."""

    async def line_of(client: RawClient) -> bytes:
        async with asyncio.timeout(TIMEOUT):
            return await client.reader.readline()

    async with run_daemon(sock):
        publisher = await connect(sock, {})
        listener = await connect(sock, {})
        await publisher.send(
            b'{"type":"publish","path":"p","event":"e","data":{"a":\r1,\r"b":[\r2]},"context":\r{"c":"\\r\\n"}}\n'
        )
        line = await line_of(listener)
        assert b"\r" not in line, line
        event = orjson.loads(line)
        assert (event["data"], event["context"]) == ({"a": 1, "b": [2]}, {"c": "\r\n"})
        resumed = await connect(sock, {"resume": {"epoch": listener.welcome["epoch"], "seq": 0}})
        line = await line_of(resumed)  # the replayed frame too
        assert b"\r" not in line and orjson.loads(line)["data"] == {"a": 1, "b": [2]}


async def test_an_error_answering_a_frame_carries_its_id(sock: Path, connect: Connect) -> None:
    """So that a client waiting for the ack of that publish hears of it (issue 13)."""
    head = b'{"type":"publish","id":"%s","ack":true,"path":"m","event":"e","data":'
    cases: list[tuple[bytes, str, str | None]] = [
        (head % b"empty-path" + b'1,"path":""}', "invalid_frame", "empty-path"),
        (
            b'{"type":"publish","path":"m","event":"e","ack":true,"id":"' + b"i" * 300 + b'"}',
            "invalid_frame",
            "i" * 300,
        ),
        (head % b"too-large" + b'"' + b"x" * 2_000_000 + b'"}', "frame_too_large", "too-large"),
        (head % b"cut-json" + b'{"a":}', "invalid_json", "cut-json"),
        (b'{"type":"publsh","id":"typo"}', "unknown_type", "typo"),
        # Not readable: an id in the data, or beyond the head kept of a line over the limit.
        (b'{"type":"publish","path":"","event":"e","data":{"id":"inner"}}', "invalid_frame", None),
        (
            b'{"type":"publish","path":"m","event":"e","data":"' + b"x" * 2_000_000 + b'","id":"late"}',
            "frame_too_large",
            None,
        ),
    ]
    async with run_daemon(sock):
        client = await connect(sock, {})
        for line, code, event_id in cases:
            await client.send(line + b"\n")
            error = await client.frame()
            assert (error["type"], error["code"], error.get("id")) == ("error", code, event_id), line[:80]
        await _still_relays(sock, connect)


async def test_hello_over_the_pattern_limits_is_refused_naming_the_limit(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock, max_patterns=100):
        client = await connect(sock)
        for subscribe, words in [
            (["messages"] * 101, "at most 100 (--max-patterns)"),
            (["m" * 257], "at most 256 characters"),
            ([{"path": "messages", "event": "e" * 257}], "at most 256 characters"),
            ([f"api{i}/*" for i in range(MAX_WILDCARD_PATTERNS + 1)], f"at most {MAX_WILDCARD_PATTERNS}"),
            ([{"path": "*/v?/*"}], "between two"),
        ]:
            await client.send({"type": "hello", "subscribe": subscribe})
            error = await client.frame()
            assert (error["type"], error["code"]) == ("error", "invalid_frame"), error
            assert "subscribe" in error["message"] and words in error["message"], error
        # Refused, not cut off: a hello within the limits is taken.
        most = ["messages"] * (100 - MAX_WILDCARD_PATTERNS) + [f"api{i}/*" for i in range(MAX_WILDCARD_PATTERNS)]
        await client.send({"type": "hello", "subscribe": most})
        assert (await client.frame())["type"] == "welcome"


async def test_resume_from_a_seq_never_sent_is_a_gap(sock: Path, connect: Connect) -> None:
    """A seq beyond the last event this run numbered cannot be a position the client had: it missed events it
    cannot name, so it is told (before: `resumed: true` and nothing more)."""
    async with run_daemon(sock):
        publisher = await connect(sock, {})
        await publisher.send(publish_frame(data="one"))
        await publisher.send({"type": "ping"})
        await publisher.frame_of("pong")
        ahead = await connect(sock, {"resume": {"epoch": publisher.welcome["epoch"], "seq": 5}})
        assert ahead.welcome["resumed"] is False
        gap = await ahead.frame()
        assert (gap["type"], gap["code"], gap["seq"]) == ("error", "resume_gap", 1), gap
        assert "beyond" in gap["message"]
        await publisher.send(publish_frame(data="two"))
        assert (await ahead.frame_of("event"))["data"] == "two"  # live events follow


async def test_resume_and_hello_fields_of_the_wrong_type_are_refused(sock: Path, connect: Connect) -> None:
    """`"seq": true` was taken as 1 (and `"version": true` as 1, `"echo": "yes"` as true): JSON types are kept."""
    async with run_daemon(sock):
        client = await connect(sock)
        cases: list[tuple[dict[str, object], str]] = [
            ({"resume": {"epoch": "e", "seq": True}}, "resume.seq"),
            ({"resume": {"epoch": "e", "seq": "3"}}, "resume.seq"),
            ({"resume": {"epoch": "e", "seq": 1.0}}, "resume.seq"),
            ({"version": True}, "version"),
            ({"echo": "yes"}, "echo"),
            ({"echo": 1}, "echo"),
        ]
        for hello, field in cases:
            await client.send({"type": "hello", **hello})
            error = await client.frame()
            assert (error["type"], error["code"]) == ("error", "invalid_frame"), (hello, error)
            assert error["message"].startswith(f"hello: {field}: "), (hello, error)
        await client.send({"type": "hello", "resume": {"epoch": "e", "seq": 0}, "echo": True, "version": 1})
        assert (await client.frame())["type"] == "welcome"


async def test_resume_with_no_replay_buffer_is_a_gap_and_live_events_follow(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock, replay_events=0):
        publisher = await connect(sock, {})
        for data in ("one", "two"):
            await publisher.send(publish_frame(data=data))
        await publisher.send({"type": "ping"})
        await publisher.frame_of("pong")
        late = await connect(sock, {"resume": {"epoch": publisher.welcome["epoch"], "seq": 1}})
        assert late.welcome["resumed"] is False
        assert (await late.frame())["code"] == "resume_gap"
        await publisher.send(publish_frame(data="three"))
        assert (await late.frame_of("event"))["data"] == "three"


async def test_a_malformed_trace_context_is_said_and_the_event_goes_without_it(sock: Path, connect: Connect) -> None:
    """W3C Trace Context: an invalid traceparent is ignored (its tracestate with it). The event is not lost: it is
    relayed and acknowledged; the `error` carries no `id`, which would tell the app its publish was refused."""
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    bad: list[dict[str, object]] = [
        {"traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"},  # uppercase
        {"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},  # all-zero trace id
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"},  # all-zero parent id
        {"traceparent": "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},  # version ff
        {"traceparent": good + "-extra"},
        {"traceparent": 12},  # not a string: the slow path
        {"tracestate": "rojo=1"},  # no traceparent
        {"traceparent": good, "tracestate": "x" * 513},
        {"traceparent": good, "tracestate": "rojo=\u00e9"},
    ]
    async with run_daemon(sock):
        publisher = await connect(sock, {})
        listener = await connect(sock, {})
        for n, fields in enumerate(bad):
            await publisher.send({**publish_frame(data=n, id=f"t{n}", ack=True), **fields})
            error = await publisher.frame_of("error")
            assert (error["code"], "id" in error) == ("invalid_trace_context", False), fields
            assert "relayed without it" in error["message"]
            assert (await publisher.frame_of("ack"))["id"] == f"t{n}"
            event = await listener.frame_of("event")
            assert (event["data"], "traceparent" in event, "tracestate" in event) == (n, False, False)


async def test_a_client_cut_off_that_then_reads_all_leaves_no_error_behind(
    sock: Path, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow client's connection is closed, then aborted after a grace if it has not drained; one that drained
    # first must not be aborted (asyncio's own transports raise in a callback of the loop, AttributeError).
    monkeypatch.setattr("sidecar.connection.CLOSE_GRACE", 0.5)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        async with run_daemon(sock, client_queue_bytes=64 * 1024) as daemon:
            stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stuck.connect(str(sock))
            stuck.sendall(b'{"type":"hello"}\n')
            publisher = await connect(sock, {})
            frame = b'{"type":"publish","path":"p","event":"e","data":"%s"}\n' % (b"y" * 8000)

            def cut() -> bool:
                return metric(daemon.metrics, "syncar_client_disconnects_total", reason="slow_client") == 1

            for _ in range(1000):  # 80 KB a round: the stuck client's 64 KiB queue and socket buffers fill in a few
                if cut():
                    break
                await publisher.send(frame * 10)
                await asyncio.sleep(0)  # the daemon reads them
            assert cut(), "the stuck client was not cut off"
            stuck.setblocking(False)
            while await loop.sock_recv(stuck, 1 << 20):  # what the daemon still had for it, to the end
                pass
            stuck.close()
            passed = loop.create_future()
            loop.call_later(1.0, passed.set_result, None)  # past the grace: the abort would have run by now
            await passed
    finally:
        loop.set_exception_handler(None)
    assert errors == []
