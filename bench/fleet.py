"""`python -m bench --fleet`: what a whole fleet spends, apps and daemons together, against feathers-sync.

Three Feathers instances (Node, bench/node/fleet_app.js: `@feathersjs/feathers`, a memory `messages` service, the
socket.io transport) and a real-time socket.io client on each (bench/node/fleet_clients.js: the three Feathers clients
in one process), messages created round-robin through the clients at 100 and 1,000 events/s and as fast as a
window of events in flight allows. Contestants, on the same broker, alternated in every repetition:

- `syncar`: each instance with `@syncar/feathers` and its own syncar daemon (syncar codec, broadcast mode);
- `feathers-sync`: each instance with the real feathers-sync 3.1.1 on the broker;
- `syncar-base` (with `--base-root`): as `syncar`, the plugin and the daemons of that checkout, for before-and-after
  figures from one run.

Per run: CPU per event created of the apps and the daemons (bench.procstat.task_stats, exact, from the moment the
clients are connected and warmed up to their end), the broker's apart; the sum of every app's and daemon's peak RSS
over the run; the latency from `create` to each other client's `created` (p50, p99); and what was lost, and whether
the apps were told (bench.fleet.loss_figures).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.fleet_report import markdown, summarise, table
from bench.parts import Part, Progress, alternated, exit_status, on_each_broker, run_part, said
from bench.parts_plot import plot_fleet
from bench.processes import NODE_DIR, Daemon, Meter, Worker
from bench.report import SATURATED_LAG, SATURATED_SHARE, quantile
from bench.runner import SLACK, Section, root_of, stop_daemons

log = logging.getLogger(__name__)

FLEET_APP = NODE_DIR / "fleet_app.js"
FLEET_CLIENTS = NODE_DIR / "fleet_clients.js"
#: Events/s offered; 0: as fast as the window allows (the highest rate the machine sustains).
RATES = (100, 1_000, 0)
CONTESTANTS = ("syncar", "feathers-sync")
BASE = "syncar-base"
INSTANCES = 3
SIZE = 256
SECONDS = 5.0
REPS = 3
#: Unpaced: at most this many events created and not yet received by every other client.
WINDOW = 256
#: Seconds of the same traffic before measuring (JIT, buffers, connections), and the most events a run creates.
WARMUP = 1.0
MAX_EVENTS = 200_000
#: The clients' measured run, as fleet_clients.js numbers it (its warm-up is run 1): the apps time its messages.
MEASURED_RUN = 2
#: A directory in this variable: the apps run under `node --cpu-prof` and write one profile each there as they exit
#: at the end of a run; `node bench/node/cpuprofile.js <file>` says where their time went.
CPU_PROF = "SYNCAR_FLEET_CPU_PROF"
#: Seconds an app has to report its hops and exit (writing its profile, if profiled).
REPORT_TIMEOUT = 15.0
#: Seconds beyond the clients' own deadline (the run and SLACK) for their result to come.
RESULT_SLACK = 10.0


def node_problem() -> str | None:
    """Why the fleet cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    needed = ("feathers-sync", "@feathersjs/socketio", "@feathersjs/socketio-client", "@syncar/feathers")
    if missing := [m for m in needed if not (NODE_DIR / "node_modules" / m).is_dir()]:
        return f"bench/node lacks {', '.join(missing)} (cd bench/node && npm ci)"
    return None


def _node(script: Path, spec: dict[str, Any], flags: tuple[str, ...] = ()) -> list[str]:
    return ["node", *flags, str(script), orjson.dumps(spec).decode()]


def _profiled() -> tuple[str, ...]:
    """The apps' `node --cpu-prof` flags, if CPU_PROF names a directory for their profiles."""
    return ("--cpu-prof", f"--cpu-prof-dir={os.environ[CPU_PROF]}") if os.environ.get(CPU_PROF) else ()


def _p50_p99(name: str, us: list[int]) -> dict[str, float | None]:
    ordered = sorted(us)
    return {
        f"{name}_ms": quantile(ordered, 0.5) / 1000 if ordered else None,
        f"{name}_p99_ms": quantile(ordered, 0.99) / 1000 if ordered else None,
    }


def hop_figures(hops: list[dict[str, list[int]]]) -> dict[str, float | None]:
    """Where the latency goes, in ms, p50 and p99 over the run's messages: from `create` to the first hook of the
    app it was created through (`to_app`), from there to the `created` emit in each other app (`app_to_app`), the
    sync's own part of the path, from the apps' reports (fleet_app.js). With syncar, that part split at the publishing
    daemon's stamp, by the wall clock: from the hook to the stamp (`to_daemon`: the app's publish, its socket, the
    daemon's read), and from the stamp to each other app's emit (`daemon_to_app`: the outbox, the broker, the other
    daemon, its socket, the other app's read)."""
    before: dict[int, int] = {}  # message -> µs from its create to its app's hook
    hooked: dict[int, int] = {}  # message -> wall-clock µs of its app's hook
    mine: list[set[int]] = []
    for report in hops:
        created = dict(zip(report["before"][::2], report["before"][1::2], strict=True))
        before.update(created)
        hooked.update(zip(report["hooked"][::2], report["hooked"][1::2], strict=True))
        mine.append(set(created))
    between = [
        us - before[n]
        for report, own in zip(hops, mine, strict=True)
        for n, us in zip(report["emitted"][::2], report["emitted"][1::2], strict=True)
        if n not in own and n in before
    ]
    relayed = [
        (n, stamp, emit) for report in hops for n, stamp, emit in zip(*[iter(report["relayed"])] * 3, strict=True)
    ]
    return (
        _p50_p99("to_app", list(before.values()) if between else [])
        | _p50_p99("app_to_app", between)
        | _p50_p99("to_daemon", [stamp - hooked[n] for n, stamp, _ in relayed if n in hooked])
        | _p50_p99("daemon_to_app", [emit - stamp for _, stamp, emit in relayed])
    )


def loss_figures(sent: int, hops: list[dict[str, list[int]]], told: list[dict[str, int]]) -> dict[str, int]:
    """Deliveries that never reached the app they were for (`missed_by_apps`: the messages created through the other
    apps that an app's `created` emit never saw), what the apps were told of (`told`: the events the plugin's `gap`
    frames and `resume_gap` errors said were missed, and, for each publish an app did not relay, its deliveries to the
    other apps), and `untold`: each app's misses beyond what it was told of, summed; 0 where everything was told."""
    refused = [t["refused"] for t in told]
    figures = {"missed_by_apps": 0, "told": 0, "untold": 0}
    for index, (report, app_told) in enumerate(zip(hops, told, strict=True)):
        emitted = set(report["emitted"][::2])
        # fleet_clients.js creates message n through client, hence app, n % INSTANCES
        missed = sum(1 for n in range(sent) if n % INSTANCES != index and n not in emitted)
        explained = app_told["missed"] + app_told["resume_missed"] + sum(refused) - refused[index]
        figures["missed_by_apps"] += missed
        figures["told"] += explained
        figures["untold"] += max(missed - explained, 0)
    return figures


def run_figures(run: dict[str, Any]) -> dict[str, Any]:
    """CPU µs per event created of each kind of process, their peak RSS together, latency, and losses."""
    if run.get("error"):
        return {}
    result, processes = run["result"], run["processes"]
    sent, deliveries, expected = result["sent"], result["received"], result["expected"]
    figures: dict[str, Any] = {"sent": sent, "lost": max(expected - deliveries, 0), "create_errors": result["errors"]}
    figures["late"] = result.get("late", 0)
    if told := run.get("told"):  # kept in the record: what each app was told
        figures.update(loss_figures(sent, run["hops"], told))

    def per_event(prefix: str) -> float | None:
        ns = [p["cpu_ns"] for name, p in processes.items() if name.startswith(prefix)]
        return sum(ns) / 1e3 / sent if sent and ns else None

    for kind in ("app", "daemon", "broker"):
        figures[f"{kind}_us"] = per_event(kind)
    figures["all_us"] = (figures["app_us"] or 0) + (figures["daemon_us"] or 0) if sent else None
    figures["clients_us"] = run["usage"]["cpu_s"] * 1e6 / sent if sent else None
    hwm = [p["hwm_kib"] for name, p in processes.items() if name.startswith(("app", "daemon"))]
    figures["peak_rss_mib"] = sum(hwm) / 1024
    ordered = sorted(result.pop("latencies_us"))
    figures["p50_ms"] = quantile(ordered, 0.5) / 1000
    figures["p99_ms"] = quantile(ordered, 0.99) / 1000
    figures.update(hop_figures(run.pop("hops", [])))
    if gc := run.get("gc"):  # the apps' collections during the run, together (fleet_app.js)
        figures["apps_gc_pauses"] = sum(app["pauses"] for app in gc)
        figures["apps_gc_ms"] = sum(app["ms"] for app in gc)
        figures["apps_gc_max_ms"] = max(app["max_ms"] for app in gc)
        figures["apps_gc_full"] = sum(app["full"] for app in gc)
    if run["rate"]:
        achieved = sent / result["elapsed"] if result["elapsed"] else 0.0
        figures["achieved"] = achieved
        figures["saturated"] = (
            achieved < SATURATED_SHARE * run["rate"] or result["max_lag"] > SATURATED_LAG or figures["lost"] > 0
        )
    else:  # events that reached every other client, per second, from the first create to the last arrival
        figures["achieved"] = deliveries / (INSTANCES - 1) / result["last_s"] if result["last_s"] > 0 else None
        figures["saturated"] = False
    return figures


class Fleet:
    """One broker's fleet runs: its server (bench.runner.Section), and per run fresh daemons, apps and clients."""

    def __init__(self, section: Section, seconds: float) -> None:
        self.section = section
        self.seconds = seconds
        self._runs = 0

    async def run(self, contestant: str, rate: int, rep: int) -> dict[str, Any]:
        self._runs += 1
        section = self.section
        record: dict[str, Any] = {
            "broker": section.broker,
            "contestant": contestant,
            "rate": rate,
            "rep": rep,
            "started": time.time(),
            "loadavg": os.getloadavg()[0],
        }
        name = f"{self._runs:03d}-fleet-{contestant}-{rate or 'max'}"
        daemons: list[Daemon] = []
        workers: list[Worker] = []
        try:
            root = (
                None if contestant == "feathers-sync" else root_of(contestant, section.syncar_root, section.base_root)
            )
            if root is not None:
                daemons = await section.start_daemons(name, INSTANCES, root=root)
            record.update(await self._measure(name, daemons, workers, rate, root))
        except (RuntimeError, OSError) as exc:
            log.warning("%s fleet %s %s rep %d failed: %s", section.broker, contestant, rate, rep, exc)
            record["error"] = str(exc)[:4000]
        finally:
            for worker in workers:  # the apps and the clients: ours, by pid
                worker.kill()
            for worker in workers:
                await worker.process.wait()
            if daemons:
                record["daemon_exits"] = stop_daemons(daemons, name)
        record["figures"] = run_figures(record)
        return record

    async def _measure(
        self, name: str, daemons: list[Daemon], workers: list[Worker], rate: int, root: Path | None
    ) -> dict[str, Any]:
        from tests.brokers import free_port  # noqa: PLC0415  (as bench.runner imports the broker fixtures)

        section = self.section
        key = f"bench-{uuid.uuid4().hex[:12]}"
        ports = [free_port() for _ in range(INSTANCES)]
        sync = "feathers-sync" if root is None else "syncar"
        plugin = "" if root is None else str(root / "clients" / "node")
        for index, port in enumerate(ports):
            socket = str(daemons[index].socket) if daemons else ""
            spec = {"sync": sync, "plugin": plugin, "port": port, "socket": socket, "uri": section.uri, "key": key}
            spec |= {"run": MEASURED_RUN}
            argv = _node(FLEET_APP, spec, ("--expose-gc", *_profiled()))
            workers.append(await Worker.start(argv, f"{name}-app{index}", section.dir, NODE_DIR, stdin=True))
        for app in workers:
            await app.ready()
        spec = {
            "urls": [f"http://127.0.0.1:{port}" for port in ports],
            "rate": rate,
            "duration": self.seconds,
            "count": MAX_EVENTS,
            "window": WINDOW,
            "warmup": min(WARMUP, self.seconds),
            "size": SIZE,
            "deadline": self.seconds + SLACK,
        }
        clients = await Worker.start(_node(FLEET_CLIENTS, spec), f"{name}-clients", section.dir, NODE_DIR, stdin=True)
        workers.append(clients)
        await clients.ready()
        pids = {f"app_{i}": app.process.pid for i, app in enumerate(workers[:INSTANCES])}
        pids.update({f"daemon_{i}": daemon.pid for i, daemon in enumerate(daemons)})
        meter = Meter({**pids, **section.broker_meter_pids()})
        for app in workers[:INSTANCES]:  # what their syncs tell is counted from here, after a full collection
            await app.tell(b"go\n")
        for app in workers[:INSTANCES]:
            await app.ready()
        meter.begin()
        await clients.tell(b"go\n")
        line = await clients.result(self.seconds + SLACK + RESULT_SLACK)
        processes = meter.end()
        for app in workers[:INSTANCES]:  # each says when the messages reached it, what it was told, and exits
            await app.tell(b"end\n")
        reports = [await app.result(REPORT_TIMEOUT) for app in workers[:INSTANCES]]
        return {
            "result": line["result"],
            "usage": line["usage"],
            "processes": processes,
            "hops": [report["hops"] for report in reports],
            "told": [report["told"] for report in reports],
            "gc": [report["gc"] for report in reports],
        }


def _said(run: dict[str, Any]) -> str:
    return said(
        f"  {run['broker']:6} {run['contestant']:13} {run['rate'] or 'max':>5} rep {run['rep'] + 1}: ",
        run,
        lambda f: (
            f"{f['achieved'] or 0:,.0f} events/s, apps+daemons {f['all_us']:.0f} µs/event "
            f"(broker {f['broker_us']:.0f}), {f['peak_rss_mib']:.0f} MiB, "
            f"p50 {f['p50_ms']:.2f} p99 {f['p99_ms']:.2f} ms"
            + (
                f" (app to app {f['app_to_app_ms']:.2f}/{f['app_to_app_p99_ms']:.2f}"
                + (
                    f": to its daemon {f['to_daemon_ms']:.2f}/{f['to_daemon_p99_ms']:.2f}, "
                    f"on to the apps {f['daemon_to_app_ms']:.2f}/{f['daemon_to_app_p99_ms']:.2f}"
                    if f.get("to_daemon_ms") is not None
                    else ""
                )
                + ")"
                if f.get("app_to_app_ms") is not None
                else ""
            )
            + (
                f", apps' GC {f['apps_gc_pauses']} pauses {f['apps_gc_ms']:.0f} ms (longest {f['apps_gc_max_ms']:.1f}, "
                f"{f['apps_gc_full']} full)"
                if f.get("apps_gc_pauses") is not None
                else ""
            )
            + (f"  lost {f['lost']}" if f["lost"] else "")
            + (f"  late {f['late']}" if f["late"] else "")
            + (f", apps missed {f['missed_by_apps']}, told {f['told']}" if f.get("missed_by_apps") else "")
            + (f", UNTOLD {f['untold']}" if f.get("untold") else "")
            + ("  SATURATED" if f["saturated"] else "")
        ),
    )


async def measure(part: Part, workdir: Path, progress: Progress, rates: tuple[int, ...] = RATES) -> dict[str, Any]:
    """Every rate of every contestant on every broker, alternated; a broker that cannot start is reported."""
    results: dict[str, Any] = {"runs": [], "broker_errors": {}}
    contestants = ((BASE,) if part.base_root else ()) + CONTESTANTS

    async def on(section: Section) -> None:
        fleet = Fleet(section, part.seconds)
        for rep, rate, contestant in alternated(part.reps, rates, contestants):
            results["runs"].append(await fleet.run(contestant, rate, rep))
            progress(_said(results["runs"][-1]))

    await on_each_broker(part, workdir, results, progress, on)
    return results


def fleet(
    meta: dict[str, Any],
    brokers: tuple[str, ...],
    *,
    seconds: float,
    reps: int,
    root: Path,
    outs: list[Path],
    plot: bool = True,
    base_root: Path | None = None,
    rates: tuple[int, ...] = RATES,
) -> int:
    """Measure, print the table, and write fleet.json, fleet.md and (with `plot`) fleet.png into each of `outs`.
    With `base_root`, that checkout's plugin and daemons run too (`syncar-base`), alternated with the others."""
    if problem := node_problem():
        print(f"--fleet cannot run: {problem}")
        return 1
    meta.update(
        size=SIZE,
        rates=list(rates),
        instances=INSTANCES,
        publish_seconds=seconds,
        reps=reps,
        window=WINDOW,
        brokers=list(brokers),
    )
    # feathers-sync (and syncar-base) run apart from the plan
    part = Part("fleet", brokers, ("syncar",), reps, seconds, root, base_root)
    title = f"the fleet ({INSTANCES} instances) on {', '.join(brokers)}"
    drawn = plot_fleet if plot else None
    results = run_part(
        part,
        meta,
        title,
        functools.partial(measure, rates=rates),
        outs,
        summarise=summarise,
        table=table,
        markdown=markdown,
        plot=drawn,
    )
    return exit_status(results["runs"])
