"""The NATS backend's durable mode: JetStream.

A topic (`--key`) has one stream, `syncar-<key>`, on the subject `syncar.durable.<key>`: a subject of its own, so
broadcast daemons and feathers-sync apps on the subject `<key>` never see (or feed) it. Each instance reads the
stream through its own durable pull consumer, `syncar-<instance id>`, acknowledging each message once the handler
returned. See docs/backends/nats.md ("Durable mode") for what this promises and costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSub
from nats.js import JetStreamContext, api

from backends.base import (
    BackendError,
    BackendUnavailable,
    Handler,
    Message,
    PublishTimeout,
    PublishUnconfirmed,
    Subscription,
)
from backends.nats_common import CONNECTION_ERRORS, describe, settle
from sidecar.backoff import Backoff
from sidecar.logging import RateLimitedLogger

if TYPE_CHECKING:
    from backends.nats import NatsBackend

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "syncar.durable."
NAME_PREFIX = "syncar-"
#: Seconds for a JetStream API call or a PubAck.
API_TIMEOUT = 5.0
#: Messages asked for in one pull request; another goes out when half of them have arrived, so the server always
#: has one waiting. At most 1.5 x this many messages are on their way to us or queued here (memory bound).
PULL_BATCH = 64
#: A pull request lives this long; the server says so (408) when it expires unfilled, and we ask again. An instance
#: that is connected always has one waiting, so its consumer never looks inactive to the server.
PULL_EXPIRES = 10.0
#: While a pull request waits, the server sends a heartbeat this often: silence means the request is gone.
IDLE_HEARTBEAT = 2.0
SILENCE = 3 * IDLE_HEARTBEAT
#: Messages delivered and not yet acknowledged, at most (a bound the server keeps; above 1.5 x PULL_BATCH).
MAX_ACK_PENDING = 256
#: A message unacknowledged this long is sent again. We never rely on it for order (see `ensure_consumer`).
ACK_WAIT = 30.0
#: Back-off after a handler failed, before the message is delivered again.
RETRY_MIN, RETRY_MAX = 0.25, 5.0
#: Seconds between two lines about the same failing subscriber, or the same consumer that cannot be resumed yet.
WARN_EVERY = 30.0
ACK = b"+ACK"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_SUBJECT = re.compile(r"[^.\s*>]+(\.[^.\s*>]+)*")


def durable_subject(topic: str) -> str:
    if not _SUBJECT.fullmatch(topic):
        raise BackendError(f"nats: {topic!r} is not a valid subject")
    return SUBJECT_PREFIX + topic


def jetstream_name(raw: str) -> str:
    """A stream or consumer name for `raw`, stable and unique per `raw`.

    JetStream names take no '.', '*', '>', '/', '\\' or whitespace and become file names on the server: anything
    but letters, digits, '-' and '_' is replaced, and then a short hash of `raw` keeps such names apart.
    """
    safe = _UNSAFE.sub("_", raw)
    if safe != raw or len(safe) > 48:
        safe = f"{safe[:40]}_{hashlib.sha256(raw.encode()).hexdigest()[:8]}"
    return NAME_PREFIX + safe


def translate(exc: BaseException, where: str, doing: str) -> BackendError:
    """A backend error, with a one-line reason, for a failed JetStream call."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, nats.js.errors.ServiceUnavailableError | nats.errors.NoRespondersError):
        return BackendError(f"nats: {doing}: JetStream is not enabled on {where} (durable mode needs nats-server -js)")
    if isinstance(exc, nats.js.errors.APIError):
        return BackendError(f"nats: {doing}: JetStream refused: {exc.description or exc.code}")
    return BackendUnavailable(f"nats: {doing} on {where} failed: {describe(exc)}")


async def ensure_stream(js: JetStreamContext, topic: str, retention: int, ttl: float) -> api.StreamInfo:
    """Create the topic's stream, or bring its limits to ours; any other setting an operator gave it stays."""
    name = jetstream_name(topic)
    try:
        return await js.add_stream(api.StreamConfig(
            name=name, subjects=[durable_subject(topic)], storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS, discard=api.DiscardPolicy.OLD, max_msgs=retention,
            # Older messages could only be for instances away longer than the ttl, which the server forgets.
            max_age=ttl))
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != 10058:  # "stream name already in use with a different configuration"
            raise
    info = await js.stream_info(name)
    config = info.config
    if config.max_msgs != retention or not math.isclose(config.max_age or 0.0, ttl, abs_tol=1e-3):
        log.info("nats: stream %s: max_msgs %s -> %d, max_age %ss -> %ss", name, config.max_msgs, retention,
                 config.max_age, ttl)
        info = await js.update_stream(config.evolve(max_msgs=retention, max_age=ttl))
    return info


async def ensure_consumer(js: JetStreamContext, stream: api.StreamInfo, name: str, ttl: float,
                          position: int | None) -> None:
    """Create this instance's durable consumer, or make it resume at its first unacknowledged message.

    A consumer created now starts after the stream's last message: new messages only. Messages a previous
    connection got and did not acknowledge would otherwise come back only after ACK_WAIT, behind newer ones, so
    a consumer with any is recreated from its ack floor instead: in order, at the cost of duplicates, which the
    relay drops. `position`, the next stream sequence this process needs, is where to start if the consumer is
    gone (deleted, or a start that failed half-way).
    """
    stream_name = stream.config.name
    assert stream_name is not None
    settings: dict[str, Any] = {
        "durable_name": name, "ack_policy": api.AckPolicy.EXPLICIT, "ack_wait": ACK_WAIT, "max_deliver": -1,
        "max_ack_pending": MAX_ACK_PENDING, "inactive_threshold": ttl, "description": "syncar instance"}
    try:
        info: api.ConsumerInfo | None = await js.consumer_info(stream_name, name)
    except nats.js.errors.NotFoundError:
        info = None
    last = stream.state.last_seq
    if info is None:
        if position is not None and position > last + 1:
            log.warning("nats: stream %s restarts at sequence %d, below ours (%d): was it recreated?", stream_name,
                        last, position)
            position = None
        start = position or last + 1
        log.info("nats: creating consumer %s on stream %s from sequence %d", name, stream_name, start)
    elif info.num_ack_pending or info.num_waiting:
        config = info.config
        acked = info.ack_floor
        # A consumer that never had a message acknowledged reports a floor of 0: its start is the floor then.
        floor = acked.stream_seq + 1 if acked is not None and acked.consumer_seq else (config.opt_start_seq or 1)
        start = max(floor, min(position or floor, last + 1))
        log.info("nats: consumer %s has %d unacknowledged messages; resuming it at stream sequence %d", name,
                 info.num_ack_pending, start)
        await js.delete_consumer(stream_name, name)
    else:
        config = info.config
        if config.inactive_threshold is None or not math.isclose(config.inactive_threshold, ttl, abs_tol=1e-3):
            log.info("nats: consumer %s: inactive_threshold %ss -> %ss", name, config.inactive_threshold, ttl)
            await js.add_consumer(stream_name, config.evolve(inactive_threshold=ttl))
        return
    await js.add_consumer(stream_name, api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start, **settings))


class JetStreamPublisher:
    """publish() of the durable mode: each body stored by JetStream (PubAck), in order."""

    def __init__(self, backend: NatsBackend) -> None:
        self._backend = backend
        self._js: JetStreamContext | None = None
        self._client: Client | None = None
        self.streams: set[str] = set()  # topics whose stream exists (as far as we know)

    async def publish(self, client: Client, topic: str, bodies: Sequence[bytes],
                      lost: asyncio.Future[None] | None) -> None:
        backend = self._backend
        if self._client is not client:  # nats-py's context keeps a reply subscription on its connection
            self._client, self._js = client, client.jetstream(timeout=API_TIMEOUT)
        js = self._js
        assert js is not None
        subject = durable_subject(topic)
        config = backend.config
        if topic not in self.streams:
            try:
                await ensure_stream(js, topic, config.retention, config.instance_ttl)
            except CONNECTION_ERRORS as exc:
                raise translate(exc, backend.where, "creating the stream") from exc
            self.streams.add(topic)
        acks: list[asyncio.Future[api.PubAck]] = []
        try:
            # Written in order on one connection, so stored in order; the PubAcks are awaited together. No
            # wait_stall: nats-py would then yield once per message, and its flusher write each one on its own (5x
            # slower). Its 4,000 slots are more than a batch holds, and every slot is given back below.
            for body in bodies:
                acks.append(await js.publish_async(subject, body))
            stored = asyncio.gather(*acks)
            waits: set[asyncio.Future[Any]] = {stored} if lost is None else {stored, lost}
            await asyncio.wait(waits, timeout=API_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            if not stored.done():
                stored.cancel()
                await settle(stored)
                if lost is not None and lost.done():
                    raise PublishUnconfirmed(f"nats: connection to {backend.where} lost before JetStream confirmed")
                await backend._confirm(client, lost)  # raises if the connection itself is dead
                raise PublishTimeout(f"nats: JetStream on {backend.where} did not confirm within {API_TIMEOUT:g}s")
            stored.result()
        except nats.js.errors.NoStreamResponseError as exc:
            # No stream on the subject (deleted, or the server lost its store): create it again on the retry.
            self.streams.discard(topic)
            raise BackendUnavailable(f"nats: no JetStream stream answered on {backend.where}; retrying") from exc
        except BackendError:
            raise
        except CONNECTION_ERRORS as exc:
            raise translate(exc, backend.where, "publish") from exc
        finally:
            # A PubAck that will never come holds one of nats-py's publish_async slots forever. Ours is the only
            # publisher on this context (the outbox sends one batch at a time): every future left is this batch's.
            for ack in [*acks, *getattr(js, "_publish_async_futures", {}).values()]:
                ack.cancel()


class DurableSubscription(Subscription):
    """This instance's durable pull consumer on a topic's stream, fed to the handler one message at a time."""

    def __init__(self, backend: NatsBackend, topic: str, handler: Handler) -> None:
        self._backend = backend
        self.topic = topic
        self._handler = handler
        self._stream = jetstream_name(topic)
        self.consumer = jetstream_name(backend.config.instance_id)
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{self.consumer}"
        self._request = json.dumps({"batch": PULL_BATCH, "expires": int(PULL_EXPIRES * 1e9),
                                    "idle_heartbeat": int(IDLE_HEARTBEAT * 1e9)}).encode()
        self._client: Client | None = None
        self._sub: NatsSub | None = None
        self._inbox = ""
        # Bumped by each (re)start: messages still queued for an older one are neither handled nor acknowledged.
        self._generation = 0
        self._credit = 0  # messages asked for and not yet delivered
        self._heard = time.monotonic()
        self._position: int | None = None  # the stream sequence after the last one handled
        self._retry = Backoff(RETRY_MIN, RETRY_MAX, jitter=0.2)
        self._warnings = RateLimitedLogger(log, WARN_EVERY)
        self._restore_task: asyncio.Task[None] | None = None
        self._attaching: asyncio.Future[None] | None = None
        self._again = False
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False

    async def attach(self, client: Client) -> None:
        """Start, or start again, consuming on `client` where the consumer left off.

        Raises:
            BackendError: JetStream refused (not enabled, a bad name...); BackendUnavailable: connection trouble.
        """
        self._generation += 1
        generation = self._generation
        old, self._sub = self._sub, None
        if old is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await old.unsubscribe()
        config = self._backend.config
        try:
            js = client.jetstream(timeout=API_TIMEOUT)
            stream = await ensure_stream(js, self.topic, config.retention, config.instance_ttl)
            await ensure_consumer(js, stream, self.consumer, config.instance_ttl, self._position)
            inbox = client.new_inbox()
            # No limit on nats-py's queue: the pull requests bound it (a drop would look like a lost message).
            sub = await client.subscribe(inbox, cb=partial(self._receive, generation), pending_msgs_limit=0,
                                         pending_bytes_limit=0)
            if generation != self._generation or self._closed:
                await sub.unsubscribe()
                return
            self._client, self._sub, self._inbox, self._credit = client, sub, inbox, 0
            self._heard = time.monotonic()
            await self._pull()
        except CONNECTION_ERRORS as exc:
            raise translate(exc, self._backend.where, f"consumer {self.consumer}") from exc
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name=f"syncar-nats-watch-{self.topic}")

    async def _pull(self) -> None:
        if self._client is not None:
            await self._client.publish(self._next, self._request, reply=self._inbox)
            self._credit += PULL_BATCH

    async def _receive(self, generation: int, msg: Msg) -> None:
        if generation != self._generation:
            return
        self._heard = time.monotonic()
        reply = msg.reply
        if not reply:  # a status: 100 heartbeat, 408 request expired, 409 request ended or consumer gone
            headers = msg.headers or {}
            status = headers.get("Status")
            if status == "409" and any(w in str(headers.get("Description", "")) for w in ("Deleted", "Leadership")):
                log.warning("nats: consumer %s: %s; resuming it", self.consumer, headers.get("Description"))
                self.restore_soon()
                return
            if status in ("408", "409"):
                self._credit -= int(headers.get("Nats-Pending-Messages") or self._credit)
        else:
            self._credit -= 1
        with contextlib.suppress(*CONNECTION_ERRORS):  # a lost connection: the restore after it asks again
            if self._credit <= PULL_BATCH // 2:
                await self._pull()  # before handling, so the server never waits for us
        if not reply:
            return
        # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>, or the longer v2
        # The server's timestamp of the stored message (<time>, in ns) is in the reply subject, which it makes itself.
        tokens = reply.split(".")
        position, stored = (tokens[5], tokens[7]) if len(tokens) == 9 else (tokens[7], tokens[9])
        try:
            await self._handler(Message(msg.data, position=position, accepted_at=int(stored) / 1e9))
        except Exception as exc:
            self._failed(position, exc)
            return
        self._retry.reset()
        self._position = int(position) + 1
        with contextlib.suppress(*CONNECTION_ERRORS):  # a lost ack: the message comes again, the relay drops it
            await self._client.publish(reply, ACK)  # type: ignore[union-attr]

    def _failed(self, position: str, exc: Exception) -> None:
        """Not acknowledged: stop here, and after a back-off resume the consumer from this message, in order."""
        self._generation += 1
        delay = self._retry.next()
        self._warnings.error("failed", "nats: subscriber failed on stream %s sequence %s (%d in a row); it comes "
                             "again in %.2fs: %s", self._stream, position, self._retry.attempts, delay, exc)
        log.debug("nats: subscriber failure", exc_info=True)
        self.restore_soon(delay)

    def restore_soon(self, delay: float = 0.0) -> None:
        """Attach again in the background (after a reconnect, a failure, or silence)."""
        if self._closed:
            return
        if self._restore_task is not None and not self._restore_task.done():
            self._again = True  # never cancel one: it may be between deleting the consumer and creating it
            return
        self._restore_task = asyncio.create_task(self._restore(delay), name=f"syncar-nats-restore-{self.topic}")

    async def _restore(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._again = True
        while self._again and not self._closed:
            self._again = False
            client = self._backend.current_client()
            if client is None:
                return  # the reconnect will call us again
            # In a task of its own, which unsubscribe() lets finish: it may be between deleting the consumer and
            # creating it again, and a consumer left deleted would restart at "now".
            self._attaching = attaching = asyncio.ensure_future(self.attach(client))
            try:
                await asyncio.shield(attaching)
            except BackendError as exc:
                # The watchdog tries again shortly; JetStream may still be recovering its store after a restart.
                self._warnings.warning("resume", "nats: cannot resume consumer %s yet: %s", self.consumer, exc)

    async def _watch(self) -> None:
        """Notice a consumer that went quiet: heartbeats stop when our pull requests are gone."""
        while not self._closed:
            await asyncio.sleep(IDLE_HEARTBEAT / 2)
            restoring = self._restore_task is not None and not self._restore_task.done()
            if restoring or self._backend.current_client() is None:
                continue
            if self._sub is None or time.monotonic() - self._heard > SILENCE:
                log.debug("nats: no word from consumer %s for %.1fs; resuming it", self.consumer,
                          time.monotonic() - self._heard)
                self.restore_soon()

    async def unsubscribe(self) -> None:
        """Stop consuming; the consumer stays on the server, for this instance to come back to."""
        if self._closed:
            return
        self._closed = True
        self._generation += 1
        if self in self._backend._subscriptions:
            self._backend._subscriptions.remove(self)
        for task in (self._watchdog, self._restore_task):
            if task is not None:
                task.cancel()
                await settle(task)
        if self._attaching is not None:
            await asyncio.wait({self._attaching}, timeout=2 * API_TIMEOUT)
            self._attaching.cancel()  # a no-op once it is done
            await settle(self._attaching)
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await sub.unsubscribe()
