"""The NATS backend's durable mode: this instance's pull consumer on a topic's stream, read in order.

The consumer is asked for PULL_BATCH messages at a time and fed to the handler one at a time; each is acknowledged
once the handler returned. A handler that raises stops the reading there, and after a back-off the consumer is
resumed from that message (`ensure_consumer`), so order holds through failures, reconnects and restarts of the
server. A delivery that never arrived (lost on the way, as through a cluster node that died while nats-py's
reconnect carried our inbox to another) stops the reading the same way: the deliveries after it are not handled.
The subscription holds no reference to the backend: it asks `current_client()` for the connection (None while
there is none; the backend calls `restore_soon()` once it is back) and tells `forget(self)` when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from functools import partial

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSub

from backends.base import BackendConfig, BackendError, Handler, Message, Subscription
from backends.nats_common import CONNECTION_ERRORS, settle
from backends.nats_jetstream import API_TIMEOUT, ensure_consumer, ensure_stream, jetstream_name, translate
from sidecar.backoff import Backoff
from sidecar.logging import RateLimitedLogger

log = logging.getLogger(__name__)

#: Messages asked for in one pull request; another goes out when half of them have arrived, so the server always
#: has one waiting. At most 1.5 x this many messages are on their way to us or queued here (memory bound).
PULL_BATCH = 64
#: A pull request lives this long; the server says so (408) when it expires unfilled, and we ask again. An instance
#: that is connected always has one waiting, so its consumer never looks inactive to the server. Short, because a
#: request left with a consumer leader that lost its place is heartbeated but never filled until it expires.
PULL_EXPIRES = 3.0
#: While a pull request waits, the server sends a heartbeat this often: silence means the request is gone.
IDLE_HEARTBEAT = 1.0
SILENCE = 3 * IDLE_HEARTBEAT
#: How long a resume waits for each JetStream API answer. A request made while a stream or its consumer has no
#: leader (a node died; the others elect one in seconds) is dropped, not answered later: a short wait retries soon
#: after the election instead of up to API_TIMEOUT after it.
RESUME_TIMEOUT = 2.0
#: Back-off after a handler failed, before the message is delivered again.
RETRY_MIN, RETRY_MAX = 0.25, 5.0
#: Seconds between two lines about the same failing subscriber, or the same consumer that cannot be resumed yet.
WARN_EVERY = 30.0
ACK = b"+ACK"


def _fields(reply: str) -> tuple[int, str, str]:
    """The consumer sequence, the stream sequence and the server's time (ns) of a delivery, from its reply subject:
    $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>, or the longer v2 (with
    domain and account hash first). The server makes the subject itself."""
    tokens = reply.split(".")
    first = 5 if len(tokens) == 9 else 7
    return int(tokens[first + 1]), tokens[first], tokens[first + 2]


class DurableSubscription(Subscription):
    """This instance's durable pull consumer on a topic's stream, fed to the handler one message at a time."""

    def __init__(
        self,
        topic: str,
        handler: Handler,
        config: BackendConfig,
        where: str,
        *,
        current_client: Callable[[], Client | None],
        forget: Callable[[DurableSubscription], None],
    ) -> None:
        self.topic, self._handler, self._config, self._where = topic, handler, config, where
        self._current_client, self._forget = current_client, forget
        self._stream = jetstream_name(topic)
        self.consumer = jetstream_name(config.instance_id)
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{self.consumer}"
        self._request = json.dumps(
            {"batch": PULL_BATCH, "expires": int(PULL_EXPIRES * 1e9), "idle_heartbeat": int(IDLE_HEARTBEAT * 1e9)}
        ).encode()
        self._client: Client | None = None
        self._sub: NatsSub | None = None
        self._inbox = ""
        # Bumped by each (re)start: messages still queued for an older one are neither handled nor acknowledged.
        self._generation = 0
        self._credit = 0  # messages asked for and not yet delivered
        # The consumer sequence of the last delivery taken: the server numbers its deliveries one by one.
        self._delivery = 0
        self._afresh = False  # a delivery was lost: the next attach makes the consumer again from our position
        self._heard = time.monotonic()
        self._handling = False  # a message is with the handler
        self._position: int | None = None  # the stream sequence after the last one handled
        self._retry = Backoff(RETRY_MIN, RETRY_MAX, jitter=0.2)
        self._warnings = RateLimitedLogger(log, WARN_EVERY)
        # Resume attempts that failed in a row, and since when: said once one succeeds (the warnings are rate-limited).
        self._failed_resumes = 0
        self._failing_since = 0.0
        self._restore_task: asyncio.Task[None] | None = None
        self._attaching: asyncio.Future[None] | None = None
        self._again = False
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False

    async def attach(self, client: Client, timeout: float = API_TIMEOUT) -> None:
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
        config = self._config
        try:
            js = client.jetstream(timeout=timeout)
            stream = await ensure_stream(js, self.topic, config)
            delivered = await ensure_consumer(
                js, stream, self.consumer, config.instance_ttl, self._position, afresh=self._afresh
            )
            self._afresh = False
            inbox = client.new_inbox()
            # No limit on nats-py's queue: the pull requests bound it (a drop would look like a lost message).
            sub = await client.subscribe(
                inbox, cb=partial(self._receive, generation), pending_msgs_limit=0, pending_bytes_limit=0
            )
            if generation != self._generation or self._closed:
                await sub.unsubscribe()
                return
            self._client, self._sub, self._inbox, self._credit = client, sub, inbox, 0
            self._delivery = delivered
            self._heard = time.monotonic()
            await self._pull()
        except CONNECTION_ERRORS as exc:
            raise translate(exc, self._where, f"consumer {self.consumer}") from exc
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
            if self._status(msg.headers or {}):
                await self._pull_if_low()
            return
        delivery, position, stored = _fields(reply)
        if delivery != self._delivery + 1:
            self._missed(delivery)
            return
        self._delivery = delivery
        self._credit -= 1
        await self._pull_if_low()  # before handling, so the server never waits for us
        self._handling = True
        try:
            await self._handler(Message(msg.data, position=position, accepted_at=int(stored) / 1e9))
        except Exception as exc:
            self._failed(position, exc)
            return
        finally:
            # A handler may wait as long as it likes (durable mode's relay, while no app is connected): what the
            # server said meanwhile waits behind it, unread, and is no silence.
            self._handling = False
            self._heard = time.monotonic()
        self._retry.reset()
        self._position = int(position) + 1
        with contextlib.suppress(*CONNECTION_ERRORS):  # a lost ack: the message comes again, the relay drops it
            await self._client.publish(reply, ACK)  # type: ignore[union-attr]

    def _status(self, headers: dict[str, str]) -> bool:
        """Count what a status says of our pull requests; False if the consumer is being resumed."""
        status = headers.get("Status")
        if status == "409" and any(w in str(headers.get("Description", "")) for w in ("Deleted", "Leadership")):
            log.warning("nats: consumer %s: %s; resuming it", self.consumer, headers.get("Description"))
            self.restore_soon()
            return False
        if status in ("408", "409"):
            self._credit -= int(headers.get("Nats-Pending-Messages") or self._credit)
        return True

    async def _pull_if_low(self) -> None:
        with contextlib.suppress(*CONNECTION_ERRORS):  # a lost connection: the restore after it asks again
            if self._credit <= PULL_BATCH // 2:
                await self._pull()

    def _missed(self, delivery: int) -> None:
        """Deliveries before `delivery` never reached us: handle none after them, and make the consumer again from
        our position. Left as they are, the server would send the missing ones only after ACK_WAIT, behind newer
        ones, and a resume would start after what we handled: past them."""
        self._generation += 1
        self._afresh = True
        log.warning(
            "nats: consumer %s: delivery %d came after %d, the ones between were lost on the way; "
            "resuming it at stream sequence %s",
            self.consumer,
            delivery,
            self._delivery,
            self._position,
        )
        self.restore_soon()

    def _failed(self, position: str, exc: Exception) -> None:
        """Not acknowledged: stop here, and after a back-off resume the consumer from this message, in order."""
        self._generation += 1
        delay = self._retry.next()
        self._warnings.error(
            "failed",
            "nats: subscriber failed on stream %s sequence %s (%d in a row); it comes again in %.2fs: %s",
            self._stream,
            position,
            self._retry.attempts,
            delay,
            exc,
        )
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
            client = self._current_client()
            if client is None:
                return  # the reconnect will call us again
            # In a task of its own, which unsubscribe() lets finish: it may be between deleting the consumer and
            # creating it again, and a consumer left deleted would restart at "now".
            self._attaching = attaching = asyncio.ensure_future(self.attach(client, RESUME_TIMEOUT))
            try:
                await asyncio.shield(attaching)
            except BackendError as exc:
                # The watchdog tries again shortly; JetStream may still be recovering its store after a restart.
                self._resume_failed()
                self._warnings.warning(
                    "resume",
                    "nats: cannot resume consumer %s yet (attempt %d): %s",
                    self.consumer,
                    self._failed_resumes,
                    exc,
                )
            except Exception as exc:  # a bug: said, and tried again by the watchdog (the task would die unheard)
                self._resume_failed()
                self._warnings.error("resume-bug", "nats: resuming consumer %s failed: %r", self.consumer, exc)
                log.debug("nats: resume failure", exc_info=True)
            else:
                if self._failed_resumes:
                    log.info(
                        "nats: consumer %s resumed after %d failed attempts in %.1fs",
                        self.consumer,
                        self._failed_resumes,
                        time.monotonic() - self._failing_since,
                    )
                self._failed_resumes = 0

    def _resume_failed(self) -> None:
        if not self._failed_resumes:
            self._failing_since = time.monotonic()
        self._failed_resumes += 1

    async def _watch(self) -> None:
        """Notice a consumer that went quiet: heartbeats stop when our pull requests are gone."""
        while not self._closed:
            await asyncio.sleep(IDLE_HEARTBEAT / 2)
            restoring = self._restore_task is not None and not self._restore_task.done()
            if restoring or self._handling or self._current_client() is None:
                continue
            if self._sub is None or time.monotonic() - self._heard > SILENCE:
                log.debug(
                    "nats: no word from consumer %s for %.1fs; resuming it",
                    self.consumer,
                    time.monotonic() - self._heard,
                )
                self.restore_soon()

    async def unsubscribe(self) -> None:
        """Stop consuming; the consumer stays on the server, for this instance to come back to."""
        if self._closed:
            return
        self._closed = True
        self._generation += 1
        self._forget(self)
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
