"""The NATS backend's durable mode: JetStream's streams and consumers, and publishing to them.

A topic (`--key`) has one stream, `syncar-<key>`, on the subject `syncar.durable.<key>`: a subject of its own, so
broadcast daemons and feathers-sync apps on the subject `<key>` never see (or feed) it. Each instance reads the
stream through its own durable pull consumer, `syncar-<instance id>`, acknowledging each message once the handler
returned. See docs/backends/nats.md ("Durable mode") for what this promises and costs.

This module says what to ask JetStream for (`ensure_stream`, `ensure_consumer`, `JetStreamPublisher`); the reading
of a consumer is `backends.nats_consumer`, and the connection they use is `backends.nats_connection`'s.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from backends.base import BackendConfig, BackendError, BackendUnavailable, PublishTimeout, PublishUnconfirmed
from backends.nats_common import CONNECTION_ERRORS, describe, settle, stream_replicas
from backends.nats_internals import release_publish_slots

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "syncar.durable."
NAME_PREFIX = "syncar-"
#: Seconds for a JetStream API call or a PubAck.
API_TIMEOUT = 5.0
#: JetStream's error codes for a stream we ask for and that exists (see ensure_stream).
STREAM_NAME_IN_USE, SUBJECTS_OVERLAP = 10058, 10065
#: Messages delivered and not yet acknowledged, at most (a bound the server keeps; above 1.5 x the consumer's
#: PULL_BATCH).
MAX_ACK_PENDING = 256
#: A message unacknowledged this long is sent again. We never rely on it for order (see `ensure_consumer`).
ACK_WAIT = 30.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_SUBJECT = re.compile(r"[^.\s*>]+(\.[^.\s*>]+)*")

#: Returns once the server has processed what was written on the client, or raises (NatsConnection._confirm).
Confirm = Callable[[Client, "asyncio.Future[None] | None"], Awaitable[None]]


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


async def ensure_stream(js: JetStreamContext, topic: str, config: BackendConfig) -> api.StreamInfo:
    """Create the topic's stream, or bring its limits and replicas to ours; any other setting an operator gave it
    stays."""
    name, retention, ttl, replicas = (
        jetstream_name(topic),
        config.retention,
        config.instance_ttl,
        stream_replicas(config.uri),
    )
    try:
        return await js.add_stream(
            api.StreamConfig(
                name=name,
                subjects=[durable_subject(topic)],
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS,
                discard=api.DiscardPolicy.OLD,
                max_msgs=retention,
                # Older messages could only be for instances away longer than the ttl, which the server forgets.
                max_age=ttl,
                num_replicas=replicas,
            )
        )
    except nats.js.errors.BadRequestError as exc:
        # Made before: "stream name already in use with a different configuration"; or, when two daemons make it at
        # the same moment, "subjects overlap with an existing stream", which is ours if the name is (else refused).
        if exc.err_code not in (STREAM_NAME_IN_USE, SUBJECTS_OVERLAP):
            raise _unplaced(exc, replicas) from exc
        refusal = exc
    except nats.js.errors.ServerError as exc:  # "replicas > 1 not supported in non-clustered mode", 500
        raise _unplaced(exc, replicas) from exc
    try:
        info = await js.stream_info(name)
    except nats.js.errors.NotFoundError:  # the subjects are another stream's
        raise _unplaced(refusal, replicas) from refusal
    current = info.config
    if (
        current.max_msgs != retention
        or not math.isclose(current.max_age or 0.0, ttl, abs_tol=1e-3)
        or (current.num_replicas or 1) != replicas
    ):
        log.info(
            "nats: stream %s: max_msgs %s -> %d, max_age %ss -> %ss, replicas %s -> %d",
            name,
            current.max_msgs,
            retention,
            current.max_age,
            ttl,
            current.num_replicas,
            replicas,
        )
        try:
            info = await js.update_stream(current.evolve(max_msgs=retention, max_age=ttl, num_replicas=replicas))
        except (nats.js.errors.BadRequestError, nats.js.errors.ServerError) as exc:
            raise _unplaced(exc, replicas) from exc
    return info


def _unplaced(exc: nats.js.errors.APIError, replicas: int) -> BackendError:
    """JetStream's refusal of a stream, in one line; with replicas, what the cluster could not do."""
    reason = exc.description or str(exc.code)
    if replicas > 1:
        return BackendError(
            f"nats: JetStream cannot place a stream with replicas={replicas}: {reason} "
            f"(replicas=N in the URI needs N JetStream servers in the cluster)"
        )
    return BackendError(f"nats: JetStream refused the stream: {reason}")


def _delivered_past(info: api.ConsumerInfo, position: int | None) -> bool:
    """The server delivered beyond what this process handled: those messages were on the lost connection. A consumer
    leader elected after a node died can report them neither pending nor waiting (seen once in the fault suite's
    case 8); they would come back only after ACK_WAIT, behind newer ones."""
    delivered = info.delivered
    return (
        position is not None
        and delivered is not None
        and delivered.stream_seq is not None
        and (delivered.stream_seq >= position)
    )


async def ensure_consumer(
    js: JetStreamContext,
    stream: api.StreamInfo,
    name: str,
    ttl: float,
    position: int | None,
    *,
    afresh: bool = False,
) -> int:
    """Create this instance's durable consumer, or make it resume at its first unacknowledged message.

    A consumer created now starts after the stream's last message: new messages only. Messages a previous
    connection got and did not handle would otherwise come back only after ACK_WAIT, behind newer ones, so a
    consumer with any is recreated from its ack floor instead: in order, at the cost of duplicates, which the
    relay drops. `position`, the next stream sequence this process needs, is where to start if the consumer is
    gone (deleted, or a start that failed half-way). `afresh`: recreate it in any case (a delivery was lost on
    the way: the server counts it delivered).

    With `position` known, unacknowledged messages are only a reason to recreate if the consumer delivered at or
    past it: those before it were handled here, and only their acknowledgement was lost (with the node that led
    the consumer, say). They come back after ACK_WAIT, and the relay drops them. Recreating is not free in a
    cluster: the new consumer is a new raft group, and JetStream answers its creation only once the group has
    elected a leader: with a node down, 0.5 to 19.8 s to the first delivery in 8 tries (nats-server 2.9.10).

    Returns the consumer sequence of the consumer's last delivery (0 for a consumer created now): each delivery
    has the next one, so a jump is a delivery that never reached us.
    """
    stream_name = stream.config.name
    assert stream_name is not None
    settings: dict[str, Any] = {
        "durable_name": name,
        "ack_policy": api.AckPolicy.EXPLICIT,
        "ack_wait": ACK_WAIT,
        "max_deliver": -1,
        "max_ack_pending": MAX_ACK_PENDING,
        "inactive_threshold": ttl,
        "description": "syncar instance",
    }
    try:
        info: api.ConsumerInfo | None = await js.consumer_info(stream_name, name)
    except nats.js.errors.NotFoundError:
        info = None
    last = stream.state.last_seq
    if info is None:
        if position is not None and position > last + 1:
            log.warning(
                "nats: stream %s restarts at sequence %d, below ours (%d): was it recreated?",
                stream_name,
                last,
                position,
            )
            position = None
        start = position or last + 1
        log.info("nats: creating consumer %s on stream %s from sequence %d", name, stream_name, start)
    elif afresh or info.num_waiting or _delivered_past(info, position) or (info.num_ack_pending and position is None):
        config = info.config
        acked = info.ack_floor
        # A consumer that never had a message acknowledged reports a floor of 0: its start is the floor then.
        floor = acked.stream_seq + 1 if acked is not None and acked.consumer_seq else (config.opt_start_seq or 1)
        start = max(floor, min(position or floor, last + 1))
        log.info(
            "nats: consumer %s has %d unacknowledged messages, delivered up to stream sequence %s; "
            "resuming it at stream sequence %d",
            name,
            info.num_ack_pending,
            info.delivered.stream_seq if info.delivered is not None else None,
            start,
        )
        await js.delete_consumer(stream_name, name)
    else:
        if info.num_ack_pending:
            log.info(
                "nats: consumer %s has %d unacknowledged messages, all before stream sequence %d, handled here "
                "(their acknowledgements were lost); resuming it as it is",
                name,
                info.num_ack_pending,
                position,
            )
        config = info.config
        if config.inactive_threshold is None or not math.isclose(config.inactive_threshold, ttl, abs_tol=1e-3):
            log.info("nats: consumer %s: inactive_threshold %ss -> %ss", name, config.inactive_threshold, ttl)
            await js.add_consumer(stream_name, config.evolve(inactive_threshold=ttl))
        return (info.delivered.consumer_seq or 0) if info.delivered is not None else 0
    await js.add_consumer(
        stream_name,
        api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start, **settings),
    )
    return 0


class JetStreamPublisher:
    """publish() of the durable mode: each body stored by JetStream (PubAck), in order.

    It writes on the client it is given; `confirm(client, lost)` is the backend's check that the connection
    itself still works, which tells a dead connection from a JetStream that does not answer.
    """

    def __init__(self, config: BackendConfig, where: str, *, confirm: Confirm) -> None:
        self._config, self._where, self._confirm = config, where, confirm
        self._js: JetStreamContext | None = None
        self._client: Client | None = None
        self.streams: set[str] = set()  # topics whose stream exists (as far as we know)

    async def publish(
        self, client: Client, topic: str, bodies: Sequence[bytes], lost: asyncio.Future[None] | None
    ) -> None:
        if self._client is not client:  # nats-py's context keeps a reply subscription on its connection
            self._client, self._js = client, client.jetstream(timeout=API_TIMEOUT)
        js = self._js
        assert js is not None
        subject = durable_subject(topic)
        config, where = self._config, self._where
        if topic not in self.streams:
            try:
                await ensure_stream(js, topic, config)
            except CONNECTION_ERRORS as exc:
                raise translate(exc, where, "creating the stream") from exc
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
                    raise PublishUnconfirmed(f"nats: connection to {where} lost before JetStream confirmed")
                await self._confirm(client, lost)  # raises if the connection itself is dead
                raise PublishTimeout(f"nats: JetStream on {where} did not confirm within {API_TIMEOUT:g}s")
            stored.result()
        except nats.js.errors.NoStreamResponseError as exc:
            # No stream on the subject (deleted, or the server lost its store): create it again on the retry.
            self.streams.discard(topic)
            raise BackendUnavailable(f"nats: no JetStream stream answered on {where}; retrying") from exc
        except BackendError:
            raise
        except CONNECTION_ERRORS as exc:
            raise translate(exc, where, "publish") from exc
        finally:
            # A PubAck that will never come holds one of nats-py's publish_async slots forever. Ours is the only
            # publisher on this context (the outbox sends one batch at a time): every future left is this batch's.
            for ack in acks:
                ack.cancel()
            release_publish_slots(js)
