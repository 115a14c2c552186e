"""The fleet: every daemon announces itself on the bus, keeps a table of the others, and watches its subscription.

Every `--announce-interval` seconds (5 by default) a daemon publishes one small message on the topic
`<key>.peers`, next to the events' `--key`, so feathers-sync apps, which listen on the key alone, never see it:

    {"v":1,"instance":"web-1","version":"0.4.0","codec":"syncar","mode":"broadcast","seq":1200,"run":"3fa2...",
     "started":1765000000.0,"interval":5.0}

`seq` is how many of its events the broker has accepted in this run (the last bus sequence number, see
sidecar/gaps.py). With `--signing-key-file` an announcement is signed and verified as event batches are: a forged
or replayed one is dropped and counted (`syncar_announcements_rejected_total`). A daemon that stops says so in a
last one (`leaving`), and is taken out of the others' tables at once.

The peer table (sidecar/peer_table.py) holds who was heard, when, and the sequence lag, and in broadcast mode tells
as gaps the last events of a run that never arrived, where an announcement cannot overtake the events before it
(`Feature.IN_ORDER`). Where it can (RabbitMQ: `<key>.peers` is a queue of its own, and a receiver whose events queue
is behind hears the announcement first), a daemon of the syncar codec in broadcast mode that has put events on the
bus also puts its seq on the key with each announcement: a mark, an empty batch of its run numbered from the next
seq, `{"v":1,"origin":"web-1","run":"3fa2...","seq":1201,"events":[]}`. It reaches each receiver through the
events' own exchange and queue, behind every event the broker confirmed before it, and the receiver's relay takes it
as any batch (sidecar/gaps.py): what it reveals missing is lost, told at once. Daemons older than the mark but
with per-origin sequence numbers take it so too (0.1.0, which tracks no gaps, silently). A peer whose version,
codec or mode differs from ours is warned of once, with what to do.

The watchdog: a broker can forget a subscription without closing the connection (a node that left its cluster,
a proxy that reconnected behind our back, an exchange deleted and declared again). A daemon that has heard nothing
on `<key>.peers` for `MISSED` intervals, not even its own announcements, takes its subscriptions as lost and makes
them again (`syncar_bus_resubscribes_total`). Where the broker does not bring our own messages back (NATS and
RabbitMQ in broadcast mode), silence means something only while there were peers to hear. In durable mode the
announcements have a broadcast connection of their own, and only their subscription is watched and made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import msgspec

from backends import load_backend
from backends.base import (
    Backend,
    BackendError,
    BackendState,
    BackendUnavailable,
    Feature,
    Message,
    Mode,
    Subscription,
)
from sidecar import MAX_ID_LENGTH, __version__
from sidecar.codec import SYNCAR_VERSION, BusName, decode_json, encode
from sidecar.config import Settings
from sidecar.errors import CodecError
from sidecar.gaps import Gap, GapTracker
from sidecar.logging import RateLimitedLogger, printable
from sidecar.metrics import Metrics
from sidecar.peer_table import MAX_PEERS, MISSED, PeerTable
from sidecar.signing import Signer

log = logging.getLogger(__name__)
rejections = RateLimitedLogger(log, interval=10.0)

ANNOUNCE_VERSION = 1
TOPIC_SUFFIX = ".peers"


def peers_topic(key: str) -> str:
    """Where the announcements of the daemons on `key` go: a channel, exchange or subject of its own."""
    return f"{key}{TOPIC_SUFFIX}"


class Announcement(msgspec.Struct, frozen=True, omit_defaults=True):
    # Its strings are kept in the peer table and served as /metrics labels: a longer one is malformed.
    v: int
    instance: BusName
    version: BusName
    codec: BusName
    mode: BusName
    seq: int
    started: float  # when its daemon started, by its clock
    interval: float  # how often it announces
    run: BusName | None = None  # its run, as in its event batches (syncar codec); None with feathers-sync
    leaving: bool = False  # its last announcement: it is stopping


_decoder = msgspec.json.Decoder(Announcement)


def announcement_of(settings: Settings, run: str | None) -> Announcement:
    """What a daemon with `settings` announces (its `seq` filled in at each announcement); `run` is its codec's."""
    return Announcement(
        ANNOUNCE_VERSION,
        settings.instance_id,
        __version__,
        settings.codec,
        settings.mode,
        0,
        round(time.time(), 3),
        settings.announce_interval,
        run,
    )


def announcing_bus(settings: Settings, backend: Backend) -> Backend:
    """The backend the announcements go by: the events' in broadcast mode, else one of its own in broadcast mode
    (kept for absent instances, announcements would only pile up)."""
    if settings.mode is Mode.BROADCAST:
        return backend
    config = dataclasses.replace(settings.backend_config(), mode=Mode.BROADCAST)
    return load_backend(settings.backend, Mode.BROADCAST)(config)


class Fleet:
    """The announcer, the peer table and the watchdog of one daemon; `bus` carries the announcements.

    `seq()` is the daemon's last bus sequence number; `resubscribe()` makes every subscription of the daemon again
    (this one's included, through `resubscribe_own()`); `gaps` is what was heard of the peers' runs, and `on_gap` tells
    what their announcements show was missed, where the peer table can know it (below).
    """

    def __init__(
        self,
        bus: Backend,
        me: Announcement,
        *,
        key: str,
        seq: Callable[[], int],
        gaps: GapTracker,
        on_gap: Callable[[Gap], None],
        resubscribe: Callable[[], Awaitable[None]],
        metrics: Metrics,
        signer: Signer | None = None,
    ) -> None:
        self.bus, self.me, self.key = bus, me, key
        self.topic = peers_topic(key)
        # The last events of a run that a receiver missed are known in broadcast mode only (durable: a lag is a
        # backlog) and of the syncar codec (which numbers events). Where an announcement cannot overtake the events
        # before it, the peer table tells them; where it can (RabbitMQ), the mark on the key does, as a batch's gap.
        trailing = me.mode == Mode.BROADCAST and me.run is not None
        in_order = Feature.IN_ORDER in bus.features
        self._mark = _mark_head(me) if trailing and not in_order else None
        self.table = PeerTable(me.instance, gaps, tell=on_gap if trailing and in_order else None, grace=me.interval)
        self._seq, self._resubscribe, self._metrics, self._signer = seq, resubscribe, metrics, signer
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._heard_at: float | None = None  # time.monotonic() when we last heard anything on the topic
        self._retry = False  # the last try to subscribe again failed
        self._warned: OrderedDict[str, None] = OrderedDict()  # peers warned of, bounded as the table is
        metrics.watch_peers(self._metric_rows)

    async def subscribe(self) -> None:
        """Subscribe to the announcements (BackendError if the broker does not take it), and start announcing."""
        if self._subscription is None:
            self._subscription = await self.bus.subscribe(self.topic, self.on_message)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="syncar-fleet")

    async def resubscribe_own(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.unsubscribe()
        self._subscription = await self.bus.subscribe(self.topic, self.on_message)

    async def stop(self, timeout: float) -> None:
        """Stop announcing; tell the others we leave (within `timeout`), stop listening."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)
            self._task = None
            with contextlib.suppress(BackendError, TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._announce(leaving=True)
        if self._subscription is not None:
            with contextlib.suppress(BackendError):
                await self._subscription.unsubscribe()
            self._subscription = None

    # -- out ------------------------------------------------------------------------------------

    async def _announce(self, *, leaving: bool = False) -> None:
        seq = self._seq()
        if self._mark is not None and seq:
            # `seq` counts the events the broker confirmed, and it confirms one once every queue it was routed to
            # has it: the mark queues behind them on each receiver's events queue.
            await self.bus.publish(self.key, [self._signed(self._mark + b'%d,"events":[]}' % (seq + 1))])
        body = encode(msgspec.structs.replace(self.me, seq=seq, leaving=leaving))
        await self.bus.publish(self.topic, [self._signed(body)])

    def _signed(self, body: bytes) -> bytes:
        return body if self._signer is None else self._signer.sign(body)

    async def _run(self) -> None:
        interval = self.me.interval
        while True:  # until stop() cancels us
            if self.bus.state is not BackendState.CONNECTED:
                self._heard_at = None  # silence while the broker is away says nothing of the subscription
            else:
                try:
                    async with asyncio.timeout(interval):
                        await self._announce()
                except (BackendUnavailable, TimeoutError) as exc:  # the broker is going away: the backend says so
                    log.debug("announcement not sent: %s", exc)
                except Exception as exc:  # refused (an ACL on <key>.peers, say): the peers will miss us
                    rejections.warning("unsent", "announcement not sent to %r: %s", self.topic, exc)
                now = time.monotonic()
                if self._heard_at is None:
                    self._heard_at = now
                elif self._retry or (now - self._heard_at >= MISSED * interval and self._expects_to_hear()):
                    await self._lost(now - self._heard_at)
                    self._heard_at = time.monotonic()
            self.table.sweep(time.monotonic())
            await asyncio.sleep(interval)

    def _expects_to_hear(self) -> bool:
        # Our own announcements come back unless the backend spares us our messages (Feature.NO_ECHO): then only
        # peers not yet swept (nor gone with a `leaving`) were there to be heard.
        return self.bus.broker_echoes or len(self.table) > 0

    async def _lost(self, silence: float) -> None:
        if not self._retry:
            log.warning(
                "heard nothing on %r for %.1fs, not even our own announcements: the broker may have dropped our "
                "subscriptions without telling; subscribing again",
                self.topic,
                silence,
            )
        try:
            await self._resubscribe()
        except Exception as exc:  # a BackendError, or a library failing unforeseen: the watchdog must live on
            if not self._retry:
                log.warning("subscribing again failed, trying every %gs: %s", self.me.interval, exc)
                log.debug("subscribing again failed", exc_info=True)
            self._retry = True
            return
        self._retry = False
        self._metrics.resubscribes.inc()
        log.info("subscribed again after %.1fs of silence on %r", silence, self.topic)

    # -- in -------------------------------------------------------------------------------------

    async def on_message(self, message: Message) -> None:
        """An announcement from the bus: any message proves the subscription alive; a valid one updates the table."""
        now = time.monotonic()
        self._heard_at = now
        try:
            body = message.body if self._signer is None else self._signer.verify(message.body, message.accepted_at)
        except CodecError as exc:
            self._metrics.announcements_rejected.labels(exc.reason).inc()
            rejections.warning(exc.reason, "dropped an announcement: %s", printable(str(exc)))
            return
        announcement = decode_json(_decoder, body)
        if announcement is None or announcement.v != ANNOUNCE_VERSION:
            self._metrics.announcements_rejected.labels("malformed").inc()
            rejections.warning(
                "malformed",
                "dropped an announcement that is not one of version %d (or has a string over %d characters)",
                ANNOUNCE_VERSION,
                MAX_ID_LENGTH,
            )
            return
        if announcement.instance == self.me.instance:
            if (announcement.run, announcement.started) != (self.me.run, self.me.started):
                self._warn_once(
                    announcement.instance,
                    "another daemon on key %r announces this daemon's instance id %s: give each daemon its own "
                    "--instance-id (each takes the other's events for its own echoes and drops them)",
                    self.key,
                    printable(announcement.instance),
                )
            return
        if self.table.heard(announcement, now):
            self._check(announcement)

    def _check(self, peer: Announcement) -> None:
        """Warn once per peer of a difference that loses events, or that should not last."""
        me, name = self.me, printable(peer.instance)
        if peer.codec != me.codec:
            self._warn_once(
                peer.instance,
                "peer %s on key %r uses codec %s, this daemon %s: each drops the other's events; give every "
                "daemon of a key the same --codec (feathers-sync while feathers-sync apps share the key)",
                name,
                self.key,
                printable(peer.codec),
                me.codec,
            )
        elif peer.mode != me.mode:
            self._warn_once(
                peer.instance,
                "peer %s on key %r runs in %s mode, this daemon in %s: the two modes use different exchanges, "
                "streams or subjects and never see each other's events; run every daemon of a key in one --mode",
                name,
                self.key,
                printable(peer.mode),
                me.mode,
            )
        elif peer.version != me.version:
            self._warn_once(
                peer.instance,
                "peer %s on key %r runs syncar %s, this daemon %s: fine during a rolling upgrade, then finish it "
                "(every daemon of a key on one version)",
                name,
                self.key,
                printable(peer.version),
                me.version,
            )

    def _warn_once(self, instance: str, msg: str, *args: object) -> None:
        if instance in self._warned:
            return
        self._warned[instance] = None
        while len(self._warned) > MAX_PEERS:
            self._warned.popitem(last=False)
        log.warning(msg, *args)

    # -- out, to people -------------------------------------------------------------------------

    def describe(self) -> dict[str, object]:
        """The table as `GET /peers` serves it: this daemon first, then its peers, most recently heard first."""
        now = time.monotonic()
        me = msgspec.structs.replace(self.me, seq=self._seq())
        rows = [_row(me, 0.0, 0, self_=True)]
        rows += [_row(p.announcement, age, lag) for p, age, lag in self.table.rows(now)]
        return {"key": self.key, "interval": self.me.interval, "peers": rows}

    def _metric_rows(self) -> list[tuple[str, float, int | None]]:
        now = time.monotonic()
        return [(p.announcement.instance, age, lag) for p, age, lag in self.table.rows(now)]


def _mark_head(me: Announcement) -> bytes:
    """A mark up to its seq: an empty batch of `me`'s run. `seq` before `events`, so that it never starts as the
    run's batches do (`SyncarCodec.echoed` takes those for one of ours without decoding them)."""
    return b'{"v":%d,"origin":%s,"run":%s,"seq":' % (SYNCAR_VERSION, encode(me.instance), encode(me.run))


def _row(a: Announcement, age: float, lag: int | None, *, self_: bool = False) -> dict[str, object]:
    return {
        "instance": a.instance,
        "self": self_,
        "version": a.version,
        "codec": a.codec,
        "mode": a.mode,
        "seq": a.seq,
        "lag": lag,
        "heard_seconds_ago": round(age, 3),
        "started": a.started,
        "run": a.run,
    }
