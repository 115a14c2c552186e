"""Every use of aiormq's internals, in one module: each meets a need aiormq has no public way to meet.

Nothing else of syncar touches aiormq's private members (pyproject.toml exempts this module alone from ruff's SLF
rule). An upgrade of aiormq that renames one of them makes tests/backends/test_library_internals.py fail, by name;
the backends' own tests fail too: every publish raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import aiormq
from aiormq.abc import ChannelFrame, DeliveredMessage
from aiormq.exceptions import ChannelInvalidStateError
from pamqp.commands import Basic
from pamqp.header import ContentHeader

#: Bodies in one frame group at most: a small batch goes out in one write, a large one in writes of about this
#: size, so the broker routes the first messages while the rest are still being written.
GROUP_BYTES = 256 * 1024


async def publish(
    channel: aiormq.Channel, exchange: str, bodies: Sequence[bytes], properties: Basic.Properties
) -> list[asyncio.Future[Any]]:
    """Queue a batch of messages for the connection's writer in frame groups of about GROUP_BYTES (a small batch:
    one group, one write), each message with the delivery tag and the confirmation future aiormq's basic_publish
    gives it; each future is done once the broker confirmed (or refused) its message, and fails as aiormq's do if
    the channel closes first. The channel must have publisher confirms on, and nothing else may publish on it.

    aiormq's basic_publish takes, per message, a Task of its own (to publish without waiting for the previous
    confirm), a lock, two timeout contexts, a random message id and a frame group of its own, which its writer task
    writes in a system call of its own a loop turn later: at one event at a time, a third of a millisecond between
    the app's frame and the broker's socket on a busy machine (docs/benchmarks.md). This does what basic_publish
    does for a message without `mandatory`, on the same state, with nothing awaited unless the writer's queue is
    full.
    """
    if channel.is_closed:
        raise ChannelInvalidStateError(f"{channel} closed")
    confirmations: list[asyncio.Future[Any]] = []
    frames: list[Any] = []
    size = 0
    queued = channel.delivery_tag  # the last message whose frames the writer has
    try:
        for index, body in enumerate(bodies):
            channel.delivery_tag += 1
            confirmation: asyncio.Future[Any] = channel.create_future()
            channel.confirmations[channel.delivery_tag] = confirmation
            confirmations.append(confirmation)
            frames += [
                Basic.Publish(exchange=exchange, routing_key=""),
                ContentHeader(properties=properties, body_size=len(body)),
                *channel._split_body(body),
            ]
            size += len(body)
            if size >= GROUP_BYTES or index == len(bodies) - 1:
                # Returns at once unless the writer is behind (its queue holds 10 groups).
                await channel.write_queue.put(ChannelFrame.marshall(frames=frames, channel_number=channel.number))
                queued, frames, size = channel.delivery_tag, [], 0
    except BaseException:
        # Not queued, so the broker will not count these: give their delivery tags back, as basic_publish does.
        for tag in range(queued + 1, channel.delivery_tag + 1):
            if (dropped := channel.confirmations.pop(tag, None)) is not None:
                dropped.cancel()
        channel.delivery_tag = queued
        raise
    return confirmations


def deliver_without_tasks(channel: aiormq.Channel, deliver: Callable[[DeliveredMessage], None]) -> None:
    """Hand every message delivered on `channel` to `deliver`, called by the channel's reader as soon as the
    message's frames are read, in delivery order. For a channel with one consumer: whose it is goes unasked.

    aiormq's reader starts a Task per delivery to run the consumer's callback (`Channel._on_deliver_frame`): a Task
    made, scheduled, run and its done callback called for each message, only for syncar's callback to put it in a
    queue. This reads the header and body frames as aiormq does, with its own methods, and calls `deliver` in
    place; `deliver` must not block nor raise (the reader would end with it). What else the reader does (confirms,
    returns, cancels, closes) is aiormq's.
    """
    read_header = channel._Channel__get_content_header  # type: ignore[attr-defined]  # name-mangled private

    async def on_deliver_frame(frame: Basic.Deliver) -> None:
        header = await read_header()
        deliver(await channel._read_content(frame, header))

    channel._on_deliver_frame = on_deliver_frame  # type: ignore[method-assign]
