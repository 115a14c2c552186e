"""What every result file of `python -m bench` says about its run: the command, when, the machine and the versions
of what ran on it (Python, Node, the kernel, the brokers, feathers-sync), and which commit of syncar was measured."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.processes import NODE_DIR


def _version(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except OSError:
        return "not installed"


def _commit(root: Path) -> str:
    """The checkout's commit, marked `+dirty` when its sidecar/ or backends/ differ from it."""
    commit = _version("git", "-C", str(root), "rev-parse", "--short", "HEAD") or "unknown"
    dirty = _version("git", "-C", str(root), "status", "--porcelain", "--", "sidecar", "backends")
    return commit + ("+dirty" if dirty else "")


def checkout_commit(base: Path) -> str:
    commit = _commit(base)  # a copy made with `git archive` has no commit: its directory's name says which
    return base.name if commit.startswith("unknown") else commit


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "node": _version("node", "-v"),
        "kernel": platform.release(),
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "redis": _version("redis-server", "--version"),
        "nats": _version("nats-server", "--version"),
        "rabbitmq": _version("dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"),
        "feathers_sync": _version(
            "node", "-p", f"require('{NODE_DIR}/node_modules/feathers-sync/package.json').version"
        ),
    }


def run_meta(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """What every result file says about how, where and on what it was measured."""
    return {
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "mode": args.mode,
        "machine": machine(),
        "loadavg_start": os.getloadavg(),
        "syncar_root": str(args.syncar_root.resolve()),
        "syncar_commit": checkout_commit(args.syncar_root),
    }
