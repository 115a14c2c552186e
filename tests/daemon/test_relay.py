"""Local relay through one daemon: fan-out, echo, filters, order, acks, resume."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.conftest import Connect
from tests.utils import publish_frame, run_daemon


async def test_publish_reaches_every_other_client_not_the_publisher(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock):
        a = await connect(sock, {"client": "a"})
        b = await connect(sock, {"client": "b"})
        c = await connect(sock, {"client": "c"})
        await a.send(publish_frame(data={"text": "hi"}, context={"params": {}}))
        await a.send({"type": "ping"})
        for client in (b, c):
            event = await client.frame_of("event")
            assert event["path"] == "messages"
            assert event["event"] == "created"
            assert event["data"] == {"text": "hi"}
            assert event["context"] == {"params": {}}
            assert event["origin"] == a.welcome["instance"]
            assert event["seq"] == 1
        # The publisher's next frame is the pong: its own event never came back.
        assert (await a.frame())["type"] == "pong"


async def test_welcome_describes_the_daemon(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock, instance_id="node-1"):
        client = await connect(sock, {"client": "x"})
        welcome = client.welcome
        assert welcome["version"] == 1
        assert welcome["instance"] == "node-1"
        assert welcome["backend"] == "local"
        assert welcome["broker"] == "up"
        assert welcome["seq"] == 0
        assert isinstance(welcome["epoch"], str)


async def test_echo_when_asked(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock):
        a = await connect(sock, {"echo": True})
        await a.send(publish_frame(data=1))
        assert (await a.frame_of("event"))["data"] == 1


async def test_client_without_hello_gets_defaults(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock):
        a = await connect(sock)
        await a.send({"type": "ping"})
        assert (await a.frame())["type"] == "welcome"
        assert (await a.frame())["type"] == "pong"
        b = await connect(sock, {})
        await b.send(publish_frame(data=2))
        assert (await a.frame_of("event"))["data"] == 2


async def test_subscription_patterns_filter_by_path_and_event(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock):
        pub = await connect(sock, {})
        msgs = await connect(sock, {"subscribe": ["messages"]})
        removed = await connect(sock, {"subscribe": [{"path": "*", "event": "removed"}]})
        api = await connect(sock, {"subscribe": [{"path": "api/*", "event": "pat?hed"}]})
        silent = await connect(sock, {"subscribe": []})
        await pub.send(publish_frame("users", "created", 1))
        await pub.send(publish_frame("messages", "created", 2))
        await pub.send(publish_frame("users", "removed", 3))
        await pub.send(publish_frame("api/orders", "patched", 4))
        await pub.send(publish_frame("messages", "removed", 5))
        assert [e["data"] for e in await msgs.events(2)] == [2, 5]
        assert [e["data"] for e in await removed.events(2)] == [3, 5]
        assert [e["data"] for e in await api.events(1)] == [4]
        await silent.send({"type": "ping"})
        assert (await silent.frame())["type"] == "pong"


async def test_events_from_one_client_arrive_in_order(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock):
        pub = await connect(sock, {})
        sub = await connect(sock, {})
        count = 5000
        await pub.send(b"".join(b'{"type":"publish","path":"p","event":"e","data":%d}\n' % i for i in range(count)))
        events = await sub.events(count)
        assert [e["data"] for e in events] == list(range(count))
        assert [e["seq"] for e in events] == list(range(1, count + 1))


async def test_events_large_and_small_arrive_whole_and_in_order(sock: Path, connect: Connect) -> None:
    """Frames of 4 KiB or more go to the socket as they are, between the small ones joined around them."""
    async with run_daemon(sock):
        pub = await connect(sock, {})
        sub = await connect(sock, {})
        texts = ["x" * (n % 7 * 3000) + str(n) for n in range(300)]
        await pub.send(b"".join(orjson.dumps(publish_frame(data={"text": text})) + b"\n" for text in texts))
        events = await sub.events(len(texts))
        assert [e["data"]["text"] for e in events] == texts


async def test_a_value_over_two_lines_among_publishes_is_bad_frames_and_reaches_nobody(
    sock: Path, connect: Connect
) -> None:
    """The publishes of a read are decoded in one call, which reads any white space between values; a value over two
    lines must still be two frames that are not JSON: taken, its line feed would end another app's frame early, and
    the app would write a frame of its own making into that app's stream."""
    async with run_daemon(sock):
        pub = await connect(sock, {})
        sub = await connect(sock, {})
        publish = b'{"type":"publish","path":"m","event":"e","data":"%b"}'
        await pub.send(
            b'{"type":"publish","path":"m","event":"e","data":[\n{"type":"event","seq":1,"origin":"x","id":"1","path":"m","event":"e"}]}\n'
            + publish % b"a"
            + publish % b"b"
            + b"\n"
            + publish % b"c"
            + b"\n"
        )
        assert [(await pub.frame_of("error"))["code"] for _ in range(3)] == ["invalid_json"] * 3
        assert (await sub.frame_of("event"))["data"] == "c"


async def test_ack_names_the_event_id(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock):
        pub = await connect(sock, {})
        await pub.send(publish_frame(id="evt-1", ack=True))
        ack = await pub.frame_of("ack")
        assert ack == {"type": "ack", "id": "evt-1"}


async def test_event_keeps_the_client_id_in_the_publisher_scope(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock):
        pub = await connect(sock, {"client_id": "publisher-secret"})
        sub = await connect(sock, {})
        await pub.send(publish_frame(id="my-id"))
        await pub.send(publish_frame())
        named, unnamed = [e["id"] for e in await sub.events(2)]
        scope, dot, app_id = named.partition(".")
        assert (len(scope), dot, app_id) == (16, ".", "my-id")
        assert "publisher-secret" not in named
        assert unnamed[16] == ":"  # syncar's own ids: a shape no app can publish


async def test_outbox_full_is_refused_with_nack_but_local_delivery_happens(sock: Path, connect: Connect) -> None:
    # One of these events costs about 1,500 bytes as the outbox counts them (sidecar/outbox.py entry_cost: its JSON once
    # with the syncar codec, 512 bytes, 256 for the ack): one fits.
    async with run_daemon(sock, outbox_bytes=2000) as daemon:
        daemon.outbox.set_connected(False)  # as if the broker were away: nothing drains
        pub = await connect(sock, {})
        sub = await connect(sock, {})
        big = "x" * 600
        await pub.send(publish_frame(data=big, id="1", ack=True))
        await pub.send(publish_frame(data=big, id="2", ack=True))
        nack = await pub.frame_of("nack")
        assert nack["id"] == "2"
        assert nack["code"] == "outbox_full"
        assert [e["id"].partition(".")[2] for e in await sub.events(2)] == ["1", "2"]
        daemon.outbox.set_connected(True)
        assert (await pub.frame_of("ack"))["id"] == "1"


async def test_resume_replays_what_was_missed(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock):
        pub = await connect(sock, {})
        sub = await connect(sock, {"client_id": "sub-1"})
        await pub.send(publish_frame(data=1))
        first = (await sub.events(1))[0]
        await sub.close()
        for i in (2, 3, 4):
            await pub.send(publish_frame(data=i))
        await pub.send({"type": "ping"})
        await pub.frame_of("pong")
        again = await connect(
            sock, {"client_id": "sub-1", "resume": {"epoch": sub.welcome["epoch"], "seq": first["seq"]}}
        )
        assert again.welcome["resumed"] is True
        assert [e["data"] for e in await again.events(3)] == [2, 3, 4]
        await pub.send(publish_frame(data=5))
        assert [e["data"] for e in await again.events(1)] == [5]


async def test_resume_does_not_replay_own_publishes(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock):
        a = await connect(sock, {"client_id": "a"})
        b = await connect(sock, {})
        await a.send(publish_frame(data="mine"))
        await b.send(publish_frame(data="theirs"))
        await a.frame_of("event")
        await a.close()
        again = await connect(sock, {"client_id": "a", "resume": {"epoch": a.welcome["epoch"], "seq": 0}})
        assert [e["data"] for e in await again.events(1)] == ["theirs"]


async def test_resume_too_far_behind_says_so(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock, replay_events=3):
        pub = await connect(sock, {})
        for i in range(10):
            await pub.send(publish_frame(data=i))
        await pub.send({"type": "ping"})
        await pub.frame_of("pong")
        late = await connect(sock, {"resume": {"epoch": pub.welcome["epoch"], "seq": 1}})
        assert late.welcome["resumed"] is False
        gap = await late.frame()
        assert gap["type"] == "error"
        assert gap["code"] == "resume_gap"
        other_epoch = await connect(sock, {"resume": {"epoch": "not-this-run", "seq": 9}})
        assert other_epoch.welcome["resumed"] is False
        assert (await other_epoch.frame())["code"] == "resume_gap"
