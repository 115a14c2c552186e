"""The commands that ask a running daemon over its `--http` address: `syncar health` and `syncar peers`.

Standard library only (urllib): they run in container health checks, where a start must be quick.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from typing import Any

import orjson

from sidecar.commands_common import EXIT_FAILURE, EXIT_OK
from sidecar.config import Settings

#: The columns of `syncar peers`: heading, then how a row's field is shown.
COLUMNS = ("INSTANCE", "VERSION", "CODEC", "MODE", "SEQ", "LAG", "HEARD")


def get(settings: Settings, route: str, timeout: float, command: str) -> bytes | None:
    """The body of a 200 answer to GET /`route`, or None once the failure is told on stderr."""
    address = settings.http_address()
    if address is None:
        print(f"syncar: {command}: --http is off, nothing to ask", file=sys.stderr)
        return None
    host, port = address
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{port}/{route}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as exc:
        print(f"syncar: {url}: {exc.code} {exc.read().decode().strip()}", file=sys.stderr)
    except OSError as exc:
        print(f"syncar: {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
    return None


def health(settings: Settings, route: str, timeout: float) -> int:
    body = get(settings, route, timeout, "health")
    if body is None:
        return EXIT_FAILURE
    print(body.decode().strip())
    return EXIT_OK


def peers(settings: Settings, as_json: bool, timeout: float) -> int:
    body = get(settings, "peers", timeout, "peers")
    if body is None:
        return EXIT_FAILURE
    if as_json:
        print(body.decode().strip())
        return EXIT_OK
    table = orjson.loads(body)
    print(f"key {table['key']}, announcements every {table['interval']:g}s")
    print(format_table(table["peers"]))
    return EXIT_OK


def format_table(rows: list[dict[str, Any]]) -> str:
    """The peer table for people: one line per daemon, this one first and marked `*`."""
    lines = [list(COLUMNS)]
    for row in rows:
        lag = "-" if row["lag"] is None else str(row["lag"])
        heard = "self" if row["self"] else f"{row['heard_seconds_ago']:.1f}s ago"
        name = ("* " if row["self"] else "  ") + row["instance"]
        lines.append([name, row["version"], row["codec"], row["mode"], str(row["seq"]), lag, heard])
    lines[0][0] = "  " + lines[0][0]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    shown = ("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in lines)
    return "\n".join(line.rstrip() for line in shown)
