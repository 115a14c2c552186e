"""What a backend class declares in `features`, tested both ways; see contract.py."""

from __future__ import annotations

from backends import BACKENDS, load_backend
from backends.base import BackendState, Feature
from tests.backends.contract import KINDS, Contract, declaring, not_declaring, numbered
from tests.backends.support import Inbox


@declaring(Feature.NO_ECHO)
async def test_no_echo_where_declared(backend: Contract, topic: str) -> None:
    a, b = await backend("a", echo=False), await backend("b")
    assert not a.broker_echoes and b.broker_echoes
    a_inbox, b_inbox = Inbox(), Inbox()
    await a.subscribe(topic, a_inbox)
    await b.subscribe(topic, b_inbox)
    await a.publish(topic, [b"from a"])
    assert await b_inbox.wait(1) == [b"from a"]
    await b.publish(topic, [b"from b"])
    # The broker sends a what it delivers to it in order: a's own message would have come before b's.
    assert await a_inbox.wait(1) == [b"from b"]


@not_declaring(Feature.NO_ECHO)
async def test_without_no_echo_a_publisher_hears_itself_even_asked_not_to(backend: Contract, topic: str) -> None:
    """The codec drops our own messages only if `broker_echoes` says they come: they must come."""
    a = await backend("a", echo=False)
    assert a.broker_echoes
    inbox = Inbox()
    await a.subscribe(topic, inbox)
    await a.publish(topic, [b"mine"])
    assert await inbox.wait(1) == [b"mine"]


@declaring(Feature.DURABLE)
async def test_durable_a_failing_handler_gets_its_message_again_in_order(backend: Contract, topic: str) -> None:
    a, b = await backend("a"), await backend("b")
    inbox = Inbox(fail={b"bad"})
    await b.subscribe(topic, inbox)
    await a.publish(topic, [b"1", b"bad", b"2"])
    assert await inbox.wait(3, timeout=20) == [b"1", b"bad", b"2"]
    assert inbox.attempts == [b"1", b"bad", b"bad", b"2"]


@not_declaring(Feature.DURABLE)
async def test_not_durable_a_failing_handler_loses_only_its_message(backend: Contract, topic: str) -> None:
    a, b = await backend("a"), await backend("b")
    inbox = Inbox(fail={b"bad"})
    await b.subscribe(topic, inbox)
    await a.publish(topic, [b"1", b"bad", b"2"])
    await a.publish(topic, [b"3"])
    assert await inbox.wait(3) == [b"1", b"2", b"3"]
    assert inbox.attempts == [b"1", b"bad", b"2", b"3"]  # a message put back would have come before "3"
    assert b.state is BackendState.CONNECTED


@declaring(Feature.DURABLE)
async def test_durable_what_is_published_while_an_instance_is_away_waits_for_it(backend: Contract, topic: str) -> None:
    a, b = await backend("a"), await backend("b")
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    await a.publish(topic, [b"seen"])
    await inbox.wait(1)
    await b.close()
    missed = numbered(300, "missed ")
    await a.publish(topic, missed[:100])
    await a.publish(topic, missed[100:])
    again = Inbox()
    await (await backend("b")).subscribe(topic, again)
    await a.publish(topic, [b"live"])
    # Nothing it had handled comes again; everything it missed does, in order, then the live one.
    assert await again.wait(301, timeout=20) == [*missed, b"live"]


@not_declaring(Feature.DURABLE)
async def test_not_durable_what_is_published_while_an_instance_is_away_is_not_kept(
    backend: Contract, topic: str
) -> None:
    a, b = await backend("a"), await backend("b")
    await b.subscribe(topic, Inbox())
    await b.close()
    await a.publish(topic, numbered(10, "missed "))
    again = Inbox()
    await (await backend("b")).subscribe(topic, again)
    await a.publish(topic, [b"live"])
    assert await again.wait(1) == [b"live"]  # anything kept for "b" would have come first


def test_every_class_is_under_contract() -> None:
    """A row added to backends.BACKENDS is run through this suite (SCHEMES names its broker)."""
    classes = {load_backend(f"{scheme}://host", mode) for scheme, modes in BACKENDS.items() for mode in modes}
    assert {kind.cls for kind in KINDS} == classes
