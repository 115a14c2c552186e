"""What a TLS failure says about the settings: a refusal that no retry can change, or a connection that was cut.

A refusal stops a daemon's start (exit 3, `BackendRefused`); anything else is an outage the daemon rides out.
"""

from __future__ import annotations

import asyncio
import ssl

#: How long a TLS server's verdict on our certificate may take once the handshake is done (a round trip).
TLS_VERDICT_WAIT = 1.0

#: OpenSSL's reason when the first bytes back are not TLS at all: a plain listener behind a TLS URI (amqps:// to
#: 5672). Only the URI can change it. (NATS tells it by its INFO line: backends/nats_connection.py.)
NOT_TLS = "WRONG_VERSION_NUMBER"


def tls_refused(exc: BaseException) -> bool:
    """True if `exc`, or an error it was raised from, is a TLS handshake that failed for good: on a certificate,
    ours refused by the server (an alert) or the server's by us (verification), or on a server that does not speak
    TLS. A TLS connection cut half-way is not one."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ssl.SSLCertVerificationError):
            return True
        if isinstance(error, ssl.SSLError):
            reason = (error.reason or "").upper()
            if "ALERT" in reason or reason == NOT_TLS:
                return True
        error = error.__cause__ or error.__context__
    return False


async def tls_refusal(host: str, port: int, context: ssl.SSLContext, timeout: float) -> BaseException | None:
    """The alert with which a TLS node refuses our certificate, if it does. A TLS 1.3 server judges it once our
    side of the handshake is done, so its alert can close the connection before redis-py's first write, which then
    says only "connection closed by the server before write" (4 probes in 10 here; every probe of a start in 1 of
    40, and that start was retried for ever). Nothing is written here: the read waits for the alert. (Asked of
    Redis Cluster nodes, single rediss:// servers and sentinels; redis-py is where the closed connection is told.)"""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
    except (OSError, TimeoutError) as exc:
        return exc if tls_refused(exc) else None
    try:
        async with asyncio.timeout(TLS_VERDICT_WAIT):
            await reader.read(1)  # a node that accepted us says nothing until asked
    except (OSError, TimeoutError) as exc:
        return exc if tls_refused(exc) else None
    finally:
        writer.close()
    return None
