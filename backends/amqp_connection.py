"""The RabbitMQ backend's connection: the URI's hosts, and aio-pika's robust connection moved through them, backing
off between attempts.

aio-pika connects to one URL (its issue #141 asks for a host list); `Hosts` says which host is next and
`BackingOffRobustConnection` points aio-pika's reconnect loop at it, so a daemon follows a cluster through the
loss of the node it was on.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import aio_pika
from yarl import URL

from backends.amqp_common import DEFAULT_PORTS, DEFAULT_RECONNECT_INTERVAL
from backends.base import host_port
from sidecar.backoff import Backoff


def node_of(url: URL) -> str:
    """A URL's host:port."""
    return host_port(url.host or "", url.port or DEFAULT_PORTS.get(url.scheme, 5672))


class Hosts:
    """The URI's hosts, tried in turn; aio-pika connects to one URL (its issue #141), so the backend moves it.

    A daemon starts at a random host, so a fleet given the same list spreads over the nodes. A failed attempt moves
    to the next host in the list (`next()`); a connection lost after it was up moves to a random other host
    (`leave()`): the node it was on is likely gone, and the daemons that were on it spread over the rest rather
    than all going to the node after it. One host is always that host.
    """

    __slots__ = ("_index", "_random", "urls")

    def __init__(self, urls: tuple[URL, ...], rng: random.Random | None = None) -> None:
        self.urls = urls
        self._random = rng or random.Random()
        self._index = self._random.randrange(len(urls))

    @property
    def current(self) -> URL:
        return self.urls[self._index]

    def next(self) -> URL:
        """The attempt on the current host failed: the host after it."""
        self._index = (self._index + 1) % len(self.urls)
        return self.current

    def leave(self) -> URL:
        """The connection to the current host was lost: any other host, at random."""
        if len(self.urls) > 1:
            self._index = (self._index + self._random.randrange(1, len(self.urls))) % len(self.urls)
        return self.current


class BackingOffRobustConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, waiting between attempts as `backoff` says, telling `on_failure` of each, and
    moving through the URI's `hosts` (aio-pika connects to its `url`, read at each attempt).

    aio-pika's reconnect loop reads `reconnect_interval` inside the `except` block of every failed attempt (for its
    log line, which our logging config silences), maybe again in a close callback the failure runs, and for its
    sleep. The first read that sees an exception after the last wait draws the next delay, reports the failure and
    moves to the next host; the others return that delay. `reconnect_interval` from the URI is the first wait
    (capped by `--reconnect-max-delay`). A connection lost after it was up moves to another host at once, so the
    first attempt, which aio-pika makes without waiting, goes to a node that is not the one just lost.
    """

    base_interval: float = DEFAULT_RECONNECT_INTERVAL
    backoff = Backoff()
    on_failure: Callable[[BaseException, float], None] | None = None
    hosts: Hosts | None = None
    _delay = DEFAULT_RECONNECT_INTERVAL
    _drawn_at = -math.inf

    @property
    def reconnect_interval(self) -> float:
        failure, now = sys.exc_info()[1], time.monotonic()
        # Half the last delay: the reads of one attempt come within milliseconds, the next attempt after the sleep.
        if failure is not None and now - self._drawn_at >= self._delay / 2:
            self._delay, self._drawn_at = self.backoff.next(), now
            if self.on_failure is not None:
                self.on_failure(failure, self._delay)
            if self.hosts is not None:
                self.url = self.hosts.next()
        return self._delay

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:  # aio-pika's constructor, from the URI
        self.base_interval = float(value)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        was_up = self.connected.is_set()  # not an attempt that failed
        await super()._on_connection_close(closing)  # the close callbacks, which name the node lost
        if was_up and self.hosts is not None:
            self.url = self.hosts.leave()
