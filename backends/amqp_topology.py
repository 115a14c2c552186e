"""Where syncar's messages live on a RabbitMQ broker, per mode: exchanges, queues, their names and arguments.

Broadcast is feathers-sync 3.x's lib/adapters/amqp.js, so both can share a broker: a fanout exchange named by the
topic, non-durable, not auto-delete, not internal, no arguments (amqplib's `assertExchange(key, 'fanout', {durable:
false})`; other flags make one side fail with PRECONDITION_FAILED); per instance a server-named exclusive auto-delete
queue bound with the key `queue-binding` (fanout ignores it). Messages are transient.

RabbitMQ has no no-local: a queue bound to that exchange gets back every message its daemon published. A daemon that
does not want them (the core says so, `echo` off) publishes with a routing key of its own (`syncar-<16 hex digits>`)
and binds its queue through two exchanges of its own, named after the queue (`spare_own`): the feathers-sync
exchange feeds a direct exchange whose one binding, the daemon's key, leads to a queue of length 0 (dropped at once),
and whose alternate exchange, which RabbitMQ uses for every message that binding does not take, is a fanout to the
daemon's queue. Every other message reaches it: other daemons', feathers-sync's (its routing key is its queue's
name), older syncars' (an empty key). All of them go with the daemon's queue: the fanout when the queue goes
(auto-delete), the direct exchange when the length-0 queue goes (exclusive; deleted with the subscription).

Durable cannot reuse that exchange: feathers-sync declares it non-durable, and RabbitMQ refuses to declare an
existing exchange with other flags. It uses a durable fanout exchange `<topic>.durable` and, per instance, a durable
queue `<topic>.durable.<instance id>` (classic on one node, quorum on a URI that lists several; the URI option
`queue_type` chooses) that outlives the daemon: `x-max-length` with `drop-head` bounds what it keeps for an
instance that is away, `x-expires` deletes it once nobody has consumed or declared it for `instance_ttl`, and
`x-single-active-consumer` keeps a daemon's new consumer waiting while the broker still counts its old one.
Messages are persistent (delivery_mode 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiormq.abc
from aio_pika import DeliveryMode
from aiormq.exceptions import (
    ChannelAccessRefused,
    ChannelLockedResource,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
)

from backends.base import BackendConfigError, Mode

log = logging.getLogger(__name__)

BINDING_KEY = "queue-binding"  # feathers-sync's; a fanout exchange ignores it
DURABLE_SUFFIX = ".durable"
QUEUE_TYPES = ("quorum", "classic")
# Classic for one node: on RabbitMQ 3.10 a quorum queue whose only node crashes within a second or two of the
# queue's declaration never gets a leader again, and every publish routed to it then waits for a confirm that never
# comes, stalling every daemon's outbox (see docs/backends/rabbitmq.md); one node replicates nothing anyway.
DEFAULT_QUEUE_TYPE = "classic"
# Quorum for a URI that lists several hosts, a cluster: a classic queue lives on one node and is gone while that node
# is down; a quorum queue has a member on each node and goes on while a majority of them runs.
CLUSTER_QUEUE_TYPE = "quorum"
MAX_NAME_BYTES = 255  # AMQP 0-9-1 short strings
DIGEST_CHARS = 16  # 64 bits of sha256 keep shortened names apart
NAME_PATTERN = re.compile(r"[a-zA-Z0-9\-_.:@#,/+ ]+")  # what pamqp lets through (AMQP 0-9-1 names, widened)
SAFE_CHARS = frozenset(string.ascii_letters + string.digits + "-_.:@")  # kept as they are in an instance id


def durable_queue_name(topic: str, instance_id: str) -> str:
    """`<topic>.durable.<instance id>`: stable, one per instance id, readable in `rabbitmqctl list_queues`.

    The AMQP client takes only `A-Z a-z 0-9 - _ . : @ # , / +` and space in a name, up to 255 bytes for RabbitMQ.
    In the instance id, any other byte (and `+`, `#`, `,`, `/`, space) is written `+HH` (its UTF-8 bytes in hex),
    so the mapping is one-to-one: `pod é` is `pod+20+C3+A9`. A name that is still too long keeps its first bytes
    and ends in `#` and a digest of the full name, so two long instance ids never share a queue.
    """
    escaped = "".join(chr(byte) if chr(byte) in SAFE_CHARS else f"+{byte:02X}" for byte in instance_id.encode())
    name = f"{topic}{DURABLE_SUFFIX}.{escaped}"
    encoded = name.encode()
    if len(encoded) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:DIGEST_CHARS]
    return f"{encoded[: MAX_NAME_BYTES - 1 - DIGEST_CHARS].decode(errors='ignore')}#{digest}"


def check_exchange_name(name: str) -> str:
    """The name, or BackendConfigError if it cannot name an exchange (the AMQP client would raise ValueError)."""
    if not NAME_PATTERN.fullmatch(name) or len(name.encode()) > MAX_NAME_BYTES:
        raise BackendConfigError(
            f"amqp: {name!r} cannot name an exchange: use up to {MAX_NAME_BYTES} of "
            "A-Z a-z 0-9 - _ . : @ # , / + and space (durable mode adds '.durable' to the key)"
        )
    return name


@dataclass(frozen=True, slots=True)
class Topology:
    """What one backend declares and how it publishes, from its mode and settings."""

    mode: Mode
    instance_id: str
    retention: int
    instance_ttl: float
    queue_type: str = DEFAULT_QUEUE_TYPE

    @property
    def durable(self) -> bool:
        return self.mode is Mode.DURABLE

    @property
    def delivery_mode(self) -> DeliveryMode:
        return DeliveryMode.PERSISTENT if self.durable else DeliveryMode.NOT_PERSISTENT

    def exchange(self, topic: str) -> str:
        """The exchange for the topic (syncar's `--key`); BackendConfigError if the key cannot name one."""
        return check_exchange_name(f"{topic}{DURABLE_SUFFIX}" if self.durable else topic)

    def queue(self, topic: str) -> str:
        """The durable queue's name; broadcast queues are named by the broker."""
        return durable_queue_name(topic, self.instance_id)

    def queue_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": self.queue_type,
            "x-max-length": self.retention,
            "x-overflow": "drop-head",
            "x-expires": max(1, round(self.instance_ttl * 1000)),  # milliseconds
            # A daemon that consumes again while the broker still counts its old consumer (the node that led a
            # quorum queue died, a partition) waits until the broker has put back what the old one held: with two
            # consumers at once the new one got newer messages first and the old ones after them, out of order.
            "x-single-active-consumer": True,
        }

    async def declare(
        self, underlay: aiormq.abc.AbstractChannel, topic: str, *, again: bool = False, spare: str | None = None
    ) -> tuple[str, int]:
        """Declare the exchange and this instance's queue, bind them; return the queue's name and its backlog.

        `spare` (broadcast mode): the routing key of every message this daemon publishes, for the queue not to get
        them back (`spare_own`).

        `again`: this daemon declared the queue before (a reconnect, a cancelled consumer). If it is gone, what was
        published for this instance meanwhile reached no queue of its own, and the publishers were told it was
        stored: a warning says so. (Its apps are told too, by a `gap`, once the next event of an origin arrives.)
        """
        if not self.durable:
            await underlay.exchange_declare(
                topic, exchange_type="fanout", durable=False, auto_delete=False, internal=False
            )
            declared = await underlay.queue_declare("", durable=False, exclusive=True, auto_delete=True)
            queue = declared.queue or ""
            if spare is None or not await spare_own(underlay.connection, topic, queue, spare):
                await underlay.queue_bind(queue, topic, routing_key=BINDING_KEY)
            return queue, 0
        # On a channel of its own: a refused declaration closes the channel it was made on, and the consuming
        # channel must not go down (and come back) over it.
        connection = underlay.connection
        channel = await connection.channel(publisher_confirms=False)
        try:
            await channel.exchange_declare(
                self.exchange(topic), exchange_type="fanout", durable=True, auto_delete=False, internal=False
            )
            queue = self.queue(topic)
            if again and not await _exists(channel, queue):
                # A broker back without its data (another node name, an empty data directory), the queue deleted,
                # or expired after instance_ttl without a consumer: the publishers' confirms cannot tell.
                log.warning(
                    "amqp: queue %r was gone when this instance consumed it again (the broker came back without "
                    "its data, or the queue was deleted or expired): what was published for this instance meanwhile "
                    "is lost; declared again, empty",
                    queue,
                )
                channel = await connection.channel(publisher_confirms=False)  # the broker closed the other one
            try:
                declared = await channel.queue_declare(queue, durable=True, arguments=self.queue_arguments())
            except ChannelPreconditionFailed as exc:
                # Declared before with other settings (retention, instance_ttl, queue_type changed since): queue
                # arguments cannot change, and deleting the queue would lose what it holds. Use it as it is.
                log.warning(
                    "amqp: queue %r exists with other settings, kept as they are (delete the queue to "
                    "apply new ones, losing what it holds): %s",
                    queue,
                    " ".join(str(exc).split()),
                )
                channel = await connection.channel(publisher_confirms=False)
                declared = await channel.queue_declare(queue, passive=True)
            await channel.queue_bind(queue, self.exchange(topic), routing_key=BINDING_KEY)
            return queue, declared.message_count or 0
        finally:
            await _close(channel)

    async def bind_others(self, connection: aiormq.abc.AbstractConnection, topic: str, instances: Iterable[str]) -> int:
        """Bind the durable queues of other `instances` to the topic's exchange again; how many exist and are bound.

        RabbitMQ 3.10 can bring an instance's queue back from a crash without its binding (docs/reliability.md):
        until that instance reconnects, what the others publish is confirmed (their own queues take it) and never
        reaches its queue. A publisher that binds the queues of the instances it knows before it publishes again
        closes that window. Binding again what is bound changes nothing; a queue that is gone (expired, deleted, or
        of an instance in broadcast mode) is not made.
        """
        exchange, bound = self.exchange(topic), 0
        channel = await connection.channel(publisher_confirms=False)
        try:
            for instance in instances:
                if instance == self.instance_id:
                    continue
                try:
                    await channel.queue_bind(durable_queue_name(topic, instance), exchange, routing_key=BINDING_KEY)
                    bound += 1
                except ChannelNotFoundEntity:
                    channel = await connection.channel(publisher_confirms=False)  # the broker closed that one
        finally:
            await _close(channel)
        return bound


def own_names(queue: str) -> tuple[str, str, str]:
    """The exchanges and the length-0 queue that keep a broadcast queue's own messages from it (`spare_own`): the
    direct exchange, the fanout it falls back on, the queue that drops what the direct exchange routes."""
    return f"syncar.{queue}.others", f"syncar.{queue}.in", f"syncar.{queue}.own"


async def spare_own(connection: aiormq.abc.AbstractConnection, topic: str, queue: str, key: str) -> bool:
    """Bind `queue` to the topic's exchange for every message but those published with routing key `key`; False if
    the user may not make what that takes (permissions for the key's exchange and `amq.gen-` queues alone, as
    docs/backends/rabbitmq.md asked for before): then the caller binds the queue directly, and our own messages come
    back (the subscription skips them by their routing key).

    A direct exchange routes `key` to a queue of length 0, which drops it; RabbitMQ hands what it routes nowhere to its
    alternate exchange, a fanout to `queue`. Bound to the topic's exchange last, so that nothing passes before the
    rest is in place. On a channel of its own: a refusal closes the channel it was made on.
    """
    others, inbound, dropped = own_names(queue)
    channel = await connection.channel(publisher_confirms=False)
    try:
        await channel.queue_declare(dropped, durable=False, exclusive=True, arguments={"x-max-length": 0})
        await channel.exchange_declare(inbound, exchange_type="fanout", durable=False, auto_delete=True)
        await channel.queue_bind(queue, inbound, routing_key=BINDING_KEY)
        await channel.exchange_declare(
            others, exchange_type="direct", durable=False, auto_delete=True, arguments={"alternate-exchange": inbound}
        )
        await channel.queue_bind(dropped, others, routing_key=key)
        await channel.exchange_bind(destination=others, source=topic, routing_key=BINDING_KEY)
    except ChannelAccessRefused as exc:
        log.warning(
            "amqp: not allowed to make %r and the like, so the broker sends this daemon's own messages back (skipped "
            "as they arrive): grant configure, write and read on '^syncar\\.amq\\.gen-.*$' too: %s",
            dropped,
            " ".join(str(exc).split()),
        )
        return False
    finally:
        await _close(channel)
    return True


async def drop_spared(connection: aiormq.abc.AbstractConnection, queue: str) -> None:
    """Delete what `spare_own` made for `queue`: its length-0 queue, and with it (auto-delete) the direct exchange.
    The fanout goes with `queue` itself. A queue that is gone already, was never allowed, or is still another
    connection's is no error."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        await channel.queue_delete(own_names(queue)[2])
    except ChannelAccessRefused:
        pass  # not allowed to make it either
    except ChannelLockedResource:
        pass  # exclusive to our last connection, which the broker has not given up yet: it goes with that one
    finally:
        await _close(channel)


async def _close(channel: aiormq.abc.AbstractChannel) -> None:
    """Close a channel of our own unless the broker already did; an error closing it changes nothing."""
    if not channel.is_closed:
        with contextlib.suppress(aiormq.exceptions.AMQPError, OSError, RuntimeError):
            await channel.close()


async def _exists(channel: aiormq.abc.AbstractChannel, queue: str) -> bool:
    """Whether `queue` exists; a passive declare, which closes `channel` if it does not."""
    try:
        await channel.queue_declare(queue, passive=True)
    except ChannelNotFoundEntity:
        return False
    return True
