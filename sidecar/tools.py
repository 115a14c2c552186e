"""The `syncar` tools beside the daemon: `check` (the settings and the broker), `publish` and `tail` (over a running
daemon's socket), `health` and `peers` (over its `--http` address, `sidecar.probe`): each one's arguments and what it
does. Each imports the modules only it needs, when it runs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import orjson

from sidecar.commands_common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_QUEUED,
    add_settings,
    load_settings,
    run_async,
)
from sidecar.config import Settings, env_of, redact_uri
from sidecar.errors import ConfigError
from sidecar.logging import configure as configure_logging

Handler = Callable[[argparse.Namespace], int]


def cmd_check(args: argparse.Namespace) -> int:
    from backends import load_backend
    from backends.base import BackendError

    settings = load_settings(args)
    # Broker libraries log their own view of a failure; ours is the one line printed below.
    configure_logging("error", settings.log_format)
    if settings.signing_key_file is not None:
        from sidecar.signing import load_keys

        print(f"signing keys         {len(load_keys(settings.signing_key_file))}")
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name == "socket_mode":
            value = f"{value:04o}"
        elif name == "backend":
            value = redact_uri(value)
        print(f"{name:20} {value}")

    async def main() -> int:
        backend = load_backend(settings.backend, settings.mode)(settings.backend_config())
        try:
            await backend.start()
            node, members = backend.node, backend.members
        except ConfigError:
            raise  # an unusable URI: exit 2, as every invalid setting (sidecar.commands.main)
        except BackendError as exc:
            print(f"syncar: broker: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        finally:
            await backend.close()
        print(f"broker               reachable ({backend.name})")
        if node is not None:
            print(f"broker node          {node}")
        if members:
            print(f"cluster members      {', '.join(members)}")
        return EXIT_OK

    return run_async(main)


def cmd_publish(args: argparse.Namespace) -> int:
    from sidecar.client import AckTimeout, Client, ClientError, PublishRefused
    from sidecar.client_types import checked_client_id

    settings = load_settings(args)
    try:
        data = orjson.loads(args.data)
        context = orjson.loads(args.context) if args.context is not None else None
    except orjson.JSONDecodeError as exc:
        print(f"syncar: publish: DATA and --context must be JSON: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    # Not a daemon setting: the flag, else its variable (as the settings are read), else a new app every run.
    client_id = args.client_id if args.client_id is not None else os.environ.get(env_of("client_id"))
    try:
        client_id = None if client_id is None else checked_client_id(client_id)
    except ValueError as exc:
        print(f"syncar: invalid --client-id / {env_of('client_id')}: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    async def main() -> int:
        client = Client(settings.socket, name="syncar-publish", reconnect=False, client_id=client_id)
        try:
            await client.connect(timeout=args.timeout)
            await client.publish(args.path, args.event, data, context, id=args.id, ack=True, timeout=args.timeout)
        except AckTimeout as exc:
            if not exc.queued:
                print(f"syncar: publish: not sent: {exc}", file=sys.stderr)
                return EXIT_FAILURE
            print(
                f"syncar: publish: queued, not acknowledged: {exc}; it goes out when the broker takes it",
                file=sys.stderr,
            )
            return EXIT_QUEUED
        except PublishRefused as exc:
            print(f"syncar: publish: refused: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        except ClientError as exc:
            print(f"syncar: publish: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        finally:
            await client.close()
        return EXIT_OK

    return run_async(main)


def cmd_tail(args: argparse.Namespace) -> int:
    from sidecar.client import Client, ClientError
    from sidecar.client_types import Gap

    settings = load_settings(args)
    subscribe = [{"path": args.path, "event": args.event}]

    # Events that went by on the bus and will not come, on stderr: stdout stays events only, for programs.
    def gap(gap: Gap) -> None:
        print(
            f"syncar: tail: gap: {gap.missed} events of {gap.origin} never reached the daemon "
            f"(seq {gap.first}-{gap.last} of its run {gap.run}: {gap.reason})",
            file=sys.stderr,
            flush=True,
        )

    async def main() -> int:
        # No de-duplication: a debugging tool shows what arrives, repeats included.
        async with Client(
            settings.socket,
            name="syncar-tail",
            subscribe=subscribe,
            dedup=False,
            on_gap=gap,  # a resume gap the client logs itself
        ) as client:
            async for event in client:
                if args.json:
                    line = orjson.dumps(
                        {
                            "seq": event.seq,
                            "id": event.id,
                            "origin": event.origin,
                            "path": event.path,
                            "event": event.event,
                            "data": event.data,
                            "context": event.context,
                        }
                    ).decode()
                else:
                    line = f"{event.seq} {event.origin} {event.path} {event.event} {orjson.dumps(event.data).decode()}"
                print(line, flush=True)
        return EXIT_OK

    try:
        return run_async(main)
    except ClientError as exc:
        print(f"syncar: tail: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_health(args: argparse.Namespace) -> int:
    from sidecar import probe

    route = "readyz/broker" if args.broker else "readyz" if args.ready else "healthz"
    return probe.health(load_settings(args), route, args.timeout)


def cmd_peers(args: argparse.Namespace) -> int:
    from sidecar import probe

    return probe.peers(load_settings(args), args.json, args.timeout)


def add_tools(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Each tool as a subcommand, made with `add_parser` (the `add_parser` of `syncar`'s subcommands)."""
    check = add_parser(
        "check",
        help="validate the settings and connect to the broker",
        description="Print the effective settings, then connect to the broker once. "
        "Exit 0 if it answered, 1 if not, 2 if a setting is invalid.",
    )
    add_settings(check)
    check.set_defaults(handler=cmd_check)

    publish = add_parser(
        "publish",
        help="publish one event through a running daemon",
        description="Publish one event and wait until the broker accepted it. Exit 0: "
        "the broker accepted it; 1: not published (refused by syncar, or no "
        "syncar on the socket); 2: bad DATA or --context; 4: queued, not "
        "acknowledged: syncar holds it in its outbox (its broker is down or "
        "slow) and sends it when the broker takes it, so do not publish it "
        "again, unless with the same --id and the same --client-id (each run "
        "without --client-id is a new app, and the same --id from another app "
        "is another event).",
    )
    publish.add_argument("path", help="service path, e.g. messages")
    publish.add_argument("event", help="event name, e.g. created")
    publish.add_argument("data", nargs="?", default="null", help="event data as JSON (default null)")
    publish.add_argument("--context", help="hook context as JSON")
    publish.add_argument("--id", help="event id (default: random)")
    publish.add_argument(
        "--client-id",
        metavar="SECRET",
        help="the app this run publishes as (1-256 characters; default: a new random one every run). "
        "The same --id with the same --client-id, through the same daemon, is one event: the "
        "other daemons drop it if it comes again within their de-duplication window (the last "
        "50,000 to 100,000 events each received from the bus), the apps on this one by its "
        "origin and id. A secret: it scopes the ids only this app can publish; give it in the "
        f"environment on a shared host, where ps shows arguments [{env_of('client_id')}]",
    )
    publish.add_argument(
        "--timeout", type=seconds, default=10.0, help="seconds to wait for syncar, then for the ack (default 10)"
    )
    add_settings(publish, ["socket", "config"])
    publish.set_defaults(handler=cmd_publish)

    tail = add_parser(
        "tail",
        help="print events as they flow through a running daemon",
        description="Print every event the daemon delivers, like redis-cli monitor, "
        "repeats included (apps drop an event whose origin and id they saw).",
    )
    tail.add_argument("--path", default="*", help="only services matching this pattern (default *)")
    tail.add_argument("--event", default="*", help="only events matching this pattern (default *)")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    add_settings(tail, ["socket", "config"])
    tail.set_defaults(handler=cmd_tail)

    health = add_parser(
        "health",
        help="ask a running daemon whether it is alive (or ready)",
        description="GET /healthz (/readyz with --ready, /readyz/broker with --broker) "
        "from the daemon's --http address; exit 0 if it answers 200, else 1. "
        "For container HEALTHCHECKs.",
    )
    health.add_argument(
        "--ready",
        action="store_true",
        help="ask /readyz: the socket is listening and the daemon is not shutting down (the broker "
        "may be away: local delivery goes on, publishes wait in the outbox)",
    )
    health.add_argument("--broker", action="store_true", help="ask /readyz/broker: ready, and the broker connected")
    _asks_http(health, cmd_health)

    peers = add_parser(
        "peers",
        help="list the daemons a running daemon hears on its key",
        description="GET /peers from the daemon's --http address: every daemon heard on the key's "
        "announcements (version, codec, mode, last sequence number, sequence lag, when last heard), "
        "this one first. Exit 0 if it answers, else 1.",
    )
    peers.add_argument("--json", action="store_true", help="the JSON of GET /peers, for programs")
    _asks_http(peers, cmd_peers)


def seconds(text: str) -> float:
    """A --timeout: a number of seconds above 0 (argparse says so, with the command's usage, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be above 0 seconds: {text!r}")
    return value


def _asks_http(parser: argparse.ArgumentParser, handler: Handler) -> None:
    """What the tools that ask the daemon's `--http` address share, after their own flags: how long they wait, the
    settings that find the address, and their handler."""
    parser.add_argument("--timeout", type=seconds, default=2.0, help="seconds to wait (default 2)")
    add_settings(parser, ["http", "config"])
    parser.set_defaults(handler=handler)
