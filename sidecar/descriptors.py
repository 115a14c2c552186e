"""File descriptors: take what the hard limit allows, and fit the number of app connections in it.

Every app connection and every HTTP connection is a descriptor. A daemon that accepts more connections than its
limit can hold fails in the worst way: accept() fails, the event loop's libuv closes the newcomer unseen, and apps
are cut off with nothing logged and no `too_many_clients` frame sent.
"""

from __future__ import annotations

import logging
import resource

from sidecar.errors import ConfigError

log = logging.getLogger(__name__)

#: Descriptors kept for everything but connections: standard streams, the listening sockets, the event loop's
#: epoll and signal pipe, the broker's connections (two or three per backend), log files, files read at runtime.
#: Generous: running short costs more than a few descriptors.
RESERVED = 64
#: What an unlimited soft limit counts as.
UNLIMITED = 1 << 30


def raise_soft_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (what an unprivileged process may do); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return UNLIMITED
    if hard == resource.RLIM_INFINITY or soft >= hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # a sandbox may forbid it; the soft limit stays
        log.warning("cannot raise the file descriptor limit from %d to %d: %s", soft, hard, exc)
        return soft
    log.info("file descriptor limit raised from %d to %d (the hard limit)", soft, hard)
    return hard


def fit_clients(wanted: int, limit: int, http_connections: int) -> int:
    """The number of app connections the descriptor `limit` can serve, at most `wanted`.

    Raises:
        ConfigError: the limit leaves no room for a single app.
    """
    room = limit - RESERVED - http_connections
    if room < 1:
        raise ConfigError(
            f"max_clients: the file descriptor limit {limit} is too low to serve any app (syncar keeps "
            f"{RESERVED + http_connections} for itself); raise it: ulimit -n, systemd LimitNOFILE=, "
            f"docker --ulimit nofile="
        )
    if wanted > room:
        log.warning(
            "max clients lowered from %d to %d: the file descriptor limit is %d and syncar keeps %d for "
            "itself; raise the limit (ulimit -n, systemd LimitNOFILE=, docker --ulimit nofile=) to serve "
            "more",
            wanted,
            room,
            limit,
            RESERVED + http_connections,
        )
        return room
    return wanted
