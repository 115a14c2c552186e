"""Durable mode of the Redis backend: a stream per key, a consumer group per instance.

`publish()` is a pipelined `XADD <stream> MAXLEN ~ <retention> * body <bytes>`, answered once Redis has appended the
entries (and written them to its AOF, when Redis has one). Each instance reads the stream through its own consumer
group, named after its instance id, created at `$` (the end of the stream) the first time, so a new instance starts
from now and a known one from where it stopped. The reader asks for its own pending entries first (`ID 0`: delivered
before a crash or a lost connection but never acknowledged), then for new ones (`>`), and acknowledges an entry with
XACK only once the handler has returned, sent in the same write as the next XREADGROUP.

`backends.redis.RedisStreamsBackend` is this mode's class; `backends.redis_base` owns the connections and the
reconnects, and this module only says what to send and read on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.crc import key_slot

from backends.base import (
    BackendClosed,
    BackendConfig,
    BackendError,
    FeatureNotSupported,
    Handler,
    Message,
    PublishUnconfirmed,
    Subscription,
    describe_error,
)
from backends.redis_common import CONNECTION_ERRORS, RedisOptions, await_confirmation, stop_task
from backends.redis_upkeep import Upkeep
from sidecar.backoff import Backoff

log = logging.getLogger(__name__)

#: Streams live in the keyspace, apart from broadcast mode's pub/sub channels; the prefix keeps them apart from
#: the application's own keys, and says whose they are in `redis-cli --scan`.
STREAM_PREFIX = "syncar:stream:"
BODY_FIELD = b"body"
#: One XREADGROUP returns at most about this many bytes: COUNT is this over max_message_bytes (8 with the defaults,
#: each entry a batch of up to 1,024 events), and at most MAX_READ_COUNT.
READ_BUDGET_BYTES = 64 * 1024 * 1024
MAX_READ_COUNT = 128
#: A handler that keeps raising gets an entry this many times, then the entry is dropped (logged as an error),
#: so that one poisonous entry cannot stop an instance for good. The waits between attempts double up to the cap.
MAX_DELIVERIES = 10
RETRY_INITIAL, RETRY_MAX = 0.1, 2.0
#: A reader re-reads its pending entries (`ID 0`) at least this often (and every instance_ttl / 10 when that is
#: shorter): Redis before 7.2 counts only such a read, or one that returns entries, as the consumer being seen.
HEARTBEAT_MAX = 60.0


def stream_key(topic: str, cluster: bool = False) -> str:
    """The stream of a topic (syncar's `--key`); on a cluster the topic is a hash tag, so that every stream of one
    key is in one slot, on one node, and one XREADGROUP reads them all."""
    return STREAM_PREFIX + ("{" + topic + "}" if cluster else topic)


async def _reply(conn: Connection, timeout: float) -> Any:
    """The next reply on `conn`; TimeoutError if there is none within `timeout` (the connection is then dropped)."""
    # Not read_response(timeout=...): on a timeout it returns None, which is also XREADGROUP's "nothing new".
    async with asyncio.timeout(timeout):
        return await conn.read_response(timeout=math.inf, disconnect_on_error=False)


class StreamSubscription(Subscription):
    def __init__(self, streams: Streams, stream: Stream) -> None:
        self.active, self._streams, self._stream = True, streams, stream

    async def unsubscribe(self) -> None:
        if self.active:
            self.active = False
            await self._streams.forget(self._stream)


@dataclass(eq=False, slots=True)
class Stream:
    """One subscribed stream and where this instance is in it."""

    key: bytes
    topic: str
    handler: Handler
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # our group exists (checked since the last connect)
    cursor: bytes = b"0"  # b"0" or the last pending id seen: re-reading our pending entries; b">": new entries
    acks: list[bytes] = field(default_factory=list)  # handled, not yet acknowledged
    failures: dict[bytes, int] = field(default_factory=dict)  # entries whose handler raised, and how often
    subscription: StreamSubscription | None = None
    known: bool = False  # our group was there (or made) at least once in this process
    seen_at: float = 0.0  # when we last read our pending entries, which resets the consumer's idle time
    retry: Backoff = field(default_factory=lambda: Backoff(RETRY_INITIAL, RETRY_MAX))  # after a handler failed


class Streams:
    """Durable mode's publish, subscribe and read loop, on the connections RedisStreamsBackend made."""

    def __init__(self, config: BackendConfig, options: RedisOptions, redis: Redis) -> None:
        self.config, self.where, self._secrets, self._redis = config, options.where, options.secrets, redis
        # One group per instance, and one consumer in it: the group's position is the instance's.
        self.group = self.consumer = config.instance_id.encode()
        self._streams: dict[bytes, Stream] = {}
        self._changed = asyncio.Event()  # a stream was added: the idle reader starts reading it at once
        self._count = max(1, min(MAX_READ_COUNT, READ_BUDGET_BYTES // options.max_message_bytes))
        # XREADGROUP blocks for half a health-check interval, so a live connection answers at least that often.
        self._interval = options.health_check_interval
        self._block_ms = max(1, int(self._interval * 500))
        self._wait_replicas = options.wait_replicas
        self._cluster = options.cluster
        self._wait_ms = int(options.connection_kwargs["socket_timeout"] * 500)  # half the publish's bound
        self.upkeep = Upkeep(config, options, redis, self.group)
        self._gc: asyncio.Task[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._streams)

    def keys(self) -> list[bytes]:
        """The streams read now."""
        return list(self._streams)

    def _key(self, topic: str) -> str:
        """The stream of `topic`; on a cluster, only that of the key the connections were placed by (its node)."""
        key = stream_key(topic, cluster=self._cluster is not None)
        if self._cluster is not None and key_slot(key.encode()) != self._cluster.slot:
            raise BackendError(
                f"redis: on a cluster, durable mode serves the streams of its key {self.config.key!r} only, "
                f"not of {topic!r}"
            )
        return key

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        """XADD each body; through Sentinel, then WAIT until a replica has them: Redis replicates asynchronously,
        and an entry only the master had is lost when the sentinels promote its replica."""
        key, retention = self._key(topic), self.config.retention
        if len(bodies) == 1 and not self._wait_replicas:
            await self._redis.xadd(key, {BODY_FIELD: bodies[0]}, maxlen=retention, approximate=True)
        elif bodies:
            async with self._redis.pipeline(transaction=False) as pipe:
                for body in bodies:
                    pipe.xadd(key, {BODY_FIELD: body}, maxlen=retention, approximate=True)
                if self._wait_replicas:
                    pipe.execute_command("WAIT", self._wait_replicas, self._wait_ms)
                replies = await pipe.execute()
            if self._wait_replicas and replies[-1] < self._wait_replicas:
                raise PublishUnconfirmed(
                    f"redis: {replies[-1]} of {self._wait_replicas} replicas had the entries "
                    f"within {self._wait_ms} ms (wait_replicas)"
                )

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        key = self._key(topic).encode()
        if key in self._streams:
            # A second group would be a second instance; a second consumer in ours would split the stream.
            raise FeatureNotSupported(f"redis: durable mode takes one subscription per topic, {topic!r} has one")
        stream = self._streams[key] = Stream(key, topic, handler)
        stream.subscription = subscription = StreamSubscription(self, stream)
        try:
            await self._prepare(stream)
        except redis_errors.ResponseError as exc:  # an ACL, or the key holds something else than a stream
            await subscription.unsubscribe()
            raise BackendError(
                f"redis: subscription to {topic!r} refused: {describe_error(exc, self._secrets)}"
            ) from exc
        except CONNECTION_ERRORS as exc:  # the reconnect prepares it; wait for that below
            log.debug("redis: group for %r not made yet: %s", topic, describe_error(exc, self._secrets))
        await await_confirmation(stream.ready, subscription, topic, self.config.connect_timeout)
        if self._closed:
            raise BackendClosed("redis: backend is closed")
        self._changed.set()
        if self._gc is None:
            self._gc = asyncio.create_task(self.upkeep.collect_garbage_forever(self.keys), name="syncar-redis-gc")
        return subscription

    async def forget(self, stream: Stream) -> None:
        """Stop reading `stream`; the group stays, so a later subscription goes on where this one stopped."""
        if self._streams.get(stream.key) is stream:
            del self._streams[stream.key]
            await self._acknowledge_now(stream)

    async def _prepare(self, stream: Stream) -> None:
        """Make sure our group exists on `stream`, then read our pending entries first."""
        async with self._redis.pipeline(transaction=True) as pipe:
            # One transaction: nobody ever sees our group without its consumer, whose idle time the GC measures.
            pipe.xgroup_create(stream.key, self.group, "$", mkstream=True)
            pipe.xgroup_createconsumer(stream.key, self.group, self.consumer)
            created, consumer = await pipe.execute(raise_on_error=False)
        if isinstance(created, redis_errors.ResponseError) and not str(created).startswith("BUSYGROUP"):
            raise created
        if isinstance(consumer, Exception):
            raise consumer
        if created is True and stream.known:
            log.warning(
                "redis: consumer group %s was gone from %s (Redis lost its data, or the group was deleted): "
                "made again at the end of the stream; events published meanwhile are lost to this instance",
                self.group.decode(),
                stream.key.decode(),
            )
        elif created is True:
            log.info(
                "redis: new consumer group %s on %s: this instance reads the events published from now on "
                "(a new instance, or one forgotten after instance_ttl)",
                self.group.decode(),
                stream.key.decode(),
            )
        else:
            try:
                await self.upkeep.warn_if_trimmed(stream.key)
            except redis_errors.ResponseError as exc:  # only a diagnosis: an ACL without XINFO must not stop us
                log.debug("redis: cannot tell what %s lost: %s", self.group.decode(), exc)
        stream.cursor, stream.known = b"0", True  # the read of the pending entries also says we are alive
        stream.ready.set()

    def lost(self) -> None:
        """The connection is gone: read nothing until restore(), then our pending entries first."""
        for stream in self._streams.values():
            stream.ready.clear()

    async def restore(self) -> None:
        """After a reconnect: check every group again (it may be gone with a Redis that lost its data)."""
        # A Redis restarted on a large dataset accepts connections while it loads it, and refuses XADD and XREADGROUP
        # until it has (LOADING): not connected yet. The groups' check says so too, but only when there are groups.
        await self._redis.ping()
        for stream in tuple(self._streams.values()):
            await self._prepare(stream)

    async def read(self, conn: Connection) -> None:
        """Read the subscribed streams on `conn` and hand each entry over in order, until the connection fails."""
        timeout = self._block_ms / 1000 + self._interval
        heartbeat, loop = min(self.config.instance_ttl / 10, HEARTBEAT_MAX), asyncio.get_running_loop()
        while not self._closed:  # until the connection fails, or close()
            streams = [stream for stream in self._streams.values() if stream.ready.is_set()]
            for stream in streams:
                # Safe at any time: everything handled is acknowledged (in this very write) before the read.
                if stream.cursor == b">" and loop.time() - stream.seen_at >= heartbeat:
                    stream.cursor = b"0"
            commands: list[tuple[Any, ...]] = [("XACK", s.key, self.group, *s.acks) for s in streams if s.acks]
            if streams:
                commands.append(
                    (
                        "XREADGROUP",
                        "GROUP",
                        self.group,
                        self.consumer,
                        "COUNT",
                        self._count,
                        "BLOCK",
                        self._block_ms,
                        "STREAMS",
                        *(s.key for s in streams),
                        *(s.cursor for s in streams),
                    )
                )
            else:  # nothing to read: a PING proves the connection alive, as XREADGROUP's BLOCK does otherwise
                commands.append(("PING",))
            await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            for stream in streams:
                if stream.acks:
                    acked, stream.acks = stream.acks, []
                    try:
                        await _reply(conn, timeout)
                    except redis_errors.ResponseError as exc:  # the group vanished: the XREADGROUP below says so
                        log.debug("redis: XACK of %d entries failed: %s", len(acked), exc)
                    except BaseException:  # not known to be acknowledged: again after the reconnect, first thing
                        stream.acks[:0] = acked
                        raise
            try:
                reply = await _reply(conn, timeout)
            except redis_errors.ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
                await self.restore()  # which says what was lost
                continue
            if not streams:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval / 2):
                        await self._changed.wait()
                self._changed.clear()
                continue
            await self._deliver(streams, reply)

    async def _deliver(self, streams: list[Stream], reply: list[Any] | None) -> None:
        entries_of, now = {key: entries for key, entries in reply or ()}, asyncio.get_running_loop().time()
        for stream in streams:
            entries = entries_of.get(stream.key) or []
            if stream.cursor != b">":
                stream.seen_at = now
            if stream.cursor != b">" and not entries:
                stream.cursor = b">"  # our pending entries are all handled: now the new ones
                continue
            for entry_id, fields in entries:
                if self._streams.get(stream.key) is not stream:
                    break  # unsubscribed meanwhile: the rest stays pending for a later subscription
                if stream.cursor != b">":
                    stream.cursor = entry_id  # the next page of pending entries starts after this one
                if fields is None:  # pending, but retention trimmed it before we acknowledged it
                    log.warning(
                        "redis: entry %s of %s was trimmed by the stream's retention before it was handled: lost",
                        entry_id.decode(),
                        stream.key.decode(),
                    )
                    stream.acks.append(entry_id)
                    continue
                if not await self._handle(stream, entry_id, fields):
                    break

    async def _handle(self, stream: Stream, entry_id: bytes, fields: list[bytes]) -> bool:
        """Hand one entry to the handler; False if it raised and the entry is to come again."""
        # An entry without our field was put there by something else: an empty body, which the relay counts as
        # malformed and drops.
        values = dict(zip(fields[::2], fields[1::2], strict=False))
        try:
            # The entry id is `<ms>-<n>` by the server's clock at XADD: a client can ask for a larger id, never a
            # smaller one than the stream's last.
            await stream.handler(
                Message(
                    values.get(BODY_FIELD, b""),
                    position=entry_id.decode(),
                    accepted_at=int(entry_id.partition(b"-")[0]) / 1000,
                )
            )
        except Exception as exc:
            attempts = stream.failures[entry_id] = stream.failures.get(entry_id, 0) + 1
            if attempts >= MAX_DELIVERIES:
                log.error(
                    "redis: subscriber failed on entry %s of %s %d times, dropping it: %s",
                    entry_id.decode(),
                    stream.key.decode(),
                    attempts,
                    exc,
                )
                del stream.failures[entry_id]
                stream.acks.append(entry_id)
                stream.retry.reset()
                return True
            delay = stream.retry.next()
            log.error(
                "redis: subscriber failed on entry %s of %s, delivering it again in %.1fs: %s",
                entry_id.decode(),
                stream.key.decode(),
                delay,
                exc,
            )
            log.debug("redis: subscriber failure", exc_info=True)
            # Not acknowledged: it is still pending, so re-reading the pending entries brings it back, first.
            stream.cursor = b"0"
            await asyncio.sleep(delay)
            return False
        stream.failures.pop(entry_id, None)
        stream.acks.append(entry_id)
        stream.retry.reset()
        return True

    async def _acknowledge_now(self, stream: Stream) -> None:
        """Best effort, through the pool: what is not acknowledged here is delivered again next time."""
        if stream.acks:
            acked, stream.acks = stream.acks, []
            try:
                async with asyncio.timeout(self.config.connect_timeout):
                    await self._redis.xack(stream.key, self.group, *acked)
            except CONNECTION_ERRORS as exc:
                log.debug("redis: %d entries not acknowledged, they come again: %s", len(acked), exc)

    def stop(self) -> None:
        """Read nothing more: the reader and the collector end at their next step (close() then cancels them)."""
        self._closed = True
        self.upkeep.stop()

    async def close(self) -> None:
        self.stop()
        if self._gc is not None:
            await stop_task(self._gc)
        for stream in tuple(self._streams.values()):
            if stream.subscription is not None:
                stream.subscription.active = False
            stream.ready.set()  # wakes subscribe() calls still waiting
            await self._acknowledge_now(stream)
        self._streams.clear()
