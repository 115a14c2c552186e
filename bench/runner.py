"""The orchestrator: per broker, start the broker and the syncar daemons, then run every case of every contestant
in alternation (A B C D A B C D ...), each run with a fresh subscriber and publisher process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import string
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from bench.flow import Flow
from bench.plan import CLUSTER_SUFFIX, NOT_DURABLE, Case, Plan, in_turn
from bench.processes import NODE_DIR, REPO, Daemon, Meter, Worker, node_worker, python_worker

log = logging.getLogger(__name__)

#: A worker gets this long beyond its publishing time to connect, drain and report.
SLACK = 30.0
#: The syncar contestants' codecs. `syncar-base`: the syncar codec from another checkout (Section.base_root), run in
#: alternation with this one's for before-and-after figures from one run (`--base-root`). `syncar-traced`: the syncar
#: codec, every publish with W3C trace context.
CODECS = {"syncar": "syncar", "syncar-fs": "feathers-sync", "syncar-base": "syncar", "syncar-traced": "syncar"}


def root_of(contestant: str, root: Path, base_root: Path | None) -> Path:
    """The checkout a syncar contestant's daemons (and Node plugin) run from: `root`, or `syncar-base`'s,
    --base-root's."""
    return base_root if contestant == "syncar-base" and base_root is not None else root


def _broker_server(broker: str) -> Any:
    """A tests.brokers server (or cluster, for `<broker>-cluster`) for `broker`; RuntimeError if it cannot be had."""
    name = broker.removesuffix(CLUSTER_SUFFIX)
    cluster = name != broker
    binary = {"redis": "redis-server", "amqp": "rabbitmq-server", "nats": "nats-server"}[name]
    if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists():
        raise RuntimeError(f"{binary} is not installed")
    # Each broker's fixtures are imported only if used.
    if name == "redis":
        from tests.brokers.redis import RedisServer  # noqa: PLC0415
        from tests.brokers.redis_cluster import RedisCluster  # noqa: PLC0415

        return RedisCluster() if cluster else RedisServer()
    if name == "amqp":
        try:
            from tests.brokers.rabbitmq import RabbitCluster, RabbitServer  # noqa: PLC0415
        except ImportError as exc:
            raise RuntimeError(f"tests/brokers/rabbitmq.py is not usable: {exc}") from exc
        return RabbitCluster() if cluster else RabbitServer()
    from tests.brokers.nats import NatsCluster, NatsServer  # noqa: PLC0415

    return NatsCluster() if cluster else NatsServer()


def node_problem() -> str | None:
    """Why the feathers-sync contestant cannot run, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "feathers-sync").is_dir():
        return "bench/node has no node_modules (cd bench/node && npm ci)"
    return None


def worker_spec(case: Case, flow_path: Path, count: int, trace: bool = False) -> dict[str, Any]:
    """What a syncar load generator is told (bench.tally.Spec), but its role and target."""
    return {
        "kind": "syncar",
        "target": "",
        "key": f"bench-{uuid.uuid4().hex[:12]}",
        "size": case.size,
        "rate": case.rate,
        "duration": case.seconds,
        "count": count,
        "window": case.window,
        "flow": str(flow_path),
        "deadline": case.seconds + SLACK,
        "trace": trace,
    }


@contextlib.contextmanager
def load_generators(flow_path: Path) -> Iterator[list[Worker]]:
    """A fresh flow file, and a list for the workers of one run: they are killed on the way out, whatever happens."""
    flow = Flow(flow_path, create=True)
    workers: list[Worker] = []
    try:
        yield workers
    except BaseException:
        flow.finish(0)  # a subscriber still running stops at once
        raise
    finally:
        for worker in workers:
            worker.kill()
        flow.close()
        flow_path.unlink(missing_ok=True)


def stop_daemons(daemons: Iterable[Daemon], run: str) -> dict[str, int | None]:
    """Stop each daemon once; SIGTERM should give a clean exit (0): the exit codes are recorded, and a bad one said."""
    exits = {d.name: d.stop() for d in dict.fromkeys(daemons)}
    if any(code != 0 for code in exits.values()):
        log.warning("%s: a daemon did not exit cleanly after SIGTERM: %s", run, exits)
    return exits


class Priority:
    """`--nice`: the benchmark's processes (this one and all it starts: daemons, workers, brokers) run at a nice of
    their own, and so do their sessions' autogroups, for the length of the run.

    With the kernel's autogroups on (`/proc/sys/kernel/sched_autogroup_enabled`), a busy machine's CPU is shared
    between sessions first, and a process's own nice weighs only against its session's others: each broker starts a
    session of its own (tests.brokers), so its autogroup is set too. At full speed a contestant's throughput is the
    CPU its processes get over the CPU they spend per event; on a machine others load, what they got moved the ratio
    to raw by half (docs/benchmarks/history.md, "Full speed on NATS, fourth round").
    """

    def __init__(self, nice: int) -> None:
        self.nice = nice
        self._own_group: int | None = None
        self._own_nice = os.getpriority(os.PRIO_PROCESS, 0)

    def begin(self) -> None:
        """Raises OSError: PermissionError (a nice below the current one wants CAP_SYS_NICE), or the kernel refusing
        an autogroup change (its rate limit); nothing is left changed."""
        os.setpriority(os.PRIO_PROCESS, 0, self.nice)
        try:
            self._own_group = _autogroup_nice(os.getpid())
            if self._own_group is not None:
                _set_autogroup_nice(os.getpid(), self.nice)
        except OSError:
            self.end()
            raise

    def include(self, pids: Iterable[int]) -> None:
        """Processes of another session (a broker's): their autogroup runs at the same nice, where the kernel lets
        us (without root it refuses some changes, or several in a row: the run goes on, said)."""
        for pid in pids:
            try:
                if _autogroup_nice(pid) is not None:
                    _set_autogroup_nice(pid, self.nice)
            except OSError as exc:
                log.warning("--nice: the autogroup of process %d keeps its nice: %s", pid, exc)

    def end(self) -> None:
        """Give back the nice of before; going back down wants CAP_SYS_NICE: without it, said, and the run's results
        are kept all the same."""
        group, self._own_group = self._own_group, None
        try:
            if group is not None:
                _set_autogroup_nice(os.getpid(), group)
            os.setpriority(os.PRIO_PROCESS, 0, self._own_nice)
        except OSError as exc:
            log.warning("--nice: the nice of before the run is not given back: %s", exc)


def _autogroup_nice(pid: int) -> int | None:
    """The nice of `pid`'s autogroup (`/autogroup-58851 nice 0`), or None without autogroups."""
    try:
        text = Path(f"/proc/{pid}/autogroup").read_text()
    except FileNotFoundError:
        return None
    return int(text.rsplit(" ", 1)[1])


def _set_autogroup_nice(pid: int, nice: int) -> None:
    Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def _group_pids(pgid: int) -> list[int]:
    """Processes in process group `pgid`: a broker and its helpers (rabbitmq-server's Erlang VM)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[2]) == pgid:
                found.append(int(entry.name))
    return found


class Section:
    """One broker's part of the benchmark: its server, and its runs."""

    def __init__(
        self, broker: str, plan: Plan, workdir: Path, syncar_root: Path = REPO, base_root: Path | None = None
    ) -> None:
        self.broker = broker
        self.syncar_root = syncar_root
        self.base_root = base_root
        self.plan = plan
        self.dir = workdir / broker
        self.dir.mkdir(parents=True, exist_ok=True)
        self.server: Any = None
        self.uri = "local://"
        self.skipped: dict[str, str] = {}
        self._runs = 0

    async def start(self) -> None:
        if self.plan.mode == "durable" and self.broker in NOT_DURABLE:
            raise RuntimeError(NOT_DURABLE[self.broker])
        if self.broker != "local":
            self.server = _broker_server(self.broker)
            await asyncio.to_thread(self.server.start)
            self.uri = self.server.uri
        if "feathers-sync" in self.plan.contestants_for(self.broker) and (problem := node_problem()):
            self.skipped["feathers-sync"] = problem
        if self.plan.mode == "durable":
            self.skipped.update({c: NOT_DURABLE[c] for c in self.plan.contestants if c in NOT_DURABLE})

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()

    def broker_meter_pids(self) -> dict[str, int]:
        """The broker's processes (every node's, on a cluster), named for a Meter: broker_0, broker_1..."""
        if self.server is None:
            return {}
        nodes = getattr(self.server, "nodes", [self.server])
        processes = [node.process for node in (nodes.values() if isinstance(nodes, dict) else nodes)]
        pids = [pid for process in processes if process is not None for pid in _group_pids(process.pid)]
        return {f"broker_{index}": pid for index, pid in enumerate(pids)}

    async def start_daemons(
        self, name: str, count: int, codec: str = "syncar", root: Path | None = None
    ) -> list[Daemon]:
        """`count` fresh daemons on one fresh key, named `<name>-a`, `-b`...: ready, or all stopped again."""
        key = f"bench-{uuid.uuid4().hex[:12]}"
        # All start at once; then each is waited for in turn.
        daemons = [
            Daemon(
                self.dir, f"{name}-{letter}", self.uri, key, codec, mode=self.plan.mode, root=root or self.syncar_root
            )
            for letter in string.ascii_lowercase[:count]
        ]
        try:
            for daemon in daemons:
                await daemon.ready()
        except RuntimeError:
            for daemon in daemons:
                daemon.stop()
            raise
        return daemons

    async def _daemons(self, contestant: str, name: str) -> tuple[Daemon, Daemon]:
        """A fresh pair for one run, so its peak RSS and CPU are that run's alone (the replay buffer fills up)."""
        # On local:// there is no broker between two processes: one daemon, publisher and subscriber on it.
        root = root_of(contestant, self.syncar_root, self.base_root)
        daemons = await self.start_daemons(name, 1 if self.broker == "local" else 2, CODECS[contestant], root)
        return daemons[0], daemons[-1]

    async def run(
        self,
        contestant: str,
        case: Case,
        rep: int,
        on_daemons: Callable[[Daemon, Daemon], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        self._runs += 1
        record: dict[str, Any] = {
            "broker": self.broker,
            "contestant": contestant,
            "case": case.name,
            "size": case.size,
            "rate": case.rate,
            "rep": rep,
            "started": time.time(),
            "loadavg": os.getloadavg()[0],
        }
        if contestant in self.skipped:
            return {**record, "error": f"skipped: {self.skipped[contestant]}"}
        name = f"{self._runs:03d}-{contestant}-{case.name}"
        daemons: tuple[Daemon, Daemon] | None = None
        try:
            if contestant in CODECS:
                daemons = await self._daemons(contestant, name)
                if on_daemons is not None:
                    await on_daemons(*daemons)
            result = {**record, **await self._measure(contestant, case, name, daemons)}
        except (RuntimeError, OSError) as exc:
            log.warning("%s %s %s rep %d failed: %s", self.broker, contestant, case.name, rep, exc)
            result = {**record, "error": str(exc)[:4000]}
        finally:
            # Stopped after every run, even a failed one.
            exits = stop_daemons(daemons, name) if daemons is not None else {}
        if exits:
            result["daemon_exits"] = exits
        return result

    async def _measure(
        self, contestant: str, case: Case, name: str, daemons: tuple[Daemon, Daemon] | None
    ) -> dict[str, Any]:
        flow_path = self.dir / f"flow-{self._runs}"
        spec = worker_spec(case, flow_path, self.plan.max_events, trace=contestant == "syncar-traced")
        pids: dict[str, int] = {}
        launcher: Callable[[dict[str, Any]], list[str]] = python_worker
        if daemons is not None:
            a, b = daemons
            pub = {**spec, "role": "pub", "target": str(a.socket)}
            sub = {**spec, "role": "sub", "target": str(b.socket)}
            pids = {"daemon_a": a.pid, "daemon_b": b.pid} if a is not b else {"daemon": a.pid}
        else:
            kind = {"ceiling": self.broker, "feathers-sync": "feathers-sync"}[contestant]
            pub = {**spec, "role": "pub", "kind": kind, "target": self.uri}
            sub = {**spec, "role": "sub", "kind": kind, "target": self.uri}
            if contestant == "feathers-sync":
                launcher = node_worker
        pids.update(self.broker_meter_pids())
        meter = Meter(pids)
        cwd = NODE_DIR if launcher is node_worker else REPO
        with load_generators(flow_path) as workers:
            subscriber = await Worker.start(launcher(sub), f"{name}-sub", self.dir, cwd=cwd)
            workers.append(subscriber)
            await subscriber.ready()
            meter.begin()
            publisher = await Worker.start(launcher(pub), f"{name}-pub", self.dir, cwd=cwd)
            workers.append(publisher)
            await publisher.ready()
            pub_line = await publisher.result(case.seconds + SLACK)
            sub_line = await subscriber.result(SLACK)
        return {
            "pub": pub_line["result"],
            "pub_usage": pub_line["usage"],
            "sub": sub_line["result"],
            "sub_usage": sub_line["usage"],
            "processes": meter.end(),
            # The Python workers' usage once connected: their cost over the run alone (bench.lowrate).
            "ready_usage": {"pub": pub_line.get("ready_usage", {}), "sub": sub_line.get("ready_usage", {})},
        }


async def run_plan(
    plan: Plan,
    workdir: Path,
    progress: Callable[[dict[str, Any]], None],
    syncar_root: Path = REPO,
    base_root: Path | None = None,
    *,
    priority: Priority | None = None,
) -> dict[str, Any]:
    """Every run of the plan; a broker that cannot start is reported, and the others go on. `priority`, begun: its
    nice is given to each broker's session too."""
    runs: list[dict[str, Any]] = []
    sections: dict[str, Any] = {}
    for broker in plan.brokers:
        section = Section(broker, plan, workdir, syncar_root, base_root)
        began = time.monotonic()
        try:
            await section.start()
        except (RuntimeError, OSError) as exc:
            log.error("%s: cannot start: %s", broker, exc)
            sections[broker] = {"error": str(exc)[:2000]}
            section.stop()
            continue
        try:
            if priority is not None:
                priority.include(section.broker_meter_pids().values())
            for rep in range(plan.reps):
                for case in plan.cases:
                    for contestant in in_turn(plan.contestants_for(broker), rep):
                        record = await section.run(contestant, case, rep)
                        runs.append(record)
                        progress(record)
        finally:
            section.stop()
        sections[broker] = {"uri": section.uri, "seconds": time.monotonic() - began, "skipped": section.skipped}
    return {"runs": runs, "sections": sections}
