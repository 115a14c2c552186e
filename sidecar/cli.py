"""The `syncar` command's entry point (`python -m sidecar` too); the commands are `sidecar.commands`.

A start makes some 300,000 objects that live as long as the process (modules, classes, the settings), and the cyclic
collector walked them ~75 times while they were made: 20 to 30 ms of CPU of a start of ~300 before the socket
answers (docs/benchmarks/history.md, "Start and idle memory"). It is paused from here, before anything of the daemon is
imported, until the command
is under way: for `run`, until the daemon listens (then `gc.freeze()` keeps what was made out of its passes).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    # pydantic reads every installed package's entry points for plugins at its first model (~8 ms of the start with
    # 80 packages installed); syncar uses none, and `syncar` is the whole process. A value set outside is kept.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    collecting = gc.isenabled()
    gc.disable()
    try:
        from sidecar.commands import main as run  # with the collector paused: the point of this module

        return run(argv)
    finally:
        if collecting:
            gc.enable()
