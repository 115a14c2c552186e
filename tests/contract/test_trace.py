"""W3C trace context from a publish to the other apps, on every broker and codec (docs/protocol.md#trace-context)."""

from __future__ import annotations

from tests.conftest import Connect
from tests.contract.conftest import Pair
from tests.utils import publish_frame

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


async def test_trace_context_reaches_the_other_apps(pair: Pair, connect: Connect) -> None:
    publisher = await connect(pair.sock_a, {})
    neighbour = await connect(pair.sock_a, {})
    remote = await connect(pair.sock_b, {})
    await publisher.send(publish_frame(data="traced", traceparent=TRACEPARENT, tracestate=TRACESTATE))
    await publisher.send(publish_frame(data="untraced"))
    local = await neighbour.events(2)
    assert [(e["data"], e.get("traceparent"), e.get("tracestate")) for e in local] == [
        ("traced", TRACEPARENT, TRACESTATE),
        ("untraced", None, None),
    ]
    received = await remote.events(2)
    if pair.a.settings.codec == "syncar":
        assert [(e["data"], e.get("traceparent"), e.get("tracestate")) for e in received] == [
            ("traced", TRACEPARENT, TRACESTATE),
            ("untraced", None, None),
        ]
    else:
        # feathers-sync's fixed format has no room for it: the event crosses, its trace context does not.
        assert [(e["data"], "traceparent" in e, "tracestate" in e) for e in received] == [
            ("traced", False, False),
            ("untraced", False, False),
        ]
