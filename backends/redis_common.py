"""Shared by the Redis backend's modules: the redis://, rediss://, redis[s]+sentinel:// and redis[s]+cluster:// URIs
and their options,
what a failure means (refused, unavailable, unconfirmed), and small asyncio helpers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import NoBackoff

from backends.base import (
    BackendConfigError,
    BackendError,
    BackendRefused,
    BackendUnavailable,
    PublishTimeout,
    PublishUnconfirmed,
    Subscription,
    describe_error,
    host_port,
    parse_hosts,
)
from backends.redis_cluster import ClusterConnection, ClusterMap, ClusterSSLConnection
from backends.tls import tls_refusal, tls_refused

log = logging.getLogger(__name__)

#: Redis takes 512 MB, but drops a subscriber whose unsent output passes 32 MB (`client-output-buffer-limit
#: pubsub 32mb 8mb 60`): one bigger message would cut off every daemon. Raise both together, or neither.
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
#: A publish not answered within this long fails; a healthy Redis answers in microseconds.
DEFAULT_SOCKET_TIMEOUT = 5.0
#: Half this long without a reply on the subscribed connection sends a PING; no answer within it is a loss.
DEFAULT_HEALTH_CHECK_INTERVAL = 1.0
# A lost connection, from redis-py or the socket. RuntimeError: under uvloop, a peer that resets the connection
# during redis-py's handshake surfaces as "unable to perform operation on <TCPTransport closed=True>".
CONNECTION_ERRORS = (redis_errors.RedisError, OSError, TimeoutError, RuntimeError)
#: close() cancels its tasks this many times, waiting this long each time (see stop_task()).
STOP_ATTEMPTS, STOP_WAIT = 3, 1.0
#: URI query options; anything else is refused, so that a typo is not silently ignored.
URI_OPTIONS = frozenset(
    {"db", "client_name", "socket_connect_timeout", "socket_timeout", "health_check_interval", "max_message_bytes"}
)
#: Only with rediss://; redis-py's SSLConnection takes them under the same names.
TLS_OPTIONS = frozenset(
    {"ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname"}
)
#: Only with redis[s]+sentinel://: the sentinels' password, and how many replicas must have a durable entry
#: (WAIT) before it counts as sent.
SENTINEL_OPTIONS = frozenset({"sentinel_password", "wait_replicas"})
#: Only with redis[s]+cluster://: as for Sentinel, how many replicas must have a durable entry.
CLUSTER_OPTIONS = frozenset({"wait_replicas"})
DEFAULT_SENTINEL_PORT, DEFAULT_PORT = 26379, 6379


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """A redis:// or rediss:// URI, validated."""

    where: str  # host:port for messages; never the credentials
    connection_class: type[Connection]
    connection_kwargs: dict[str, Any]
    connect_timeout: float
    health_check_interval: float
    max_message_bytes: int
    secrets: tuple[str, ...]  # to scrub from every message we make: the password
    sentinel: Sentinel | None = None  # redis[s]+sentinel://: who to ask for the master, on every connect
    master_name: str = ""
    wait_replicas: int = 0  # durable mode: WAIT for this many replicas after XADD
    cluster: ClusterMap | None = None  # redis[s]+cluster://: where each connection goes, asked on every connect

    def pool(self, kwargs: dict[str, Any]) -> ConnectionPool:
        """A pool of connections made with `kwargs`; through Sentinel, each asks for the master when it connects."""
        if self.sentinel is None:
            return ConnectionPool(connection_class=self.connection_class, **kwargs)
        return SentinelConnectionPool(  # type: ignore[no-untyped-call]  # unannotated in redis-py
            self.master_name, self.sentinel, connection_class=self.connection_class, **kwargs
        )

    def connection(self, pool: ConnectionPool, kwargs: dict[str, Any] | None = None) -> Connection:
        """One connection outside `pool` (used by hand), to the same Redis (through Sentinel: the same master), made
        with `kwargs` (default: the URI's)."""
        kwargs = self.connection_kwargs if kwargs is None else kwargs
        if self.sentinel is None:
            return self.connection_class(**kwargs)
        return self.connection_class(connection_pool=pool, **kwargs)


def parse_uri(uri: str, connect_timeout: float) -> RedisOptions:
    """Read `redis[s]://[[user]:password@]host[:port][/db][?option=value&...]`,
    `redis[s]+sentinel://[[user]:password@]host[:port],host[:port].../master[?db=N&option=value...]` or
    `redis[s]+cluster://[[user]:password@]host[:port],host[:port]...[?option=value...]`; BackendError if it is bad."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    tls, sentinel, cluster = scheme.startswith("rediss"), scheme.endswith("+sentinel"), scheme.endswith("+cluster")
    query = parse_qsl(parts.query, keep_blank_values=True)
    allowed = (
        URI_OPTIONS
        | (TLS_OPTIONS if tls else frozenset())
        | (SENTINEL_OPTIONS if sentinel else CLUSTER_OPTIONS if cluster else frozenset())
    ) - ({"db"} if cluster else frozenset())
    for name, _ in query:
        if name not in allowed:
            hint = (
                " (TLS options need rediss://)"
                if name in TLS_OPTIONS
                else " (a cluster has only database 0)"
                if cluster and name == "db"
                else " (Sentinel options need redis+sentinel://)"
                if name in SENTINEL_OPTIONS
                else ""
            )
            raise BackendConfigError(f"redis: unknown URI option {name!r}{hint}; known: {', '.join(sorted(allowed))}")
    if sentinel:
        return _parse_sentinel_uri(parts, query, tls, connect_timeout)
    if cluster:
        return _parse_cluster_uri(parts, query, tls, connect_timeout)
    db = parts.path.strip("/")
    if db and not re.fullmatch(r"[0-9]+", db):  # redis-py would use database 0 and say nothing
        raise BackendConfigError(f"redis: invalid URI: the path is a database number, as in redis://host/0, not {db!r}")
    ours = {name: value for name, value in query if name in ("health_check_interval", "max_message_bytes")}
    passed = urlencode([(name, value) for name, value in query if name not in ours])  # the rest is redis-py's
    try:
        kwargs: dict[str, Any] = dict(parse_url(urlunsplit(parts._replace(query=passed))))
        interval = float(ours.get("health_check_interval", DEFAULT_HEALTH_CHECK_INTERVAL))
        max_bytes = int(ours.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES))
        kwargs.setdefault("socket_connect_timeout", connect_timeout)
        kwargs.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        if min(interval, kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) <= 0 or max_bytes < 1024:
            raise ValueError("timeouts and health_check_interval must be above 0, max_message_bytes at least 1024")
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):  # say which file, as ssl would not
            if name in kwargs and not os.access(kwargs[name], os.R_OK):
                raise ValueError(f"{name}: cannot read {kwargs[name]}")
    except ValueError as exc:
        raise BackendConfigError(f"redis: invalid URI: {describe_error(exc)}") from None
    if kwargs.get("ssl_cert_reqs") == "none":
        kwargs.setdefault("ssl_check_hostname", False)  # ssl refuses to check the name of a peer it does not verify
    host, port = kwargs.setdefault("host", "localhost"), kwargs.setdefault("port", 6379)
    # RESP2 for plain pub/sub replies; no retries inside redis-py: the outbox and our reconnect retry.
    kwargs.update(socket_keepalive=True, protocol=2, retry=Retry(NoBackoff(), 0))
    return RedisOptions(
        where=host_port(host, port),
        connection_class=kwargs.pop("connection_class", Connection),
        connection_kwargs=kwargs,
        connect_timeout=kwargs["socket_connect_timeout"],
        health_check_interval=interval,
        max_message_bytes=max_bytes,
        secrets=(kwargs["password"],) if kwargs.get("password") else (),
    )


def _parse_sentinel_uri(
    parts: SplitResult, query: list[tuple[str, str]], tls: bool, connect_timeout: float
) -> RedisOptions:
    """The master's settings read as for redis[s]://, plus the sentinels to ask for its address."""
    master_name = unquote(parts.path.strip("/"))
    options = dict(query)
    sentinel_password = options.pop("sentinel_password", None)
    if not master_name or "/" in master_name:
        raise BackendConfigError(
            "redis: invalid URI: the path must be the master's name, as in redis+sentinel://host:26379/mymaster"
        )
    sentinels, wait_replicas, master = _parse_hosts(parts, options, tls, DEFAULT_SENTINEL_PORT, connect_timeout)
    kwargs = {name: master.connection_kwargs[name] for name in ("socket_connect_timeout", "socket_timeout")}
    kwargs.update({name: value for name, value in master.connection_kwargs.items() if name.startswith("ssl")})
    if tls:
        kwargs["ssl"] = True
    if sentinel_password:
        kwargs["password"] = sentinel_password
    names = ",".join(host_port(host, port) for host, port in sentinels)
    return replace(
        master,
        where=f"master {master_name!r} via sentinels {names}",
        connection_class=SentinelManagedSSLConnection if tls else SentinelManagedConnection,
        sentinel=Sentinel(sentinels, sentinel_kwargs=kwargs),
        master_name=master_name,
        wait_replicas=wait_replicas,
        secrets=master.secrets + ((sentinel_password,) if sentinel_password else ()),
    )


def _parse_cluster_uri(
    parts: SplitResult, query: list[tuple[str, str]], tls: bool, connect_timeout: float
) -> RedisOptions:
    """Every node's settings read as for redis[s]://, plus the nodes to ask where a connection goes."""
    if parts.path.strip("/"):
        raise BackendConfigError("redis: invalid URI: a cluster URI has no path (a cluster has only database 0)")
    seeds, wait_replicas, node = _parse_hosts(parts, dict(query), tls, DEFAULT_PORT, connect_timeout)
    probe = {name: value for name, value in node.connection_kwargs.items() if name not in ("host", "port")}
    cluster = ClusterMap(seeds, probe, tls)
    return replace(
        node,
        where="cluster of " + ",".join(host_port(host, port) for host, port in seeds),
        connection_class=ClusterSSLConnection if tls else ClusterConnection,
        connection_kwargs={**node.connection_kwargs, "cluster": cluster},
        wait_replicas=wait_replicas,
        cluster=cluster,
    )


def _parse_hosts(
    parts: SplitResult, options: dict[str, str], tls: bool, default_port: int, connect_timeout: float
) -> tuple[list[tuple[str, int]], int, RedisOptions]:
    """A host list's hosts, `wait_replicas` (1 by default) and the rest read as a redis[s]:// URI to a node whose
    address comes later (the placeholder host is never connected to)."""
    userinfo, _, hosts = parts.netloc.rpartition("@")
    try:
        listed = parse_hosts(hosts, default_port)
        wait_replicas = int(options.pop("wait_replicas", "1"))
        if wait_replicas < 0:
            raise ValueError("wait_replicas must be 0 or more")
    except ValueError as exc:
        raise BackendConfigError(f"redis: invalid URI: {describe_error(exc)}") from None
    node_uri = urlunsplit(
        (
            "rediss" if tls else "redis",
            f"{userinfo}@localhost" if userinfo else "localhost",
            "",
            urlencode(list(options.items())),
            "",
        )
    )
    return listed, wait_replicas, parse_uri(node_uri, connect_timeout)


#: What Redis answers when it will not have us: a wrong password (AUTH), an ACL without PING, a SELECT of a
#: database it does not have: any error reply to the handshake (ResponseError) but those of a Redis that is busy.
REFUSALS = (redis_errors.AuthenticationError, redis_errors.AuthorizationError, redis_errors.ResponseError)
BUSY = (redis_errors.MasterDownError, redis_errors.TryAgainError, redis_errors.ClusterDownError)


def describe(exc: BaseException, options: RedisOptions) -> str:
    """`exc` in one line, secrets masked; redis-py's no-master error lists every sentinel client's repr."""
    if isinstance(exc, MasterNotFoundError):
        return f"no sentinel answered with master {options.master_name!r} up"
    return describe_error(exc, options.secrets)


def _refused(exc: BaseException) -> bool:
    """Refused for good (credentials, TLS): trying again cannot help."""
    return (isinstance(exc, REFUSALS) and not isinstance(exc, BUSY)) or tls_refused(exc)


def connect_error(exc: BaseException, options: RedisOptions) -> BackendError:
    """What a failed first connect means: refused for good (credentials, TLS, no RESP3), or worth trying again later."""
    # A Redis before 6.0 knows no HELLO: broadcast mode speaks RESP3, to publish on its subscribed connection.
    needs = " (broadcast mode needs Redis 6.0 or later)" if "HELLO" in str(exc) and _refused(exc) else ""
    return (BackendRefused if _refused(exc) else BackendUnavailable)(
        f"redis: cannot connect to {options.where}: {describe(exc, options)}{needs}"
    )


async def why_refused(exc: BaseException, options: RedisOptions) -> BaseException:
    """Why the first connect failed, where `exc` does not say it was refused for good. Through Sentinel: why the
    sentinels named no master, when every one of them refused us for good (TLS, password): redis-py keeps only the
    text of each sentinel's error, so each is asked again. On one rediss:// server: its refusal of our client
    certificate, told by redis-py as a closed or reset connection (`_tls_refusal`). Else `exc`."""
    if options.sentinel is None and options.cluster is None:
        kwargs = options.connection_kwargs
        return await _tls_refusal(exc, options.connection_class, kwargs, options.connect_timeout) or exc
    if not isinstance(exc, MasterNotFoundError) or options.sentinel is None:
        return exc
    refusals = []
    for sentinel in options.sentinel.sentinels:
        try:
            await sentinel.ping()
        except CONNECTION_ERRORS as error:
            pool = sentinel.connection_pool
            reason = await _tls_refusal(error, pool.connection_class, pool.connection_kwargs, options.connect_timeout)
            if not _refused(reason or error):
                return exc
            refusals.append(reason or error)
        else:
            return exc
    return refusals[0] if refusals else exc


async def _tls_refusal(
    exc: BaseException, connection_class: type[AbstractConnection], kwargs: dict[str, Any], timeout: float
) -> BaseException | None:
    """A TLS server's alert refusing our client certificate, where redis-py told of a closed or reset connection:
    TLS 1.3 delivers it after the client's side of the handshake, often before redis-py's first command (130 starts
    of 200 on one server here, 5 of 100 through a sentinel, taken for an outage and retried for ever)."""
    if not issubclass(connection_class, SSLConnection) or not isinstance(exc, redis_errors.ConnectionError):
        return None
    if _refused(exc):
        return None
    context = connection_class(**kwargs).ssl_context.get()
    return await tls_refusal(kwargs["host"], kwargs["port"], context, timeout)


def publish_error(exc: Exception, options: RedisOptions) -> BackendError:
    """What a failed PUBLISH or XADD means for the outbox: retry after a reconnect, or a refusal."""
    if isinstance(exc, (redis_errors.TimeoutError, TimeoutError)):  # redis-py's, or publish()'s own bound
        timeout = options.connection_kwargs["socket_timeout"]
        return PublishTimeout(f"redis: publish timed out after {timeout}s (socket_timeout)")
    if isinstance(exc, (redis_errors.ConnectionError, OSError)):
        # The command may have gone out before the connection failed.
        return PublishUnconfirmed(f"redis: publish failed: {describe(exc, options)}")
    # Refused by Redis itself: an ACL without PUBLISH or XADD, a key of another type, out of memory.
    return BackendError(f"redis: publish refused: {describe_error(exc, options.secrets)}")


async def await_confirmation(ready: asyncio.Event, subscription: Subscription, topic: str, timeout: float) -> None:
    """Wait until Redis confirmed a subscription (`ready`); if it does not within `timeout`, drop it and raise."""
    try:
        async with asyncio.timeout(timeout):
            await ready.wait()
    except TimeoutError:
        await subscription.unsubscribe()
        raise BackendUnavailable(f"redis: subscription to {topic!r} not confirmed within {timeout}s") from None


async def stop_task(task: asyncio.Task[None], conn: Connection | None = None) -> None:
    """Cancel `task` and wait until it has ended.

    redis-py writes through asyncio.wait_for, which on Python 3.11 can swallow a cancellation that comes as the write
    completes; the task then goes on to its next read. Dropping `conn` fails that read, and the task, seeing that we
    are closing, returns.
    """
    for _ in range(STOP_ATTEMPTS):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=STOP_WAIT)
        if done:
            with contextlib.suppress(asyncio.CancelledError, *CONNECTION_ERRORS):
                task.result()
            return
        if conn is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await conn.disconnect(nowait=True)
    log.warning("redis: task %s did not stop; leaving it", task.get_name())
