"""The relay core: local fan-out, echo suppression, the replay buffer and the path to the outbox.

It knows no broker: it hands outgoing events to the outbox and takes incoming
messages from whatever backend the daemon started. Nor does it know sockets:
its clients are `Subscriber`s, to which it sends frames made by
sidecar.protocol. Every event is serialised once; the same frame bytes are
written to every client that wants it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import orjson

from backends.base import BackendState, Message
from sidecar import protocol
from sidecar.acks import Barriers
from sidecar.admission import ClientIds, resume_point
from sidecar.backlog import Backlog
from sidecar.codec import NULL, Codec, Event, Outgoing, encode
from sidecar.dedup import EventIds
from sidecar.errors import CodecError
from sidecar.gaps import Gap, GapTracker
from sidecar.hello import Resume
from sidecar.logging import RateLimitedLogger, printable
from sidecar.metrics import DropReason, Metrics
from sidecar.outbox import Outbox, OutboxFull
from sidecar.protocol import ErrorCode, Publish
from sidecar.replay import CatchUp, Entry, ReplayBuffer, SharedStrings
from sidecar.seen import SeenIds
from sidecar.subscriber import Subscriber

log = logging.getLogger(__name__)
#: Remote event ids remembered for de-duplication; at 10,000 events/s, ten seconds of them.
DEDUP_WINDOW = 100_000
#: Seconds a remote event's time may be ahead of our clock and still be measured (the hosts' clocks differ).
MAX_CLOCK_AHEAD = 60.0
#: Origins whose JSON is kept at once; more instances than this only cost a cache refill.
MAX_ORIGINS = 1024
bus_warnings = RateLimitedLogger(log, interval=10.0)


class Relay:
    def __init__(
        self,
        instance_id: str,
        *,
        backend_name: str,
        codec: Codec,
        outbox: Outbox,
        replay: ReplayBuffer,
        metrics: Metrics,
        id_key: bytes,
        gaps: GapTracker,
        durable: bool = False,
        max_event_age: float = 86_400.0,
    ) -> None:
        self.instance_id = instance_id
        self.durable = durable
        self._metrics = metrics
        self.backend_name = backend_name
        self.epoch = secrets.token_hex(8)  # seqs are only comparable within one run of the daemon
        self.seq = 0
        self.broker_up = False
        self.node: str | None = None  # the broker node while it is up, as the backend tells it
        self._was_up = False
        self._stopping = False
        self._clients: set[Subscriber] = set()  # those getting live events
        self._catching_up: dict[Subscriber, CatchUp] = {}  # those still getting what they missed
        self._client_ids = ClientIds(metrics)
        self._codec = codec
        self._outbox = outbox
        self._replay = replay
        self._origin_json = orjson.dumps(instance_id)
        self._ids = EventIds(id_key)
        self._max_event_age = max_event_age  # older remote times are not believed (`time: 1` from a stranger)
        self._seen = SeenIds(DEDUP_WINDOW)
        self._gaps = gaps
        self._origins: dict[str | None, bytes] = {}
        self._strings = SharedStrings()
        self._backlog = Backlog(replay, metrics) if durable else None  # what stays on the broker while no app is here
        # Counts not yet added to the metrics: publishes update them once per read, not per event.
        self._published = self._delivered_locally = 0

    # -- clients -------------------------------------------------------------------------------

    def join(self, client: Subscriber, resume: Resume | None, *, barriers: bool = False) -> bool:
        """Start delivering to `client`: welcome it (saying it is acknowledged by barriers, if it asked), replay what
        it missed, then live events. False if it is refused (its `client_id` is another connection's,
        sidecar.admission), and closed."""
        if not self._client_ids.claim(client):
            return False
        cursor, gap = resume_point(resume, epoch=self.epoch, seq=self.seq, durable=self.durable, replay=self._replay)
        client.send(
            protocol.welcome(
                instance=self.instance_id,
                backend=self.backend_name,
                broker_up=self.broker_up,
                epoch=self.epoch,
                seq=self.seq,
                client_id=client.client_id,
                resumed=resume is not None and gap is None,
                max_frame_bytes=client.max_frame_bytes,
                node=self.node,
                barriers=barriers,
            )
        )
        if gap is not None:
            self._metrics.resume_missed.inc(gap.missed)
            client.send(
                protocol.error(
                    ErrorCode.RESUME_GAP,
                    f"cannot resume fully: events after your seq may be missing ({gap.why})",
                    epoch=self.epoch,
                    seq=self.seq,
                    **gap.fields(),
                )
            )
        if self._backlog is not None:
            self._backlog.app_joined(client, self.seq if cursor is None else cursor)
        if cursor is None or cursor == self.seq:
            self._clients.add(client)
        else:
            self._catching_up[client] = CatchUp(cursor, self.seq)
            self._catch_up(client)
        return True

    def _catch_up(self, client: Subscriber) -> None:
        """Hand `client` the next part of what it missed, up to an eighth of its queue; the rest comes in later
        turns of the loop, while its transport takes more (see Connection.pause_writing). Live events reach it
        through the replay buffer meanwhile, in order; once none is left, it gets them as every client does."""
        state = self._catching_up.get(client)
        if state is None:
            return  # gone
        state.scheduled = False
        if client.paused:
            return  # resume_replay() brings it back when the transport has drained
        entries = self._replay.after(state.cursor)
        if entries is None:  # it read slower than events came, and the buffer moved on
            del self._catching_up[client]
            if self._backlog is not None:  # leave() will not know it: it is in neither set by then
                self._backlog.app_left(client, state.cursor)
            self._metrics.disconnects.labels("slow_client").inc()
            client.close(
                protocol.error(
                    ErrorCode.SLOW_CLIENT,
                    "you read slower than events came while catching up; resume from your last seq",
                )
            )
            return
        budget = client.queue_bytes // 8
        for entry in entries:
            state.cursor = entry.seq
            if (entry.source != client.client_id or (client.echo and entry.seq > state.live_from)) and client.wants(
                entry.path, entry.event
            ):
                frame = entry.frame()
                client.send(frame)
                budget -= len(frame)
                if budget <= 0:
                    break
        if state.cursor == self.seq:
            del self._catching_up[client]
            self._clients.add(client)
        else:
            state.scheduled = True
            asyncio.get_running_loop().call_soon(self._catch_up, client)

    def resume_replay(self, client: Subscriber) -> None:
        """`client`'s transport can take more: go on with its replay, if it is catching up."""
        state = self._catching_up.get(client)
        if state is not None and not state.scheduled:
            self._catch_up(client)

    def leave(self, client: Subscriber) -> None:
        self._client_ids.release(client)  # also one cut off while catching up, no longer in either set
        state = self._catching_up.pop(client, None)
        if state is not None:
            had = state.cursor
        elif client in self._clients:
            self._clients.discard(client)
            had = self.seq
        else:
            return  # never joined, or cut off while catching up
        if self._backlog is not None:
            self._backlog.app_left(client, had)

    def _broadcast(self, frame: bytes) -> None:
        for client in [*self._clients, *self._catching_up]:
            client.send(frame)

    # -- events in -----------------------------------------------------------------------------

    def publish(self, client: Subscriber, publish: Publish, barriers: Barriers) -> None:
        """A local client's event: deliver it here at once, and queue it for the broker; its ack, if it asked for
        one, told through the client's `barriers` (sidecar.acks), at once or by a barrier."""
        self._published += 1
        # The app's id goes on the bus in the app's own scope, so that no other app can take it (sidecar/dedup.py).
        app_id = publish.id
        event_id = self._ids.new() if app_id is None else client.id_scope + app_id
        event = Event(
            event_id,
            time.time(),
            publish.event,
            publish.path,
            publish.data,
            publish.context,
            publish.traceparent,
            publish.tracestate,
            publish.bin,
        )
        part = encode(event)
        # `data` and `context` are views into the app's whole read (up to 256 KiB): kept by an event waiting in the
        # outbox, or by its ack, they held every read the broker had not taken yet (a second copy of the outbox).
        if self._codec.packs_parts:
            event.data = event.context = NULL
        else:  # feathers-sync's pack reads them: copies of their own, the event's size, not its whole read's
            event.data, event.context = event.data.copy(), event.context.copy()
        if publish.ack:
            publish.data = publish.context = NULL
        self._delivered_locally += self._fan_out(part, self._origin_json, publish.path, publish.event, client)
        if len(part) > self._outbox.max_event_bytes:
            self._metrics.dropped.labels(DropReason.TOO_LARGE).inc()
            client.send(
                protocol.publish_refused(
                    publish,
                    ErrorCode.TOO_LARGE_FOR_BROKER,
                    f"event is {len(part)} bytes; the broker takes at most {self._outbox.max_event_bytes}",
                )
            )
            return
        outgoing = Outgoing(event, part, time.monotonic())
        answer = barriers.answer(publish) if publish.ack else None
        try:
            self._outbox.put(outgoing, answer)
        except OutboxFull as exc:
            self._metrics.dropped.labels(DropReason.OUTBOX_FULL).inc()
            if answer is not None:
                barriers.take_back()
            client.send(protocol.publish_refused(publish, ErrorCode.OUTBOX_FULL, f"not sent to the broker: {exc}"))

    def scope_of(self, client_id: str) -> str:
        """What the ids a client with this `client_id` names its events with are prefixed with on the bus."""
        return self._ids.scope(client_id)

    def flush_counts(self) -> None:
        """Add the publishes counted since the last call, and their local deliveries, to the metrics: the hot path
        counts in plain ints, and a connection flushes them after each read."""
        if self._published:
            self._metrics.published.inc(self._published)
            self._published = 0
        if self._delivered_locally:
            self._metrics.delivered.inc(self._delivered_locally)
            self._delivered_locally = 0

    async def on_message(self, message: Message) -> None:
        """A message from the broker: unpack it, drop our own echoes, deliver the rest."""
        if echoed := self._codec.echoed(message.body):
            self._metrics.dropped.labels(DropReason.ECHO).inc(echoed)
            return
        try:
            batch = self._codec.unpack(message.body, message.accepted_at)
        except CodecError as exc:
            self._metrics.dropped.labels(exc.reason).inc()
            # The message may quote the broker's bytes (a foreign batch's version, say): escaped and cut.
            bus_warnings.warning(
                exc.reason, "dropped a %s message from the broker: %s", exc.reason, printable(str(exc))
            )
            return
        if batch.origin == self.instance_id:
            self._metrics.dropped.labels(DropReason.ECHO).inc(len(batch.events))
            return
        if self._backlog is not None and not (self._clients or self._catching_up):
            await self._backlog.room(batch, len(message.body))
        self._metrics.received.inc(len(batch.events))
        if batch.seq is not None and batch.run is not None and batch.origin is not None:
            self._check_gap(batch.origin, batch.run, batch.seq, len(batch.events))
        origin_json = self._origins.get(batch.origin) or self._origin_of(batch.origin)
        first = batch.events[0].time if batch.events else None
        if first is not None:
            # Once per message: its first event waited longest. A time no clock difference explains is not measured.
            age = time.time() - first
            if -MAX_CLOCK_AHEAD <= age <= self._max_event_age:
                self._metrics.relay_seconds.observe(max(age, 0.0))
            else:
                self._metrics.implausible_times.inc()
        delivered = 0
        for event in batch.events:
            # A broker redelivers after a lost ack, a client resends after a lost ack: deliver once. Events from
            # feathers-sync apps have no origin and no id of their own, so nothing to compare.
            if batch.origin is not None and not self._seen.add(batch.origin, event.id):
                self._metrics.dropped.labels(DropReason.DUPLICATE).inc()
                continue
            delivered += self._fan_out_received(event, origin_json)
        if delivered:
            self._metrics.delivered.inc(delivered)

    def _check_gap(self, origin: str, run: str, seq: int, count: int) -> None:
        gap = self._gaps.heard(origin, run, seq, count)
        if gap is not None:
            self.tell_gap(gap)

    def tell_gap(self, gap: Gap) -> None:
        """Count the events of `gap` as missed, log it and tell every app (found by a batch, or by the fleet)."""
        origin, run = gap.origin, gap.run
        self._metrics.missed.inc(gap.missed)
        bus_warnings.warning(
            f"gap-{gap.reason}",
            "missed %d events of %s (%s, seq %d-%d of run %s)",
            gap.missed,
            printable(origin),
            gap.reason,
            gap.first,
            gap.last,
            printable(run),
        )
        # Every client: which of the missed events it would have wanted cannot be known.
        self._broadcast(protocol.gap(origin=origin, run=run, first=gap.first, last=gap.last, reason=gap.reason))

    def _fan_out(self, part: bytes, origin_json: bytes, path: str, event: str, source: Subscriber | None) -> int:
        """Number a local client's event, keep it for replay, and send its frame (made once, if a client wants it)
        to the clients that want it."""
        self.seq = seq = self.seq + 1
        share = self._strings
        path, event = share[path], share[event]  # so that clients' filter caches hold the same strings
        return self._send(Entry(seq, path, event, source.client_id if source else None, origin_json, part), source)

    def _fan_out_received(self, event: Event, origin_json: bytes) -> int:
        """The same for an event from the broker, its frame made at once, straight from the event."""
        self.seq = seq = self.seq + 1
        share = self._strings
        frame = protocol.received_event(seq, origin_json, event)
        return self._send(Entry(seq, share[event.path], share[event.event], None, origin_json, frame, True), None)

    def _send(self, entry: Entry, source: Subscriber | None) -> int:
        self._replay.append(entry)
        path, event = entry.path, entry.event
        frame = None
        delivered = 0
        for client in self._clients:
            if (client is not source or client.echo) and client.wants(path, event):
                if frame is None:
                    frame = entry.frame()
                client.send(frame)
                delivered += 1
        return delivered

    def _origin_of(self, origin: str | None) -> bytes:
        """An origin as JSON, made once and kept (up to MAX_ORIGINS of them): replay entries share it."""
        if len(self._origins) >= MAX_ORIGINS:
            self._origins.clear()
        self._origins[origin] = encoded = orjson.dumps(origin)
        return encoded

    # -- broker state --------------------------------------------------------------------------

    def on_backend_state(self, state: BackendState, node: str | None = None) -> None:
        """The backend's state, and the node it is connected to (None where it cannot tell)."""
        up = state is BackendState.CONNECTED
        self._outbox.set_connected(up)
        self._metrics.broker_up.set(up)
        if up != self.broker_up:
            self.broker_up = up
            self.node = node if up else None
            self._metrics.follow_node(self.node)
            if up and self._was_up:
                self._metrics.reconnects.inc()
            self._was_up |= up
            if self._stopping:
                return
            log.log(
                logging.INFO if up else logging.WARNING, "broker %s (%s)", "up" if up else "down", self.backend_name
            )
            self._broadcast(self._status())

    def _status(self, stopping: bool = False) -> bytes:
        return protocol.status(
            backend=self.backend_name,
            broker_up=self.broker_up,
            outbox=len(self._outbox),
            stopping=stopping,
            node=self.node,
        )

    # -- shutdown ------------------------------------------------------------------------------

    def stop(self) -> None:
        """The daemon is shutting down: the broker going and coming back is news to neither the clients nor the log."""
        self._stopping = True
        if self._backlog is not None:
            self._backlog.stop()

    def say_stopping(self) -> None:
        """Tell every client that its connection is about to be closed: a last `status`, with `stopping`."""
        self._broadcast(self._status(stopping=True))
