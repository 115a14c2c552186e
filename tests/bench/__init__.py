"""The benchmark's smoke tests: each runs a short `python -m bench ...` and checks the figures are all there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping

import pytest

from tests.utils import REPO


def run_bench(*args: str, timeout: float, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m <args>` from the checkout, exit 0 asserted. On a timeout it is interrupted (Ctrl-C: the benchmark
    stops the brokers and daemons it started), then its whole process group is killed: none outlives the test."""
    process = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=None if env is None else {**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGINT)
        try:
            stdout, stderr = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        pytest.fail(f"python -m {' '.join(args)} took over {timeout}s:\n{stdout}{stderr}")
    assert process.returncode == 0, stdout + stderr
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
