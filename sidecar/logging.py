"""Log configuration (applied by the CLI only), a rate-limited warning helper, and `printable` for what apps send."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


#: Control characters (C0, DEL, C1), the Unicode line and paragraph separators, and the backslash that escapes them.
_ESCAPES: dict[int, str] = {
    **{code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))},
    0x2028: "\\u2028",
    0x2029: "\\u2029",
    ord("\\"): "\\\\",
}
#: Characters of an app's string kept in a log line; a name or an id is far shorter.
PRINTABLE_LIMIT = 256


def printable(text: str) -> str:
    """`text`, which an app (or the broker) chose, made safe for one log line.

    Its control characters are escaped (`\\x0a`), so a newline cannot forge a log line and an escape sequence cannot
    drive the terminal that shows the log; it is cut after PRINTABLE_LIMIT characters. Use it for every such string
    that is logged, in either log format.
    """
    if len(text) > PRINTABLE_LIMIT:
        return f"{text[:PRINTABLE_LIMIT].translate(_ESCAPES)}... ({len(text) - PRINTABLE_LIMIT} more characters)"
    return text.translate(_ESCAPES)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the exception if any.

    The time is RFC 3339 in UTC with milliseconds (`2026-12-05T23:33:58.123Z`), so lines from hosts in
    different zones sort and compare as they are.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(record.created))}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class HarmlessAsyncioWarnings(logging.Filter):
    """nats-py's protocol returns True from eof_received() over TLS; asyncio warns on every connection."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("returning true from eof_received()")


#: Loggers whose level the CLI sets, besides syncar's own (`sidecar`, `backends`: the `--log-level`).
QUIETED = {
    # aiormq logs every failed reconnect at ERROR with a traceback; backends.amqp says it in one line.
    "aiormq": logging.CRITICAL,
    "aio_pika.tools": logging.CRITICAL,
    # aio-pika warns at every failed reconnect attempt; backends.amqp logs the outage and a summary instead.
    "aio_pika.robust_connection": logging.CRITICAL,
}


def configure(level: str, fmt: str) -> None:
    """One handler, on the root logger, writing to stderr in `fmt`; syncar's loggers at `level`, the root's at
    warning. Set directly: `logging.config` (with `logging.handlers`, `queue`, `pickle`) weighed 0.8 MiB."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(HarmlessAsyncioWarnings())
    root = logging.getLogger()
    for replaced in root.handlers[:]:
        root.removeHandler(replaced)
        replaced.close()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("sidecar", "backends"):
        logging.getLogger(name).setLevel(level.upper())
    for name, quiet in QUIETED.items():
        logging.getLogger(name).setLevel(quiet)


class RateLimitedLogger:
    """Logs a warning per key at most once per `interval`, then says how many were held back.

    For things a stranger can cause at any rate (bad frames, junk on the broker):
    the log must not become the attack.
    """

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.ERROR, key, msg, *args)

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self._interval) < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        held = self._suppressed.pop(key, 0)
        if held:
            msg += " (and %d more like it not logged)"
            args = (*args, held)
        self._logger.log(level, msg, *args)


#: While a broker stays away, a line about the failed reconnect attempts at most this often.
OUTAGE_SUMMARY_INTERVAL = 60.0


class Outage:
    """A broker outage in the log, however long it lasts: its start once, its end once, and in between at most one
    line per `interval` about the failed attempts, with how many were not logged.

    A reconnect loop retrying every second for nine minutes wrote 703 warnings; this writes about eleven.
    """

    def __init__(self, logger: logging.Logger, interval: float = OUTAGE_SUMMARY_INTERVAL) -> None:
        self._logger = logger
        self._interval = interval
        self._attempts: RateLimitedLogger | None = None  # a fresh one per outage: its count starts at zero
        self._since = 0.0
        self.failures = 0

    @property
    def ongoing(self) -> bool:
        return self._attempts is not None

    @property
    def seconds(self) -> float:
        """How long the current (or the last) outage has lasted."""
        return time.monotonic() - self._since

    def began(self, msg: str, *args: object) -> None:
        """The broker is gone: a warning, unless this outage was already told."""
        if self._attempts is None:
            self._attempts = RateLimitedLogger(self._logger, self._interval)
            # Through the limiter, so the first failed attempt is held back for an interval like the rest.
            self._attempts.warning("outage", msg, *args)
            self._since, self.failures = time.monotonic(), 0

    def failed(self, msg: str, *args: object) -> None:
        """An attempt failed: a warning if none was logged for `interval`, else only counted."""
        if self._attempts is None:
            self.began(msg, *args)
        else:
            self._attempts.warning("outage", msg, *args)
        self.failures += 1

    def ended(self, msg: str, *args: object) -> None:
        """The broker is back: logged at INFO, once (use `seconds` and `failures` in it before they reset)."""
        if self._attempts is not None:
            self._attempts = None
            self._logger.info(msg, *args)
