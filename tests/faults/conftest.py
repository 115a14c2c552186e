"""Fixtures of the fault suite: a (broker, mode) per test, generated only where the backend has that mode,
and the table of what was lost, printed at the end of the session.

Durable cases exist only for backends with a durable mode in `backends.BACKENDS`, checked
at collection, so a backend's durable cases run as soon as its durable mode
lands. The combinations left out are listed under the table, with the reason.
Set SYNCAR_FAULTS_REPORT=<file> to also write the table there (markdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Generator
from pathlib import Path

import pytest

from backends.base import Mode
from sidecar.errors import ConfigError
from tests.brokers import BrokerServer
from tests.faults.cluster import C, ClusterFaults, N
from tests.faults.harness import BROKERS, MODES, Scenario
from tests.faults.report import NOT_RUN, RESULTS, not_run_lines, table

SCHEMES = {"redis": "redis://", "rabbitmq": "amqp://", "nats": "nats://"}


def _durable_support(broker: str) -> str | None:
    """None if the backend has a durable mode, else why not."""
    from backends import load_backend

    try:
        load_backend(SCHEMES[broker], Mode.DURABLE)
    except ConfigError as exc:
        return f"{exc} (syncar run --mode durable exits 2)"
    except Exception as exc:  # a backend being rewritten may not even import: say so, run the rest
        return f"backends for {SCHEMES[broker]} do not import ({type(exc).__name__}: {exc})"
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("fault_case")
    if marker is None or "broker_name" not in metafunc.fixturenames:
        return
    case, brokers, why_not, _ = marker.args
    params = []
    for broker in BROKERS:
        for mode in MODES:
            if broker not in brokers:
                NOT_RUN.append((case, broker, mode, why_not))
                continue
            reason = _durable_support(broker) if mode == "durable" else None
            if reason is not None:
                NOT_RUN.append((case, broker, mode, reason))
                continue
            params.append(
                pytest.param(
                    broker, mode, marks=[getattr(pytest.mark, broker), pytest.mark.faults], id=f"{broker}-{mode}"
                )
            )
    metafunc.parametrize(("broker_name", "mode"), params)


@pytest.fixture
def fault_server(request: pytest.FixtureRequest, broker_name: str) -> BrokerServer:
    # The session's Redis has an append-only file (fsync always): a SIGKILLed Redis comes back with its streams.
    marker = request.node.get_closest_marker("fault_case")
    assert marker is not None
    server: BrokerServer = request.getfixturevalue(f"{broker_name}_{marker.args[3]}")
    return server


@contextlib.asynccontextmanager
async def staged(
    request: pytest.FixtureRequest, case: str, broker_name: str, mode: str, server: BrokerServer, *, kind: str
) -> AsyncIterator[Scenario]:
    """The Scenario of fault case `case` in a directory of its own (`syncar-<kind>-...`), closed when the test
    ends; its directory is kept if the test failed or SYNCAR_FAULTS_KEEP is set."""
    directory = Path(tempfile.mkdtemp(prefix=f"syncar-{kind}-", dir="/tmp"))
    stage = Scenario(case, broker_name, mode, server, directory, f"{kind}-{uuid.uuid4().hex[:12]}")
    try:
        yield stage
    finally:
        await stage.close()
        report = getattr(request.node, "rep_call", None)
        if os.environ.get("SYNCAR_FAULTS_KEEP") or report is None or report.failed:
            # The daemons' logs are the first thing to read about a failure.
            print(f"\nfault test files (daemon logs) kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def scenario(
    request: pytest.FixtureRequest, fault_server: BrokerServer, broker_name: str, mode: str
) -> AsyncIterator[Scenario]:
    marker = request.node.get_closest_marker("fault_case")
    assert marker is not None
    async with staged(request, marker.args[0], broker_name, mode, fault_server, kind="faults") as stage:
        yield stage


@pytest.fixture
async def cluster_scenario(
    request: pytest.FixtureRequest, cluster: ClusterFaults[C, N], mode: str
) -> AsyncIterator[Scenario]:
    """The Scenario of a cluster case (its number from the test's `case` marker) on the `cluster` its test module
    gives; once the test is over what it left is cleared (`ClusterFaults.clear`, while the nodes it killed are still
    down) and those nodes run again, so the next test finds them all."""
    case = request.node.get_closest_marker("case")
    assert case is not None
    stage: Scenario | None = None
    try:
        async with staged(request, case.args[0], cluster.broker, mode, cluster.first, kind="cluster") as stage:
            yield stage
    finally:
        try:
            if stage is not None:
                await cluster.clear(stage)
        finally:
            await asyncio.to_thread(cluster.whole)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if config.option.collectonly or not (RESULTS or NOT_RUN):
        return
    lines = []
    if RESULTS:
        lines += [
            "Per receiving app: events sent (acked to the publisher), received, lost, duplicated, reordered, "
            "and seconds from the fault's end to the first event after it",
            "",
            *table(RESULTS),
        ]
    if NOT_RUN:
        lines += ["", "Not run:", *not_run_lines()]
    terminalreporter.write_sep("=", "syncar fault suite")
    for line in lines:
        terminalreporter.write_line(line)
    target = os.environ.get("SYNCAR_FAULTS_REPORT")
    if target:
        Path(target).write_text("\n".join(lines) + "\n")
