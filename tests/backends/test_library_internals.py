"""The broker libraries' private parts that syncar relies on, checked on the installed versions.

constraints.txt pins the versions they were tested with (scripts/lock). An upgrade that renames or drops one of
them fails here, by name, rather than as a silent fallback (`getattr(..., default)`), a hang waiting for a PONG
nobody resolves, or a reconnect loop that no longer backs off.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Iterator
from importlib.metadata import version

import aio_pika
import aiormq
import aiormq.connection
import nats
import pytest
from aiormq.abc import ChannelFrame
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.protocol.parser import Parser
from yarl import URL

from backends.amqp_connection import BackingOffRobustConnection
from backends.amqp_internals import BulkFrameReceiver
from backends.nats_internals import write_with_ping
from tests.brokers import serve
from tests.brokers.nats import NatsServer


def relied_on(library: str, what: str, by: str) -> str:
    return (
        f"{library} {version(library)} no longer has {what}, which {by} relies on: fix that code, or pin the "
        "version constraints.txt had (scripts/lock)"
    )


def reads(cls: type, attribute: str) -> bool:
    return f"self.{attribute}" in inspect.getsource(cls)


def test_nats_client_state_that_syncar_uses() -> None:
    client = Client()
    expected = {"_server_info": dict, "_pending": list, "_pending_data_size": int, "_pongs": list}
    for name, kind in expected.items():
        assert isinstance(getattr(client, name, None), kind), relied_on(
            "nats-py", f"Client.{name} ({kind.__name__})", "backends/nats_internals.py"
        )
    assert hasattr(client, "_transport"), relied_on("nats-py", "Client._transport", "nats_internals.write_with_ping")
    # nats-py's own code must still read them: its flusher sends _pending, its reader resolves _pongs.
    for name in ("_pending", "_pending_data_size", "_pongs", "_server_info", "_transport"):
        assert reads(Client, name), relied_on("nats-py", f"a use of Client.{name}", "nats_internals.write_with_ping")
    # All it does with what _pongs holds is set_result(True) (nats_internals._Pong stands in for our futures).
    source = inspect.getsource(Client)
    assert source.count("self._pongs.pop(0)") == 1 and "future.set_result(True)" in source, relied_on(
        "nats-py", "Client._process_pong resolving _pongs with set_result(True) alone", "nats_internals._Pong"
    )
    assert "in self._pongs" not in source, relied_on("nats-py", "_pongs only appended to and popped", "_Pong")


def test_nats_parser_state_that_bulk_parser_uses() -> None:
    client = Client()
    assert isinstance(getattr(client, "_ps", None), Parser), relied_on(
        "nats-py", "Client._ps (its Parser)", "nats_internals.read_in_bulk"
    )
    parser = Parser(client)
    for name, kind in {"buf": bytearray, "state": int, "needed": int, "header_needed": int, "msg_arg": dict}.items():
        assert isinstance(getattr(parser, name, None), kind), relied_on(
            "nats-py", f"Parser.{name} ({kind.__name__})", "nats_internals.BulkParser"
        )
    assert "await self._ps.parse(" in inspect.getsource(Client), relied_on(
        "nats-py", "Client._read_loop feeding what it reads to self._ps.parse", "nats_internals.BulkParser"
    )
    assert list(inspect.signature(dict(inspect.getmembers(Client))["_process_msg"]).parameters) == [
        "self",
        "sid",
        "subject",
        "reply",
        "data",
        "headers",
    ], relied_on("nats-py", "Client._process_msg(sid, subject, reply, data, headers)", "nats_internals.BulkParser")


def test_jetstream_publish_futures_that_syncar_fails_on_a_lost_connection() -> None:
    js = Client().jetstream()
    assert isinstance(getattr(js, "_publish_async_futures", None), dict), relied_on(
        "nats-py", "JetStreamContext._publish_async_futures", "nats_internals.release_publish_slots"
    )
    assert reads(JetStreamContext, "_publish_async_futures")


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    yield from serve(NatsServer())


@pytest.mark.nats
async def test_nats_server_info_and_pongs_on_a_live_connection(server: NatsServer) -> None:
    client = await nats.connect(server.uri, allow_reconnect=False)
    try:
        info = getattr(client, "_server_info", {})
        assert info.get("max_payload") == client.max_payload, relied_on(
            "nats-py", "the server's INFO in Client._server_info", "nats_internals.offered_tls"
        )
        await client.publish("syncar.internals", b"x")
        async with asyncio.timeout(5):  # nats-py's reader must resolve the PONG we queued on its _pongs
            assert await write_with_ping(client)
    finally:
        await client.close()


def test_aiormq_channel_state_that_syncar_publishes_with() -> None:
    by = "backends/amqp_internals.publish"
    source = inspect.getsource(aiormq.Channel)
    # basic_publish numbers messages on the channel and hands frame groups to the connection's writer through
    # write_queue; publish() does the same, splitting bodies at max_content_size, and confirms a batch with a future
    # of the channel's (rejected when the channel closes).
    for name in ("delivery_tag", "write_queue", "create_future", "is_closed", "number", "max_content_size"):
        assert f"self.{name}" in source, relied_on("aiormq", f"Channel.{name}", by)
    assert "len(body) < self.max_content_size" in source, relied_on(
        "aiormq", "Channel._split_body cutting bodies at max_content_size", "amqp_internals.FrameMarshal"
    )
    fields = {field.name for field in dataclasses.fields(ChannelFrame)}
    assert {"payload", "should_close", "drain_future"} <= fields, relied_on("aiormq", "ChannelFrame's fields", by)
    assert "channel_frame.payload" in inspect.getsource(aiormq.Connection), relied_on(
        "aiormq", "the writer writing each ChannelFrame's payload whole", by
    )


def test_aiormq_reader_that_syncar_reads_frames_with() -> None:
    by = "backends/amqp_internals (BulkFrameReceiver, Confirms, Deliveries)"
    connection = inspect.getsource(aiormq.Connection)
    # connect() makes its receiver by the module's name for it, which read_frames_in_bulk() replaced; the reader
    # iterates it and hands each frame to its channel's queue by calling that queue's put, which Confirms and
    # Deliveries stand in for on their channels.
    assert "frame_receiver = FrameReceiver(reader)" in connection, relied_on("aiormq", "FrameReceiver(reader)", by)
    assert aiormq.connection.FrameReceiver is BulkFrameReceiver, relied_on("aiormq", "connection.FrameReceiver", by)
    assert "async for weight, channel, frame in frame_receiver" in connection, relied_on(
        "aiormq", "Connection.__reader iterating the FrameReceiver", by
    )
    assert "await ch.frames.put((weight, frame))" in connection, relied_on(
        "aiormq", "Connection.__reader calling the channel's frames.put", by
    )
    assert "await self.get_frame()" in inspect.getsource(aiormq.connection.FrameReceiver.__anext__), relied_on(
        "aiormq", "FrameReceiver.__anext__ reading with get_frame", by
    )
    assert "await self.frames.get()" in inspect.getsource(aiormq.Channel), relied_on(
        "aiormq", "Channel reading its frames from the frames queue", by
    )


def test_aiormq_reader_that_syncar_takes_frames_before() -> None:
    by = "backends/amqp_internals (BulkFrameReceiver._arrived, _take_as_they_arrive)"
    connection = inspect.getsource(aiormq.Connection)
    # A channel's receiver is found as the argument of the connection's reader Task, a TaskWrapper of aiormq's.
    assert "self._reader_task = self.create_task(self.__reader(frame_receiver))" in connection, relied_on(
        "aiormq", "Connection._reader_task running __reader(frame_receiver)", by
    )
    # amqp_internals.Writer writes as the writer Task does, with the StreamWriter that Task was given.
    assert "self._writer_task = self.create_task(self.__writer(writer))" in connection, relied_on(
        "aiormq", "Connection._writer_task running __writer(writer)", "amqp_internals.Writer"
    )
    assert "writer.write(channel_frame.payload)" in connection, relied_on(
        "aiormq", "the writer Task writing each group whole as it takes it", "amqp_internals.Writer"
    )
    assert "task: TaskWrapper = TaskWrapper(self.loop.create_task(coro))" in inspect.getsource(aiormq.base), relied_on(
        "aiormq", "create_task returning a TaskWrapper with the Task as .task", by
    )
    # The bytes arrive through the StreamReader's feed_data, which BulkFrameReceiver stands in for.
    assert "reader.feed_data(data)" in inspect.getsource(asyncio.StreamReaderProtocol.data_received), relied_on(
        "asyncio", "StreamReaderProtocol.data_received calling feed_data", by
    )
    # What the reader is handed keeps a busy connection from looking stuck, hence a heartbeat now and then.
    assert "self.__last_frame_time = self.loop.time()" in connection, relied_on(
        "aiormq", "a connection's last frame time set by its reader alone", "amqp_internals.HANDED_EVERY"
    )


async def test_aio_pika_reconnect_interval_is_read_where_syncar_backs_off() -> None:
    # In a running loop: aio-pika's constructor asks for the current one, which an earlier test may have unset.
    connection = BackingOffRobustConnection(URL("amqp://guest:guest@127.0.0.1/?reconnect_interval=0.3"))
    # aio-pika's constructor sets reconnect_interval from the URI: our setter takes it as the first wait...
    assert connection.base_interval == 0.3, relied_on(
        "aio-pika", "RobustConnection setting self.reconnect_interval in __init__", "backends/amqp.py"
    )
    # ...and its reconnect loop reads it for each wait: our getter draws the next delay there.
    assert reads(aio_pika.RobustConnection, "reconnect_interval"), relied_on(
        "aio-pika", "RobustConnection reading self.reconnect_interval", "BackingOffRobustConnection"
    )


def test_aio_pika_connects_to_the_url_syncar_moves_through_the_hosts() -> None:
    # Each attempt of the reconnect loop connects to self.url, which Hosts moves; a lost connection runs
    # _on_connection_close, where BackingOffRobustConnection moves to another host.
    assert "self.url" in inspect.getsource(aio_pika.Connection.connect), relied_on(
        "aio-pika", "Connection.connect connecting to self.url", "BackingOffRobustConnection"
    )
    assert "_on_connection_close" in inspect.getsource(aio_pika.Connection.connect), relied_on(
        "aio-pika", "Connection._on_connection_close as the close callback", "BackingOffRobustConnection"
    )
