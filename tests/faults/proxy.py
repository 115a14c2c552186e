"""A TCP proxy the fault tests control: put it between a daemon and its broker, then cut or slow the link.

    proxy = await TcpProxy.start(broker_port)      # listens on 127.0.0.1:<proxy.port>
    proxy.cut()                                     # drop every connection, refuse new ones
    proxy.restore()                                 # accept and forward again
    proxy.latency = 0.1                             # every chunk waits 100 ms, each way (pipelined)
    proxy.reply_latency = 60                        # and what the broker sends 60 s more: its confirms held back
    proxy.links_saying(b"SUBSCRIBE")[0].inject(b"UNSUBSCRIBE\r\n")  # the broker hears it, the daemon does not
    await proxy.close()

Latency delays each chunk by the same amount without serialising them, as a
long link would: throughput stays, every byte arrives `latency` seconds late.
A cut aborts both sides of every connection (the broker and the daemon see a
reset at once, as when a route goes away and a middlebox resets the flows)
and closes each new connection as soon as it is accepted, so reconnect
attempts fail until `restore()`. An injection writes bytes to the broker as if
the daemon had sent them: the broker drops a subscription, its client is never
told (the watchdog tests' silent break).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)

CHUNK = 65536
#: What a link keeps of what its client said first, for links_saying().
SAID_BYTES = 65536
#: Chunks in flight per direction while slowed; a full queue stops reading, so memory stays bounded.
MAX_QUEUED_CHUNKS = 1024


class _Link:
    """One proxied connection: two directions, each a reader task feeding a delayed writer task."""

    def __init__(
        self,
        proxy: TcpProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        # (client's, broker's); reset_clients() takes the broker's out, to hold it open past abort().
        self.writers: tuple[asyncio.StreamWriter, ...] = (client[1], upstream[1])
        self.said = bytearray()  # the first SAID_BYTES the client sent
        self.tasks = [
            asyncio.create_task(self._pipe(proxy, client[0], upstream[1], False), name="proxy-up"),
            asyncio.create_task(self._pipe(proxy, upstream[0], client[1], True), name="proxy-down"),
        ]

    async def _pipe(
        self, proxy: TcpProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(MAX_QUEUED_CHUNKS)

        async def deliver() -> None:
            try:
                while True:
                    due, data = await queue.get()
                    if not data:
                        if writer.can_write_eof():
                            writer.write_eof()
                        return
                    delay = due - loop.time()
                    if delay > 0:
                        # Holding the chunk is the point: this is the link's latency, not a wait for a condition.
                        await asyncio.sleep(delay)
                    writer.write(data)
                    await writer.drain()
            except OSError:
                self.abort()

        delivering = asyncio.create_task(deliver(), name="proxy-deliver")
        try:
            while True:
                data = await reader.read(CHUNK)
                if not reply and len(self.said) < SAID_BYTES:
                    self.said += data[: SAID_BYTES - len(self.said)]
                await queue.put((loop.time() + proxy.latency + (proxy.reply_latency if reply else 0.0), data))
                if not data:
                    break
            await delivering
        except OSError:
            self.abort()
        finally:
            if not delivering.done():
                delivering.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await delivering

    def inject(self, data: bytes) -> None:
        """Send `data` to the broker on this connection, as if its client had (between two of its chunks)."""
        self.writers[1].write(data)

    def abort(self) -> None:
        """Reset both sides and stop both directions."""
        current = asyncio.current_task()
        for writer in self.writers:
            writer.transport.abort()
        for task in self.tasks:
            if task is not current:
                task.cancel()


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.latency = 0.0
        self.reply_latency = 0.0
        self.refusing = False
        self.accepted = 0  # connections forwarded, for the tests' assertions
        self.refused = 0
        self._links: set[_Link] = set()
        self._held: list[asyncio.StreamWriter] = []  # the broker's sides reset_clients() left open
        self._handlers: set[asyncio.Task[None]] = set()  # the server's per-connection tasks, awaited on close
        self._server: asyncio.Server | None = None
        self.port = 0

    @classmethod
    async def start(cls, upstream_port: int, upstream_host: str = "127.0.0.1", port: int = 0) -> TcpProxy:
        """Listen on `port` (a free one by default), forwarding to the upstream."""
        proxy = cls(upstream_port, upstream_host)
        proxy._server = await asyncio.start_server(proxy._accept, "127.0.0.1", port)
        proxy.port = proxy._server.sockets[0].getsockname()[1]
        return proxy

    @property
    def connections(self) -> int:
        return len(self._links)

    def links_saying(self, marker: bytes) -> list[_Link]:
        """The connections whose client has sent `marker` (among its first SAID_BYTES)."""
        return [link for link in self._links if marker in link.said]

    def cut(self) -> None:
        """Reset every proxied connection and refuse new ones until restore()."""
        self.refusing = True
        for link in list(self._links):
            link.abort()
        log.info("proxy :%d cut (%d connections reset)", self.port, len(self._links))

    def reset_clients(self) -> None:
        """Reset the client's side of every connection and leave the broker's open and unread, as a partition or a
        middlebox's reset leaves it: the broker holds the old connection until its heartbeat gives up on it."""
        for link in list(self._links):
            self._held.append(link.writers[1])
            link.writers = link.writers[:1]
            link.abort()
        log.info("proxy :%d reset its clients' side (%d connections held open)", self.port, len(self._held))

    def restore(self) -> None:
        self.refusing = False
        log.info("proxy :%d restored", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        if self.refusing:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            upstream = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()  # the broker itself is down: the daemon sees what it would see directly
            return
        self.accepted += 1
        link = _Link(self, (reader, writer), upstream)
        self._links.add(link)
        try:
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            self._links.discard(link)
            for side in link.writers:
                side.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for held in self._held:
            held.transport.abort()
        for link in list(self._links):
            link.abort()
            for task in link.tasks:
                task.cancel()
        # Let each connection's handler see its link end, rather than leave it to be cancelled with the loop.
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=2.0)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
