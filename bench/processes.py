"""The processes a run needs: syncar daemons, load generator workers (Python or Node), and what they report."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.procstat import cpu_seconds, memory_kib, reset_peak, task_stats

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_WORKER = NODE_DIR / "feathers_bench.js"
DAEMON_START_TIMEOUT = 30.0
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class Daemon:
    """`python -m sidecar run` in a child process of its own, from `root` (this checkout, or another one to compare)."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        backend: str,
        key: str,
        codec: str,
        *,
        mode: str = "broadcast",
        root: Path = REPO,
    ) -> None:
        self.name = name
        self.socket = workdir / f"{name}.sock"
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        # The instance id is unique per run: in durable mode it names this daemon's queue or consumer on the broker.
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sidecar",
                "run",
                "--socket",
                str(self.socket),
                "--backend",
                backend,
                "--key",
                key,
                "--codec",
                codec,
                "--mode",
                mode,
                "--http",
                "127.0.0.1:0",
                "--instance-id",
                f"bench-{name}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    async def ready(self) -> None:
        deadline = time.monotonic() + DAEMON_START_TIMEOUT
        while b"ready: apps may connect" not in self.log_path.read_bytes():
            if self.process.poll() is not None:
                raise RuntimeError(f"syncar {self.name} exited with {self.process.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"syncar {self.name} not ready within {DAEMON_START_TIMEOUT}s; see {self.log_path}")
            await asyncio.sleep(0.05)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM (it flushes and exits), SIGKILL if it does not within the bound; only this pid."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        self._log.close()
        return self.process.returncode


@dataclass
class Meter:
    """CPU seconds (in ticks, and exact for the threads alive), wake-ups and peak RSS of long-lived processes (the
    daemons, the broker) over one run."""

    pids: dict[str, int]
    start: dict[str, float] = field(default_factory=dict)
    start_tasks: dict[str, tuple[int, int]] = field(default_factory=dict)

    def begin(self) -> None:
        for pid in self.pids.values():
            reset_peak(pid)
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.start_tasks = {name: task_stats(pid) for name, pid in self.pids.items()}

    def end(self) -> dict[str, dict[str, float]]:
        figures: dict[str, dict[str, float]] = {}
        for name, pid in self.pids.items():
            memory = memory_kib(pid)
            cpu_ns, wakeups = task_stats(pid)
            figures[name] = {
                "cpu_s": cpu_seconds(pid) - self.start[name],
                "hwm_kib": memory.get("hwm", 0),
                "rss_kib": memory.get("rss", 0),
                "cpu_ns": cpu_ns - self.start_tasks[name][0],
                "wakeups": wakeups - self.start_tasks[name][1],
            }
        return figures


class Worker:
    """One load generator process; its stdout is `{"ready": true}`, then its result line. With `stdin`, it can be told
    things (bench/node/fleet_clients.js waits for a line before it starts)."""

    def __init__(self, process: asyncio.subprocess.Process, name: str, stderr_path: Path) -> None:
        self.process = process
        self.name = name
        self.stderr_path = stderr_path

    @classmethod
    async def start(cls, argv: list[str], name: str, workdir: Path, cwd: Path = REPO, *, stdin: bool = False) -> Worker:
        stderr = (workdir / f"{name}.err").open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin else None,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                cwd=cwd,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                limit=256 * 1024 * 1024,
            )
        finally:
            stderr.close()
        return cls(process, name, workdir / f"{name}.err")

    def _problem(self, what: str) -> RuntimeError:
        err = self.stderr_path.read_text(errors="replace").strip() if self.stderr_path.exists() else ""
        # The last line of a traceback says what went wrong; the log keeps the rest.
        last = err.splitlines()[-1][:300] if err else ""
        return RuntimeError(f"{self.name}: {what}" + (f": {last} (see {self.stderr_path.name})" if last else ""))

    async def _line(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            raw = await self.process.stdout.readline()
        if not raw:
            await self.process.wait()
            raise self._problem(f"exited with {self.process.returncode} before reporting")
        try:
            line: dict[str, Any] = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise self._problem(f"said something that is not JSON ({exc}): {raw[:200]!r}") from None
        return line

    async def ready(self, timeout: float = READY_TIMEOUT) -> None:
        try:
            line = await self._line(timeout)
        except TimeoutError:
            raise self._problem(f"not ready within {timeout}s") from None
        if not line.get("ready"):
            raise self._problem(f"said {line!r} instead of ready")

    async def result(self, timeout: float) -> dict[str, Any]:
        try:
            line = await self._line(timeout)
        except TimeoutError:
            raise self._problem(f"no result within {timeout}s") from None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self.process.wait()
        return line

    async def tell(self, line: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line)
        await self.process.stdin.drain()

    def kill(self) -> None:
        """SIGKILL this worker if it still runs (by its pid, which we started)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


def python_worker(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "bench.worker", orjson.dumps(spec).decode()]


def node_worker(spec: dict[str, Any]) -> list[str]:
    return ["node", str(NODE_WORKER), orjson.dumps(spec).decode()]
