"""One load generator process: `python -m bench.worker '<spec as JSON>'`.

It prints `{"ready": true}` once connected (and, for a subscriber, subscribed), then one line with its result
and its own CPU time, peak RSS and wake-ups, at the end and when it became ready. The orchestrator starts the
subscriber, waits for it to be ready, then starts the publisher. Only the module of the worker's own kind is
imported (clients_syncar, or raw_<broker>).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import orjson
import uvloop

from bench.procstat import own_usage
from bench.tally import Spec


def _say(line: dict[str, Any]) -> None:
    # Something below the broker clients can leave stdout non-blocking, and a result line (tens of KiB of
    # latencies) is longer than a pipe holds: write it whole, blocking.
    os.set_blocking(sys.stdout.fileno(), True)
    sys.stdout.buffer.write(orjson.dumps(line) + b"\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    spec = Spec.parse(orjson.loads(argv[0]))
    at_ready: dict[str, float] = {}

    def ready() -> None:
        # What starting and connecting cost, so that the run's own cost can be told apart (bench.lowrate).
        at_ready.update(own_usage())
        _say({"ready": True})

    module = importlib.import_module("bench.clients_syncar" if spec.kind == "syncar" else f"bench.raw_{spec.kind}")
    run = module.publish if spec.role == "pub" else module.subscribe
    # The syncar clients are plain blocking code; the raw ones run on uvloop, as the daemon does.
    result = run(spec, ready) if spec.kind == "syncar" else uvloop.run(run(spec, ready))
    _say({"result": result, "usage": own_usage(), "ready_usage": at_ready})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
