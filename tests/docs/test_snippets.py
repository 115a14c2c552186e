"""Every ```python block of README.md and docs/ is a whole program, and runs as written against a real daemon.

A snippet passes if it exits 0, or if it is still running (it listens for events) once it has printed an event
published by another app; either way within SNIPPET_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from tests.utils import REPO, RawClient, publish_frame, run_daemon

SNIPPET_TIMEOUT = 30.0
PROBE = "from another app"
_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)


def snippets() -> list[tuple[str, str]]:
    found = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        text = page.read_text()
        for block in _BLOCK.finditer(text):
            line = text.count("\n", 0, block.start()) + 1
            found.append((f"{page.relative_to(REPO)}:{line}", block[1]))
    return found


def test_the_readme_has_python_snippets() -> None:
    assert any(where.startswith("README.md:") for where, _ in snippets())


@pytest.mark.parametrize("code", [code for _, code in snippets()], ids=[where for where, _ in snippets()])
async def test_snippet_runs_as_written(sock: Path, tmp_path: Path, code: str) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(code)
    async with run_daemon(sock):
        # Run from elsewhere than the repository, as a user's file would be, with the socket in the environment.
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            cwd=tmp_path,
            env={**os.environ, "SYNCAR_SOCKET": str(sock)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        other = await RawClient.connect(sock, {})
        printed = b""
        try:
            async with asyncio.timeout(SNIPPET_TIMEOUT):
                while PROBE.encode() not in printed:
                    await other.send(publish_frame("messages", "created", {"text": PROBE}))
                    try:
                        async with asyncio.timeout(0.2):
                            chunk = await process.stdout.read(65536)
                    except TimeoutError:
                        continue
                    if not chunk:  # the snippet ended
                        break
                    printed += chunk
            if process.returncode is None and PROBE.encode() not in printed:
                await process.wait()
        finally:
            await other.close()
            if process.returncode is None:
                process.terminate()
            errors = (await process.stderr.read()).decode()
            await process.wait()
        assert PROBE.encode() in printed or process.returncode == 0, f"exit {process.returncode}:\n{errors}"
        assert "Traceback" not in errors, errors
