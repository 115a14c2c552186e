"""What an app sends cannot forge or garble the daemon's log: every app-supplied string is logged escaped."""

from __future__ import annotations

import re
from pathlib import Path

from tests.utils import RawClient, SpawnedDaemon, wait_for

FORGED = "2026-01-01 00:00:00,000 INFO    sidecar.daemon: FORGED"
#: Every character that ends a line for some reader (str.splitlines, a terminal), and an escape sequence.
BREAKS = ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"]


async def test_names_ids_and_bad_frames_cannot_forge_a_log_line(sock: Path) -> None:
    daemon = SpawnedDaemon(sock)  # text log lines, as by default
    try:
        await daemon.ready()
        clients = []
        for i, brk in enumerate(BREAKS):
            hello = {"client": f"name{brk}{FORGED}\x1b[2J", "client_id": f"id{i}{brk}{FORGED}"}
            clients.append(await RawClient.connect(sock, hello))
        bad = await RawClient.connect(sock)
        clients.append(bad)
        # pydantic's error names the unknown key the app sent: the warning about the bad frame quotes it.
        await bad.send({"type": "hello", "resume": {"epoch": "e", "seq": 1, f"key\n{FORGED}": 1}})
        assert (await bad.frame())["code"] == "invalid_frame"
        for client in clients:
            await client.close()
        await wait_for(lambda: daemon.log.count("client gone") == len(BREAKS), what="every client's goodbye logged")
        assert await daemon.stop() == 0
        log = daemon.log
        lines = log.split("\n")[:-1]
        stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
        assert all(stamp.match(line) for line in lines), log
        assert not any(brk in log for brk in BREAKS[1:]) and "\x1b" not in log, log
        assert log.count("FORGED") == 2 * len(BREAKS) + 1, log  # the name, on connect and gone; the bad frame
        assert "id0" not in log, log  # a client_id is a secret: clients are named by their scope
        assert "name\\x0a2026-01-01" in log and "\\u2028" in log and "\\x1b[2J" in log, log
    finally:
        daemon.kill()
