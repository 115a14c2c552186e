"""HTTP for operators: `/healthz` (the loop answers), `/readyz` (the socket is up), `/readyz/broker`, `/metrics`,
`/peers` (the peer table, JSON: sidecar/fleet.py).

A deliberately small HTTP/1.1 responder for five GET routes, on the daemon's
own event loop: answering at all is the liveness proof.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

import orjson

from sidecar.errors import StartupError
from sidecar.logging import RateLimitedLogger
from sidecar.metrics import Metrics

log = logging.getLogger(__name__)
refusals = RateLimitedLogger(log, interval=10.0)

#: A request must arrive whole within this, headers within this size: probes are tiny. The answer too must be
#: taken within REQUEST_TIMEOUT.
REQUEST_TIMEOUT = 5.0
MAX_REQUEST_BYTES = 8192
#: HTTP connections open at once (probes and scrapers need a few): each is a file descriptor, taken from what the
#: app connections may use (see sidecar.descriptors).
MAX_HTTP_CONNECTIONS = 32
#: The listen backlog: given to asyncio's server, and used when bind() listens before it serves.
BACKLOG = 100

#: None when ready, else the reason it is not; the argument asks for the broker to be connected too.
Readiness = Callable[[bool], str | None]
#: The peer table, as `GET /peers` serves it (sidecar.fleet.Fleet.describe).
PeerTable = Callable[[], dict[str, object]]


class HttpServer:
    def __init__(self, host: str, port: int, readiness: Readiness, metrics: Metrics, peers: PeerTable) -> None:
        self.host = host
        self.port = port
        self._readiness = readiness
        self._metrics = metrics
        self._peers = peers
        self._server: asyncio.Server | None = None
        self._open: dict[asyncio.StreamWriter, bool] = {}  # in the order they came; True once answering

    async def bind(self) -> None:
        """Listen on host:port, answering nobody yet (`serve()`): a probe that connects waits in the backlog.

        Raises:
            StartupError: the address cannot be bound (in use, not ours, not an address here).
        """
        try:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.port, limit=MAX_REQUEST_BYTES, backlog=BACKLOG, start_serving=False
            )
            # Bound, but asyncio and uvloop alike call listen() only in start_serving(): until then a probe would be
            # refused, and another process (SO_REUSEADDR) could bind the port and listen first. Listen now.
            for bound in self._server.sockets:
                claimed = socket.socket(fileno=bound.fileno())
                try:
                    claimed.listen(BACKLOG)
                finally:
                    claimed.detach()  # the server's socket still: only listened on
        except OSError as exc:
            raise StartupError(f"http: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
        self.port = self._server.sockets[0].getsockname()[1]

    async def serve(self) -> None:
        """Answer requests, those waiting in the backlog first; after `bind()`."""
        assert self._server is not None, "serve() before bind()"
        await self._server.start_serving()
        log.info("http on %s:%d (/healthz /readyz /readyz/broker /metrics /peers)", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()

    def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        path = path.split("?", 1)[0]
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path in ("/readyz", "/readyz/broker"):
            reason = self._readiness(path == "/readyz/broker")
            return (200, "text/plain", b"ready\n") if reason is None else (503, "text/plain", reason.encode() + b"\n")
        if path == "/metrics":
            # prometheus-client is imported at the first scrape (sidecar/metrics.py says why).
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # noqa: PLC0415

            return 200, CONTENT_TYPE_LATEST, generate_latest(self._metrics.registry)
        if path == "/peers":
            return 200, "application/json", orjson.dumps(self._peers(), option=orjson.OPT_APPEND_NEWLINE)
        return 404, "text/plain", b"not found; try /healthz, /readyz, /readyz/broker, /metrics or /peers\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= MAX_HTTP_CONNECTIONS and not self._drop_oldest_idle():
            refusals.warning("full", "http: %d connections open, all answering: refused one", len(self._open))
            writer.transport.abort()
            return
        self._open[writer] = False
        try:
            await self._answer(reader, writer)
        finally:
            self._open.pop(writer, None)
            writer.close()

    def _drop_oldest_idle(self) -> bool:
        """Make room by cutting the oldest connection that has not sent its request: idle ones cannot lock probes
        out, and HTTP never holds more than MAX_HTTP_CONNECTIONS descriptors."""
        for writer, answering in self._open.items():
            if not answering:
                del self._open[writer]
                writer.transport.abort()
                refusals.warning(
                    "idle",
                    "http: %d connections open, the most allowed: dropped the oldest idle one",
                    MAX_HTTP_CONNECTIONS,
                )
                return True
        return False

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            status, content_type, body = self._route(method, path)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            status, content_type, body, method = 400, "text/plain", b"bad request\n", "GET"
        except ConnectionError as exc:  # the peer reset or left: nobody to answer, nothing worth a traceback
            log.debug("http: connection lost before the request was read: %s", exc)
            return
        if writer not in self._open:  # dropped to make room
            return
        self._open[writer] = True
        reason = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            503: "Service Unavailable",
        }[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        if method != "HEAD":
            writer.write(body)
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(REQUEST_TIMEOUT):  # a reader that never reads does not keep its descriptor
                await writer.drain()
