"""What every backend promises (backends/base.py), for every class and mode, local included, and on the broker
clusters of contract.CLUSTERS (durable mode on a Redis Cluster serves the streams of its key only: no second
topic); see contract.py."""

from __future__ import annotations

import asyncio

import pytest

from backends.base import BackendClosed, BackendState, Feature, Message, MessageTooLarge, Mode
from tests.backends.contract import CLUSTERS, Contract, Kind, kinds, numbered
from tests.backends.support import Inbox
from tests.brokers import free_port
from tests.utils import wait_for


@kinds(clusters=True)
async def test_round_trip_between_two_instances(backend: Contract, topic: str) -> None:
    a, b = await backend("a"), await backend("b")
    assert a.state is b.state is BackendState.CONNECTED
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    await a.publish(topic, [b'{"event":"created"}', b"\x00\xffbinary"])
    assert await inbox.wait(2) == [b'{"event":"created"}', b"\x00\xffbinary"]


@kinds(clusters=True)
async def test_order_of_1000_messages(backend: Contract, topic: str) -> None:
    a, b = await backend("a"), await backend("b")
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    sent = numbered(1000)
    # One at a time, then batches: a batch's messages go out together, each batch after the last one returned.
    for body in sent[:100]:
        await a.publish(topic, [body])
    for start in range(100, 1000, 150):
        await a.publish(topic, sent[start : start + 150])
    assert await inbox.wait(1000, timeout=30) == sent


@kinds(clusters=True)
async def test_the_handler_runs_one_message_at_a_time(backend: Contract, topic: str) -> None:
    a, b = await backend("a"), await backend("b")
    running, most, got = 0, 0, []

    async def handler(message: Message) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0)  # yield to the loop, so that an overlapping call would show
        got.append(message.body)
        running -= 1

    await b.subscribe(topic, handler)
    sent = numbered(200)
    await a.publish(topic, sent)
    await wait_for(lambda: len(got) == 200, what="200 messages")
    assert got == sent and most == 1


def publish_returns_after_fan_out(kind: Kind) -> bool:
    """Not so with classic pub/sub on a cluster: a publish returns once its node has the message, and the
    subscribers on other nodes get it over the cluster bus a moment later, so a subscription made just after it
    may still get it (docs/backends/redis.md, Redis Cluster)."""
    return not (kind.broker in CLUSTERS and kind.mode is Mode.BROADCAST)


@kinds(publish_returns_after_fan_out, clusters=True)
async def test_a_subscription_gets_what_is_published_after_it_returned(backend: Contract, topic: str) -> None:
    """subscribe() returns once the broker registered the interest; a new instance starts from now."""
    a, b = await backend("a"), await backend("b")
    await a.publish(topic, [b"before"])
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    await a.publish(topic, [b"after"])
    assert await inbox.wait(1) == [b"after"]


@kinds(lambda kind: not (kind.broker in CLUSTERS and kind.mode is Mode.DURABLE), clusters=True)
async def test_topics_are_isolated(backend: Contract, topic: str) -> None:
    a, b = await backend("a"), await backend("b")
    first, second = Inbox(), Inbox()
    await b.subscribe(f"{topic}-1", first)
    await b.subscribe(f"{topic}-2", second)
    await a.publish(f"{topic}-1", [b"for 1"])
    await a.publish(f"{topic}-2", [b"for 2"])
    assert await first.wait(1) == [b"for 1"]
    assert await second.wait(1) == [b"for 2"]
    await a.publish(f"{topic}-1", [b"1 again"])
    await a.publish(f"{topic}-2", [b"2 again"])
    assert await first.wait(2) == [b"for 1", b"1 again"]
    assert await second.wait(2) == [b"for 2", b"2 again"]


@kinds(publish_returns_after_fan_out, clusters=True)
async def test_unsubscribe_is_idempotent_and_stops_delivery(backend: Contract, topic: str) -> None:
    a, b = await backend("a"), await backend("b")
    gone = Inbox()
    subscription = await b.subscribe(topic, gone)
    await a.publish(topic, [b"1"])
    await gone.wait(1)
    await subscription.unsubscribe()
    await subscription.unsubscribe()
    await a.publish(topic, [b"2"])
    again = Inbox()
    await b.subscribe(topic, again)
    await a.publish(topic, [b"3"])
    # "3" reached b after "2": a handler still subscribed would have had "2" by now.
    await wait_for(lambda: b"3" in again.bodies, what="3 on the new subscription")
    assert gone.bodies == [b"1"]
    # The same instance subscribing again goes on where it stopped in durable mode, from now otherwise.
    assert again.bodies == ([b"2", b"3"] if Feature.DURABLE in backend.cls.features else [b"3"])


@kinds(clusters=True)
async def test_with_echo_on_a_publisher_hears_itself_like_any_subscriber(backend: Contract, topic: str) -> None:
    a = await backend("a")
    assert a.broker_echoes
    inbox = Inbox()
    await a.subscribe(topic, inbox)
    await a.publish(topic, [b"mine"])
    assert await inbox.wait(1) == [b"mine"]


@kinds(clusters=True)
async def test_a_batch_with_a_body_over_the_limit_is_refused_whole(
    backend: Contract, topic: str, request: pytest.FixtureRequest
) -> None:
    a, b = await backend("a"), await backend("b")
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    with pytest.raises(MessageTooLarge):
        await a.publish(topic, [b"small", b"x" * (a.max_message_bytes + 1)])
    await a.publish(topic, [b"next"])
    assert await inbox.wait(1) == [b"next"]  # nothing of the refused batch went out
    assert a.state is BackendState.CONNECTED


@kinds(clusters=True)
async def test_close_is_idempotent_and_final(backend: Contract, topic: str) -> None:
    states: list[BackendState] = []
    a = await backend("a", on_state=states.append)
    await a.subscribe(topic, Inbox())
    await a.close()
    await a.close()
    assert states == [BackendState.CONNECTED, BackendState.CLOSED]
    with pytest.raises(BackendClosed):
        await a.publish(topic, [b"late"])
    with pytest.raises(BackendClosed):
        await a.subscribe(topic, Inbox())


@kinds(clusters=True)
async def test_close_without_start(backend: Contract) -> None:
    uri = backend.uri.replace(f":{backend.server.port}", f":{free_port()}") if backend.server else backend.uri
    never = backend.cls(backend.config("never", uri=uri))
    await never.close()
    await never.close()
    assert never.state is BackendState.CLOSED
