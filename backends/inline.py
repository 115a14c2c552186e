"""A coroutine run inline, in a protocol's callback, up to its first wait: what the backends that read their
connections as bytes arrive (`redis_internals`, `nats_internals`) and RabbitMQ's broadcast subscriptions, as aiormq's
reader hands each delivery over (`amqp_subscription`), hand a message over with, instead of a Task."""

from __future__ import annotations

import types
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any


def run_now(call: Awaitable[None]) -> Awaitable[None] | None:
    """Run the coroutine `call` until it first waits: None if it ended without waiting, else the rest of it, to
    await. An awaitable that is not a coroutine is returned as it is."""
    if not isinstance(call, types.CoroutineType):
        return call
    try:
        waited_on = call.send(None)
    except StopIteration:
        return None
    return _rest(call, waited_on)


@types.coroutine
def _rest(call: Coroutine[Any, Any, None], waited_on: Any) -> Generator[Any, None, None]:
    """What a Task does with `call`, which one send() has left waiting on `waited_on`: hand that to the Task
    awaiting us, and go on with `call` when it is done (or throw into it what is thrown into us: a cancellation)."""
    while True:
        try:
            yield waited_on
        except BaseException as exc:
            try:
                waited_on = call.throw(exc)
            except StopIteration:
                return
        else:
            try:
                waited_on = call.send(None)
            except StopIteration:
                return
