"""What a benchmark run measures: brokers, contestants, the cases and how long each lasts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

BROKERS = ("local", "redis", "amqp", "nats")
#: syncar with each codec, raw pub/sub from Python, feathers-sync in Node. `local` has only the first two.
CONTESTANTS = ("syncar", "syncar-fs", "ceiling", "feathers-sync")
#: Asked for by name only: `syncar-traced`, the syncar codec with W3C trace context on every publish; `syncar-base`,
#: the syncar codec from the `--base-root` checkout (added by that option).
EXTRA_CONTESTANTS = ("syncar-traced",)
LABELS = {
    "syncar": "syncar, syncar codec",
    "syncar-traced": "syncar codec, trace context",
    "syncar-base": "syncar codec, --base-root",
    "syncar-fs": "syncar, feathers-sync codec",
    "ceiling": "raw pub/sub, Python",
    "feathers-sync": "feathers-sync 3.1.1, Node",
}
#: With --cluster, each broker again as a local cluster, right after its single node: `<broker>-cluster`.
CLUSTER_SUFFIX = "-cluster"
BROKER_LABELS = {
    "local": "local://",
    "redis": "Redis",
    "amqp": "RabbitMQ",
    "nats": "NATS",
    "redis-cluster": "Redis Cluster (6 nodes)",
    "amqp-cluster": "RabbitMQ cluster (3 nodes)",
    "nats-cluster": "NATS cluster (3 nodes)",
}
#: The syncar daemons' `--mode`; the ceiling and feathers-sync are broker pub/sub (broadcast) whatever it says.
MODES = ("broadcast", "durable")
#: What durable mode cannot run: local:// has no durable mode, and it needs the syncar codec.
NOT_DURABLE = {"local": "local:// has no durable mode", "syncar-fs": "durable mode takes the syncar codec only"}
#: Bytes of broker messages a publisher may have in flight: far below Redis's 8 MB pub/sub output buffer
#: limit and syncar's 8 MiB client queue, far above what a few milliseconds of traffic need.
WINDOW_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Case:
    name: str  # "tp-256", "lat-1000"
    size: int  # payload (record) bytes
    rate: int  # events per second offered; 0: as fast as it goes (throughput)
    seconds: float  # publishing lasts this long at most

    @property
    def window(self) -> int:
        body = 4 * self.size + 250  # the record four times over, plus the context's other fields
        return max(64, min(16_384, WINDOW_BYTES // body))


@dataclass(frozen=True, slots=True)
class Plan:
    brokers: tuple[str, ...]
    contestants: tuple[str, ...]
    cases: tuple[Case, ...]
    reps: int
    max_events: int
    quick: bool
    mode: str = "broadcast"

    def contestants_for(self, broker: str) -> tuple[str, ...]:
        # No broker, or a cluster: no ceiling and no feathers-sync to compare with (syncar's single node is the
        # comparison on a cluster).
        if broker == "local" or broker.endswith(CLUSTER_SUFFIX):
            return tuple(c for c in self.contestants if c.startswith("syncar"))
        return self.contestants

    def runs(self) -> int:
        return sum(len(self.contestants_for(b)) for b in self.brokers) * len(self.cases) * self.reps

    def as_dict(self) -> dict[str, Any]:
        return {
            "brokers": list(self.brokers),
            "contestants": list(self.contestants),
            "reps": self.reps,
            "max_events": self.max_events,
            "quick": self.quick,
            "mode": self.mode,
            "cases": [{**asdict(c), "window": c.window} for c in self.cases],
        }


def make_plan(
    *,
    quick: bool,
    brokers: tuple[str, ...] | None,
    contestants: tuple[str, ...] | None,
    reps: int | None,
    seconds: float | None,
    mode: str = "broadcast",
    cluster: bool = False,
) -> Plan:
    if quick:
        tp = lat_slow = lat_fast = 1.0
        default_brokers: tuple[str, ...] = ("local", "redis")
    else:
        tp, lat_slow, lat_fast = 3.0, 4.0, 3.0
        default_brokers = ("redis", "amqp", "nats")
    if seconds is not None:
        tp = lat_slow = lat_fast = seconds
    default_contestants: tuple[str, ...] = CONTESTANTS
    if mode == "durable":  # by default, only what durable mode can run; asked for, the rest is reported skipped
        default_brokers = tuple(b for b in default_brokers if b not in NOT_DURABLE)
        default_contestants = tuple(c for c in CONTESTANTS if c not in NOT_DURABLE)
    cases = (
        Case("tp-256", 256, 0, tp),
        Case("tp-4096", 4096, 0, tp),
        Case("lat-1000", 256, 1000, lat_slow),
        Case("lat-10000", 256, 10_000, lat_fast),
    )
    chosen = brokers or default_brokers
    if cluster:
        # local:// has no cluster.
        chosen = tuple(
            b for broker in chosen for b in ((broker,) if broker == "local" else (broker, broker + CLUSTER_SUFFIX))
        )
    return Plan(
        brokers=chosen,
        contestants=contestants or default_contestants,
        cases=cases,
        reps=reps or (1 if quick else 3),
        max_events=500_000,
        quick=quick,
        mode=mode,
    )


T = TypeVar("T")


def in_turn(contestants: Iterable[T], rep: int) -> tuple[T, ...]:
    """The order `contestants` run in, in repetition `rep`: as given, reversed every other repetition. In the same
    order every time, the first of them always ran right after the previous repetition's last, on a machine whose
    load drifts."""
    ordered = tuple(contestants)
    return ordered if rep % 2 == 0 else ordered[::-1]
