"""What every backend does when its broker is away at start, speaks TLS, or is killed and restarted; see contract.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from backends.base import BackendRefused, BackendState, BackendUnavailable, Feature
from tests.backends.contract import Contract, brokered, numbered
from tests.backends.support import Inbox
from tests.brokers import free_port
from tests.faults.proxy import TcpProxy
from tests.utils import wait_for

#: A URI with a password, per broker, on a port given later: no error may quote the password.
SECRET = "hunter2-secret"
SECRET_URIS = {
    "redis": "redis://user:{secret}@127.0.0.1:{port}/0",
    "rabbitmq": "amqp://guest:{secret}@127.0.0.1:{port}/",
    "nats": "nats://alice:{secret}@127.0.0.1:{port}",
}
#: Connected again this soon after the broker is back: the back-off between attempts is capped at 1 s
#: (BackendConfig.reconnect_max_delay), so a backend still waiting out a long back-off takes longer; the rest is
#: margin for a loaded machine (the fault suite measures the recovery time itself, 2 s as promised).
RECOVERY = 5.0


@brokered
async def test_a_broker_away_at_start_is_an_outage_and_start_can_be_called_again(backend: Contract, topic: str) -> None:
    """start() on a closed port fails at once with BackendUnavailable (retriable, one line, no password) and leaves
    the backend CONNECTING, so the daemon starts without the broker and calls start() again until it comes."""
    assert backend.server is not None
    port = free_port()
    secret_uri = SECRET_URIS[backend.kind.broker].format(secret=SECRET, port=port)
    with_password = backend.cls(backend.config("a", uri=secret_uri))
    began = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        await with_password.start()
    assert time.monotonic() - began < 2.0
    message = str(caught.value)
    assert message.startswith(f"{with_password.name}: cannot connect to 127.0.0.1:{port}")
    assert "\n" not in message and SECRET not in message, message
    assert caught.value.retriable and with_password.state is BackendState.CONNECTING
    await with_password.close()

    states: list[BackendState] = []
    late = backend.cls(
        backend.config("late", uri=backend.uri.replace(f":{backend.server.port}", f":{port}")), on_state=states.append
    )
    try:
        with pytest.raises(BackendUnavailable):
            await late.start()
        # Read into a local: narrowed on the attribute, mypy would take late.state for CONNECTING after start() too.
        failed = late.state
        assert failed is BackendState.CONNECTING
        proxy = await TcpProxy.start(backend.server.port, port=port)  # the broker appears on that port
        try:
            await late.start()
            assert states[-1:] == [BackendState.CONNECTED] and late.state is BackendState.CONNECTED
            inbox = Inbox()
            await late.subscribe(topic, inbox)
            await (await backend("other")).publish(topic, [b"after the outage"])
            assert await inbox.wait(1) == [b"after the outage"]
        finally:
            await late.close()
            await proxy.close()
    finally:
        await late.close()
    assert BackendState.CLOSED not in states[:-1]


@brokered
async def test_a_closed_port_is_told_as_connection_refused(backend: Contract) -> None:
    """The one line every backend gives (backends.base.describe_error), which the daemon logs as it starts without
    the broker."""
    port = free_port()
    closed = backend.cls(backend.config("a", uri=SECRET_URIS[backend.kind.broker].format(secret=SECRET, port=port)))
    with pytest.raises(
        BackendUnavailable, match=rf"^\w+: cannot connect to 127\.0\.0\.1:{port}.*: connection refused$"
    ):
        await closed.start()
    await closed.close()


@brokered
async def test_tls_with_the_ca_in_the_uri(backend: Contract, topic: str) -> None:
    tls_uri = backend.tls_uri
    a, b = await backend("a", uri=tls_uri), await backend("b", uri=tls_uri)
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    await a.publish(topic, [b"over tls"])
    assert await inbox.wait(1) == [b"over tls"]
    # Without the CA, the system's CAs do not know the server's certificate: refused, not worth retrying.
    untrusted = backend.cls(backend.config("c", uri=tls_uri.split("?")[0]))
    with pytest.raises(
        BackendRefused, match=r"^\w+: cannot connect to 127\.0\.0\.1:\d+.*: tls: certificate verify failed: "
    ) as caught:
        await untrusted.start()
    assert not caught.value.retriable and "\n" not in str(caught.value)
    await untrusted.close()


@brokered
async def test_broker_killed_and_restarted(backend: Contract, topic: str) -> None:
    """Both sides see the loss, publishing fails at once meanwhile, and once the broker is back they reconnect
    within RECOVERY with the subscription restored."""
    server = backend.server
    assert server is not None
    sender_states: list[BackendState] = []
    receiver_states: list[BackendState] = []
    sender = await backend("sender", on_state=sender_states.append)
    receiver = await backend("receiver", on_state=receiver_states.append)
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    await sender.publish(topic, [b"before"])
    await inbox.wait(1)

    await asyncio.to_thread(server.kill)
    try:
        await wait_for(lambda: sender.state is receiver.state is BackendState.RECONNECTING, what="both to notice")
        began = time.monotonic()
        with pytest.raises(BackendUnavailable, match=rf"^{sender.name}: "):
            await sender.publish(topic, [b"while down"])
        assert time.monotonic() - began < 1.0
    finally:
        await asyncio.to_thread(server.start)
    back = time.monotonic()
    await wait_for(lambda: sender.state is receiver.state is BackendState.CONNECTED, RECOVERY + 10, "both back")
    assert time.monotonic() - back < RECOVERY
    assert (
        sender_states == receiver_states == [BackendState.CONNECTED, BackendState.RECONNECTING, BackendState.CONNECTED]
    )
    after = numbered(100, "after ")
    await sender.publish(topic, after)
    await wait_for(lambda: b"after 99" in inbox.bodies, what="everything published after the return")
    # Durable mode acknowledges after the handler returned: "before" may come again if the broker died before its
    # acknowledgement reached it (the relay de-duplicates). Nothing else comes twice, nothing is lost or reordered.
    assert inbox.bodies[0] == b"before" and [body for body in inbox.bodies if body != b"before"] == after
    if Feature.DURABLE not in backend.cls.features:
        assert inbox.bodies.count(b"before") == 1
