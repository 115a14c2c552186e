"""`syncar run` pauses the cyclic collector from its entry point until the daemon listens: the start's objects
(modules, classes, settings) were walked ~75 times as they were made, 20 to 30 ms of CPU of a start of ~300
(docs/benchmarks/history.md, "Start and idle memory"). Once listening it collects again."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tests.conftest import Connect
from tests.utils import REPO, TIMEOUT, publish_frame, wait_for

#: The CLI, saying on its output when its entry point is called and each time the collector ran.
COUNTED = """
import gc, os, sys
gc.callbacks.append(lambda phase, info: phase == "stop" and os.write(2, b"collected\\n"))
from sidecar.cli import main
os.write(2, b"main\\n")
sys.exit(main(sys.argv[1:]))
"""
READY = "ready: apps may connect"


async def test_the_collector_waits_until_the_daemon_listens_then_collects(sock: Path, connect: Connect) -> None:
    log_path = sock.parent / "daemon.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            COUNTED,
            "run",
            "--socket",
            str(sock),
            "--http",
            "off",
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        await wait_for(lambda: READY in log_path.read_text() or process.returncode is not None, TIMEOUT, "the start")
        assert process.returncode is None, log_path.read_text()
        start = log_path.read_text().partition(READY)[0].partition("main\n")[2]
        assert start.count("collected") == 0, start
        app = await connect(sock, {})
        for n in range(500):  # a few objects each: enough for the collector's youngest generation to fill
            await app.send(publish_frame(id=str(n), data={"n": n}))
        await wait_for(lambda: "collected" in log_path.read_text().partition(READY)[2], TIMEOUT, "a collection")
    finally:
        process.terminate()
        async with asyncio.timeout(TIMEOUT):
            await process.wait()
