"""Durable mode's upkeep on Redis, beside the reading: say when Redis would lose confirmed entries (persistence),
say what retention trimmed while this instance was away, and forget the groups of departed instances.

None of it delivers anything: a failure here is logged and tried again later, never a lost connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from redis.asyncio import Redis

from backends.base import BackendConfig, describe_error
from backends.redis_common import CONNECTION_ERRORS, RedisOptions

log = logging.getLogger(__name__)

#: Groups of departed instances are looked for at most this often (and every instance_ttl / 2 when that is shorter).
GC_INTERVAL_MAX = 3600.0


def _id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return int(ms), int(seq or 0)


class Upkeep:
    """The upkeep of this instance's group (`group`) on the streams of durable mode."""

    def __init__(self, config: BackendConfig, options: RedisOptions, redis: Redis, group: bytes) -> None:
        self.config, self.group, self._redis = config, group, redis
        self.where, self._secrets = options.where, options.secrets
        self._stopped = False

    def stop(self) -> None:
        """The collector ends at its next step."""
        self._stopped = True

    async def check_persistence(self) -> None:
        """Say in the log when Redis would lose confirmed entries in a crash; durability is Redis's to keep."""
        try:
            config = await self._redis.config_get("append*")
        except CONNECTION_ERRORS as exc:  # CONFIG is often not allowed (managed Redis, ACL): say nothing
            log.debug("redis: cannot read the persistence settings: %s", describe_error(exc, self._secrets))
            return
        if config.get("appendonly") != "yes":
            log.warning(
                "redis: durable mode, but %s has appendonly no: a restart of Redis loses the events written "
                "since its last snapshot, confirmed ones too",
                self.where,
            )
        elif config.get("appendfsync") != "always":
            log.info(
                "redis: %s has appendfsync %s: a crash of its host can lose about the last second of confirmed events",
                self.where,
                config.get("appendfsync"),
            )

    async def warn_if_trimmed(self, key: bytes) -> None:
        """Say so when retention trimmed entries after our position while we were away: they are lost to us."""
        info = await self._redis.xinfo_stream(key)
        first = info.get("recorded-first-entry-id") or b"0-0"
        for group in await self._redis.xinfo_groups(key):
            # Trimming only ever removes the oldest entries, so nothing is lost unless we are behind the first one.
            # `lag` (Redis 7.0 and later) counts the entries added after our position, the trimmed ones too.
            if group["name"] != self.group or _id_tuple(group["last-delivered-id"]) >= _id_tuple(first):
                continue
            lag = group.get("lag")
            if isinstance(lag, int) and lag > info["length"]:
                log.warning(
                    "redis: %s dropped about %d events that instance %s had not read yet (the stream's "
                    "retention was reached while it was away): they are lost to it",
                    key.decode(),
                    lag - info["length"],
                    self.group.decode(),
                )

    async def collect_garbage_forever(self, keys: Callable[[], list[bytes]]) -> None:
        """Every instance_ttl / 2 or so until `stop()`, collect the groups of departed instances on the streams `keys()`
        names."""
        interval = min(self.config.instance_ttl / 2, GC_INTERVAL_MAX)
        # Until close(), which also cancels us: redis-py can turn that cancellation into a connection error.
        while not self._stopped:
            for key in keys():
                try:
                    await self.collect_garbage(key)
                except CONNECTION_ERRORS as exc:  # next time, then
                    log.debug(
                        "redis: garbage collection on %s failed: %s",
                        key.decode(),
                        describe_error(exc, self._secrets),
                    )
                if self._stopped:
                    return
            # At random within the last fifth of the interval, so a fleet does not look all at once.
            await asyncio.sleep(random.uniform(0.8 * interval, interval))

    async def collect_garbage(self, key: bytes) -> list[str]:
        """Destroy the groups on `key` whose consumers have all been idle for longer than instance_ttl.

        A consumer's idle time is Redis's (XINFO CONSUMERS `idle`): milliseconds since it last read its pending
        entries or got new ones (since Redis 7.2: since any XREADGROUP). A running syncar re-reads its pending entries
        at least every min(instance_ttl / 10, 60 s), so only a departed or cut-off instance ages past the ttl.
        Groups without consumers are not syncar's (it makes a group and its consumer in one transaction): they stay.
        """
        limit_ms, gone = self.config.instance_ttl * 1000, []
        for group in await self._redis.xinfo_groups(key):
            name = group["name"]
            if name == self.group or not group["consumers"]:
                continue
            consumers = await self._redis.xinfo_consumers(key, name)
            idle_ms = min((consumer["idle"] for consumer in consumers), default=0)
            if consumers and idle_ms > limit_ms and await self._redis.xgroup_destroy(key, name):
                gone.append(name.decode(errors="replace"))
                log.info(
                    "redis: forgot instance %s on %s: idle for %.0fs, over instance_ttl (%.0fs)",
                    gone[-1],
                    key.decode(),
                    idle_ms / 1000,
                    self.config.instance_ttl,
                )
        return gone
