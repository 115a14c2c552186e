"""`--nice`: the benchmark's processes and their sessions' autogroups run at the nice asked for, and are given back
their own once the run is over."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[2]

#: Run in a session of its own, so that the autogroup it sets is its own, not the test runner's.
CHILD = """
import os, subprocess, sys, orjson
from bench.runner import Priority, _autogroup_nice
broker = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                          start_new_session=True)
me = os.getpid()
before = [os.getpriority(os.PRIO_PROCESS, 0), _autogroup_nice(me), _autogroup_nice(broker.pid)]
if os.geteuid() != 0:
    # Without CAP_SYS_NICE a nice below the current one is refused, and nothing is left changed.
    try:
        Priority(before[0] - 1).begin()
    except PermissionError:
        refused = True
    else:
        refused = False
    after = [os.getpriority(os.PRIO_PROCESS, 0), _autogroup_nice(me)]
    broker.communicate(b"")
    print(orjson.dumps({"before": before, "refused": refused, "after": after}).decode())
    sys.exit()
priority = Priority(5)
priority.begin()
started = subprocess.run([sys.executable, "-c", "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"],
                         capture_output=True, text=True, check=True)
priority.include([broker.pid])
during = [os.getpriority(os.PRIO_PROCESS, 0), _autogroup_nice(me), _autogroup_nice(broker.pid), int(started.stdout)]
priority.end()
after = [os.getpriority(os.PRIO_PROCESS, 0), _autogroup_nice(me)]
broker.communicate(b"")
print(orjson.dumps({"before": before, "during": during, "after": after}).decode())
"""


def test_the_run_its_children_and_a_brokers_session_get_the_nice_and_the_run_its_own_back() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        start_new_session=True,
    )
    seen = orjson.loads(done.stdout)
    nice, own_group, broker_group = seen["before"]
    if "refused" in seen:  # not root
        assert seen["refused"]
        assert seen["after"] == [nice, own_group]
        return
    # This process, what it starts (daemons, workers), its autogroup, and the broker's, a session of its own; a
    # kernel without autogroups has none to set.
    set_to = [None if group is None else 5 for group in (own_group, broker_group)]
    assert seen["during"] == [5, *set_to, 5]
    assert seen["after"] == [nice, own_group]
