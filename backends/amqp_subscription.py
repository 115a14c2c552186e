"""One RabbitMQ subscription: its channel, queue and consumer, and how its messages reach the handler.

In broadcast mode the handler runs as the connection's reader hands each message over
(`amqp_internals.deliver_without_tasks`), up to its first wait (`inline.run_now`; the relay's never waits there):
each message went through a queue to a worker Task before, a turn of the event loop more (an `epoll_pwait`, a Task
step) per message, and at a low rate every message comes alone. A handler that waits is finished by the worker, and
what comes meanwhile queues behind it: one handler call at a time, in order. Durable mode keeps the worker for
every message: its handler may wait (the relay holds the backlog while no app is connected), and it acknowledges
once the worker's queue is empty.

Each subscription consumes on a channel of its own, with a prefetch window: a slow handler holds messages back on
the broker instead of growing memory, and acknowledgements (grouped with `multiple`) only ever cover this
subscription's own deliveries. Every acknowledgement follows the handler's return: in durable mode as soon as the
handler has caught up, in broadcast mode, where they only keep the prefetch window open, every ACK_EVERY messages
or after ACK_DELAY without one, so that a low rate does not cost a write to the broker per message.

With `own` (broadcast mode, the core not wanting its own messages back), the queue is bound so that the broker
keeps the messages this daemon published from it (`amqp_topology.spare_own`): RabbitMQ has no no-local, so a
publishing daemon got back each of its messages through the fanout exchange, at 1,000 events/s in a fleet of three a
third of what each daemon read, each a wake-up and three frames only to be skipped.

In durable mode a handler that raises gets its message again: the worker acknowledges what came before it, then
closes the channel, so the broker puts everything unacknowledged back at the head of the queue in order; aio-pika
reopens the channel and the backend consumes again. Deliveries of a closed channel still waiting in the worker are
skipped, since the broker has put them back too: order holds through failures and reconnects alike.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, cast

import aiormq.abc
from aio_pika.abc import AbstractRobustChannel
from pamqp.commands import Basic

from backends import amqp_internals
from backends.amqp_common import BROKER_ERRORS, CLOSE_TIMEOUT, cancel_task
from backends.amqp_topology import Topology, drop_spared
from backends.base import Handler, Message, Subscription
from backends.inline import run_now
from sidecar.backoff import Backoff

log = logging.getLogger(__name__)

ACK_EVERY = 64  # acknowledge (multiple=True) at least this often, and whenever the handler catches up
ACK_DELAY = 0.25  # broadcast mode: ...or once no message came for this long (seconds) after the last one handled
#: Seconds before a failed message comes back, doubling while it keeps failing: a poison message must not spin.
REDELIVERY_DELAY, MAX_REDELIVERY_DELAY = 0.5, 5.0
DRAIN_TIMEOUT = 5.0  # how long unsubscribe() lets a running handler finish
#: Durable mode: a handler that has held a delivery this long (seconds; the relay waits while no app is connected)
#: gets its channel closed, so the broker keeps the unacknowledged deliveries rather than close the channel itself
#: after its `consumer_timeout` (30 min by default) again and again; consumed again once the handler returns.
HOLD_LIMIT = 60.0


class _AckDue:
    """What the acknowledgement timer puts in the inbox: acknowledge what was handled, if nothing came since."""


ACK_DUE = _AckDue()


class AmqpSubscription(Subscription):
    """One topic's queue and consumer; its messages go to the handler one at a time, at once if nothing is queued
    (`inline`), else through the worker task.

    This class is broadcast mode's: a message whose handler raised is dropped, and acknowledgements, which only keep
    the prefetch window open, go every ACK_EVERY messages or after ACK_DELAY without one. `AmqpDurableSubscription`
    is durable mode's.
    """

    #: Acknowledge what was handled once no message came for this long (seconds); None: see `_caught_up()`.
    ack_delay: ClassVar[float | None] = ACK_DELAY
    #: Hand a message to the handler as the connection's reader has it, when the worker has nothing to do.
    inline: ClassVar[bool] = True

    def __init__(
        self,
        topic: str,
        handler: Handler,
        topology: Topology,
        channel: AbstractRobustChannel,
        *,
        forget: Callable[[AmqpSubscription], None],
        restore: Callable[[], None],
        own: str | None = None,
    ) -> None:
        """`own`: the routing key of every message this daemon publishes, for the broker to keep those from the
        queue; None: deliver them."""
        self.topic, self.channel, self._handler, self._topology = topic, channel, handler, topology
        self._forget, self._restore = forget, restore
        self._own = own
        self.active, self.cancelled = True, False  # cancelled: by the broker (its queue was deleted, say)
        self.queue: str | None = None
        self.consumer_tag: str | None = None
        self._underlay: aiormq.abc.AbstractChannel | None = None
        # Bounded by prefetch (and one ACK_DUE at a time).
        self._inbox: asyncio.Queue[aiormq.abc.DeliveredMessage | _AckDue | Awaitable[None] | None] = asyncio.Queue()
        self._busy = False  # an entry is being taken
        self._inline_now = False  # ...by _enter(), not the worker
        # The newest message handled and not yet acknowledged: its channel and delivery tag; how many.
        self._unacked: tuple[aiormq.abc.AbstractChannel, int] | None = None
        self._count = 0
        # Broadcast mode: one timer while something handled is unacknowledged, not one per message.
        self._ack_timer: asyncio.TimerHandle | None = None
        self._handled = 0  # broadcast mode: messages handled, for the acknowledgement timer to see if any came
        self._redelivery = Backoff(REDELIVERY_DELAY, MAX_REDELIVERY_DELAY)
        self._worker = asyncio.create_task(self._work(), name=f"syncar-amqp-{topic}")

    async def live(self) -> bool:
        """True if the consumer is in place on the channel's current underlying channel."""
        underlay = await self.channel.get_underlay_channel()
        return (
            self._underlay is underlay
            and self.consumer_tag is not None
            and not underlay.is_closed
            and not self.cancelled
        )

    async def attach(self) -> None:
        """Declare the exchange, the queue and the binding, and consume the queue on the channel as it is now."""
        underlay = await self.channel.get_underlay_channel()
        if underlay.is_closed:
            # Closed by a call that timed out: aio-pika reopens channels the broker closes, not those.
            await self.channel.restore()
            underlay = await self.channel.get_underlay_channel()
        again = self.queue is not None
        if self.queue is not None and self._own is not None:  # the last queue's: its channel closed, not the connection
            await drop_spared(underlay.connection, self.queue)
        queue, backlog = await self._topology.declare(underlay, self.topic, again=again, spare=self._own)
        # Before the consume: its first deliveries may reach the worker before basic_consume() returns, and must
        # not look stale then (skipped, they would be acknowledged with the next ones, unhandled).
        self._underlay, self.queue, self.consumer_tag = underlay, queue, None
        # aio-pika's abstract type leaves out the channel's state; its underlay is always aiormq's Channel.
        amqp_internals.deliver_without_tasks(cast(aiormq.Channel, underlay), self._deliver)
        consumer = await underlay.basic_consume(queue, self._on_delivery, no_ack=False)
        underlay.on_consumer_cancel_callbacks.add(self._on_consumer_cancelled)
        self.consumer_tag, self.cancelled = consumer.consumer_tag, False
        self._consuming(queue, backlog)

    def _consuming(self, queue: str, backlog: int) -> None:
        log.debug("amqp: consuming topic %r from queue %s", self.topic, queue)

    def _on_consumer_cancelled(self, frame: Basic.Cancel) -> None:
        if frame.consumer_tag == self.consumer_tag and self.active:
            # The broker cancelled the consumer (its queue was deleted, say): declare the queue again.
            log.warning("amqp: the broker cancelled the consumer of %r; subscribing again", self.topic)
            self.cancelled = True
            self._restore()

    def _deliver(self, message: aiormq.abc.DeliveredMessage) -> None:
        # Called by the connection's reader as each message is read, in order (amqp_internals.deliver_without_tasks).
        if self.active:
            self._enter(message)

    def _enter(self, entry: aiormq.abc.DeliveredMessage | _AckDue) -> None:
        """Take `entry` now if the worker has nothing, up to its first wait (the rest is the worker's, before any
        later entry); else queue it for the worker."""
        if self.inline and not self._busy and self._inbox.empty():
            self._busy = self._inline_now = True
            try:
                rest = run_now(self._take(entry))
            finally:
                self._busy = self._inline_now = False
            if rest is not None:
                self._inbox.put_nowait(rest)
        else:
            self._inbox.put_nowait(entry)

    async def _on_delivery(self, message: aiormq.abc.DeliveredMessage) -> None:
        # What aiormq itself would call, in a Task per message; deliver_without_tasks() takes its place.
        self._deliver(message)

    def _ours(self, message: aiormq.abc.DeliveredMessage) -> bool:
        """One of our own messages, back because the broker could not be told to keep them (`spare_own` refused):
        counted as handled, not handled."""
        return self._own is not None and getattr(message.delivery, "routing_key", None) == self._own

    def _stale(self, message: aiormq.abc.DeliveredMessage) -> bool:
        """Whether `message` is not to be handled although the subscription is active."""
        return False

    def _caught_up(self, count: int) -> bool:
        """Whether to acknowledge now, `count` messages handled since the last acknowledgement."""
        return count >= ACK_EVERY

    async def _failed(self, failed: aiormq.abc.DeliveredMessage, exc: Exception) -> bool:
        """The handler raised on `failed`; True if it counts as handled all the same."""
        log.error("amqp: subscriber of %r failed, message dropped: %s", self.topic, exc)
        log.debug("amqp: subscriber failure", exc_info=True)
        return True

    async def _work(self) -> None:
        while True:
            entry = await self._inbox.get()
            if entry is None:
                break
            self._busy = True
            try:
                await (self._take(entry) if isinstance(entry, (aiormq.abc.DeliveredMessage, _AckDue)) else entry)
            finally:
                self._busy = False
        await self._ack_handled(wait=True)  # stopping: what was handled must not come back

    async def _take(self, entry: aiormq.abc.DeliveredMessage | _AckDue) -> None:
        """Hand one message to the handler and count it as handled, or acknowledge what was handled."""
        if isinstance(entry, _AckDue):
            self._ack_timer = None
            await self._ack_handled()
            return
        message = entry
        if not self.active or self._stale(message):
            return
        try:
            if not self._ours(message):
                await self._handler(Message(message.body))
        except Exception as exc:
            if not await self._failed(message, exc):
                self._unacked, self._count = None, 0
                return
        else:
            self._redelivery.reset()
        tag = getattr(message.delivery, "delivery_tag", None)
        if tag is not None:
            self._handled_one(message.channel, tag)
        if self._caught_up(self._count):
            await self._ack_handled()

    def _handled_one(self, channel: aiormq.abc.AbstractChannel, tag: int) -> None:
        """Count a message as handled, to be acknowledged by the next acknowledgement (`multiple`)."""
        unacked = self._unacked
        if unacked is None or unacked[0] is not channel or tag > unacked[1]:
            self._unacked = channel, tag
        self._count += 1
        if self.ack_delay is not None:
            self._later()

    def _later(self) -> None:
        """Acknowledge what was handled once no message came for ACK_DELAY, not after each one: at a low rate the
        inbox is empty after every message, and the write of an ack per message was a third of a receiving daemon's
        CPU at 1,000 events/s. One timer, moved on when it fires early, rather than a timeout per message."""
        self._handled += 1  # a count, not the loop's time: no clock read per message
        if self._ack_timer is None:
            loop = asyncio.get_running_loop()
            self._ack_timer = loop.call_at(loop.time() + (self.ack_delay or 0.0), self._ack_due, self._handled)

    def _ack_due(self, handled: int) -> None:
        if self._handled == handled:  # none came for ACK_DELAY
            self._enter(ACK_DUE)
        else:  # some came since the timer was set: wait ACK_DELAY more (at most 2 x ACK_DELAY after the last)
            self._ack_timer = asyncio.get_running_loop().call_later(self.ack_delay or 0.0, self._ack_due, self._handled)

    async def _ack_handled(self, *, wait: bool = False) -> None:
        """Acknowledge the newest message handled and every one before it. Queued for the connection's writer and not
        waited for (a future made and settled per acknowledgement), unless `wait`: when stopping, the connection may
        be closed next, and its writer drops what is still queued."""
        unacked, self._unacked, self._count = self._unacked, None, 0
        if unacked is None:
            return
        channel, tag = unacked
        if channel.is_closed:
            return  # delivered on a channel that is gone: the broker forgot those deliveries with it
        try:
            await channel.basic_ack(tag, multiple=True, wait=wait)
        except BROKER_ERRORS as exc:
            log.debug("amqp: ack on %r not sent: %s", self.topic, exc)

    async def stop(self, *, cancel_consumer: bool) -> None:
        """Stop delivering; optionally tell the broker (a broadcast queue goes with its consumer)."""
        if not self.active:
            return
        self.active = False
        underlay, tag = self._underlay, self.consumer_tag
        if cancel_consumer and underlay is not None and tag is not None and not underlay.is_closed:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await underlay.basic_cancel(tag)
            except BROKER_ERRORS as exc:  # TimeoutError is an OSError
                log.debug("amqp: cancelling the consumer of %r failed: %s", self.topic, exc)
        self._inbox.put_nowait(None)
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        if asyncio.current_task() is self._worker or self._inline_now:
            return  # unsubscribed from inside the handler: the worker ends when the handler returns
        done, _ = await asyncio.wait({self._worker}, timeout=DRAIN_TIMEOUT)
        if not done:
            await cancel_task(self._worker)

    async def unsubscribe(self) -> None:
        """Stop delivery and close the channel; a durable queue stays (it expires after `instance_ttl`)."""
        if not self.active:
            return
        self._forget(self)
        await self.stop(cancel_consumer=True)
        if not self.channel.is_closed:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    if self._own is not None and self.queue is not None:
                        await drop_spared((await self.channel.get_underlay_channel()).connection, self.queue)
                    await self.channel.close()
            except BROKER_ERRORS as exc:
                log.debug("amqp: closing the channel of %r failed: %s", self.topic, exc)


class AmqpDurableSubscription(AmqpSubscription):
    """Durable mode's: a handler that raises gets its message again, and what was handled is acknowledged as soon
    as the handler has caught up."""

    ack_delay: ClassVar[float | None] = None
    inline: ClassVar[bool] = False

    def __init__(self, topic: str, handler: Handler, *args: Any, **kwargs: Any) -> None:
        self._inner = handler
        self._holding = False  # the handler has a delivery
        self._returned = 0  # handler calls returned (or raised)
        self._let_go = False  # the channel was closed under a held delivery: consume again once it returns
        self._holds: asyncio.Task[None] | None = None
        super().__init__(topic, self._hold, *args, **kwargs)

    async def _hold(self, message: Message) -> None:
        self._holding = True
        try:
            await self._inner(message)
        finally:
            self._holding = False
            self._returned += 1
            let_go, self._let_go = self._let_go, False
        if let_go:  # (one that raised is _failed()'s to restore; one cancelled, stopping, is not)
            self._restore()  # the delivery's channel is gone: it comes again, and the relay drops the copy

    async def live(self) -> bool:
        # Let go under a held delivery: consumed again once the handler returns, not when aio-pika reopens the channel.
        return self._let_go or await super().live()

    async def _watch_holds(self) -> None:
        """Close the channel under a handler call that has lasted HOLD_LIMIT: see HOLD_LIMIT."""
        while self.active:
            returned = self._returned
            await asyncio.sleep(HOLD_LIMIT)
            underlay = self._underlay
            if not self._still_holding(returned) or underlay is None or underlay.is_closed:
                continue
            log.info(
                "amqp: the subscriber of %r has held a delivery for over %.0fs: the broker keeps the queue's "
                "messages until it returns",
                self.topic,
                HOLD_LIMIT,
            )
            await self._ack_handled(wait=True)
            if not self._still_holding(returned):
                continue  # it returned meanwhile, and with the channel still open nothing would consume again
            self._let_go = True
            await _close(underlay, self.topic, "while the subscriber holds a delivery")

    def _still_holding(self, returned: int) -> bool:
        """Whether the handler holds the delivery it held when `returned` handler calls had returned."""
        return self._holding and returned == self._returned

    def _consuming(self, queue: str, backlog: int) -> None:
        log.info("amqp: consuming durable queue %r (%d messages waiting)", queue, backlog)
        if self._holds is None:
            self._holds = asyncio.create_task(self._watch_holds(), name=f"syncar-amqp-holds-{self.topic}")

    async def stop(self, *, cancel_consumer: bool) -> None:
        if self._holds is not None:
            await cancel_task(self._holds)
        await super().stop(cancel_consumer=cancel_consumer)

    def _stale(self, message: aiormq.abc.DeliveredMessage) -> bool:
        """Delivered on a channel that is gone, so the broker has put it back in the queue."""
        return message.channel is not self._underlay or message.channel.is_closed

    def _caught_up(self, count: int) -> bool:
        return count >= ACK_EVERY or self._inbox.empty()

    async def _failed(self, failed: aiormq.abc.DeliveredMessage, exc: Exception) -> bool:
        delay = self._redelivery.next()
        log.error("amqp: subscriber of %r failed, the message comes back in %.1fs: %s", self.topic, delay, exc)
        log.debug("amqp: subscriber failure", exc_info=True)
        await self._ack_handled()
        await asyncio.sleep(delay)
        await _close(failed.channel, self.topic, "for redelivery")
        self._restore()  # aio-pika reopens the channel (attach() does, if it has not) and we consume again
        return False


async def _close(channel: aiormq.abc.AbstractChannel, topic: str, why: str) -> None:
    """Close a consuming channel: the broker puts back what was delivered on it and not acknowledged, in order."""
    if not channel.is_closed:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await channel.close()
        except BROKER_ERRORS as error:  # the connection went first: the broker puts them back all the same
            log.debug("amqp: closing the channel of %r %s failed: %s", topic, why, error)
