"""The `syncar` commands: argv -> Settings -> logging -> the daemon or a tool. Maps failures to exit codes.

Each command imports the modules only it needs, when it runs, so `syncar --help` and the local backend stay light.
`sidecar.cli.main` is the entry point; it imports this module.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import gc
import logging
import os
import signal
import sys
import typing
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import orjson
from pydantic import ValidationError

from sidecar import __version__
from sidecar.config import MiB, Settings, env_of, flag_of, line_in_config, redact_uri
from sidecar.errors import ConfigError, StartupError
from sidecar.logging import configure as configure_logging

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_STARTUP = 3
EXIT_QUEUED = 4  # publish: syncar holds the event, the broker has not acknowledged it (yet)

DESCRIPTION = """\
syncar relays service events (Feathers created/updated/patched/removed and
custom events) between the instances of an app. Each instance's apps talk to
their syncar over a unix socket; syncars talk to each other through Redis,
RabbitMQ or NATS, or, with the default local:// backend, just relay between
the apps on one host.

Every setting is a flag and a SYNCAR_* environment variable
(--socket-mode is SYNCAR_SOCKET_MODE); flags win over the environment,
which wins over the --config TOML file."""


def _choices(annotation: Any) -> list[str]:
    """The values an enumerated setting takes (a Literal or an Enum, maybe `| None`); empty for the others."""
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(member.value) for member in annotation]
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return [str(arg) for arg in args]
    return _choices(args[0]) if len(args) == 1 else []


def _shown(name: str, value: Any) -> str:
    """A default as a person writes it on the command line: 0660, 86400, 1048576 (1 MiB); nothing for none."""
    if value is None or value == ():
        return ""
    if name == "socket_mode":
        return f"{value:04o}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and name.endswith("_bytes") and value >= MiB and value % MiB == 0:
        return f"{value} ({value // MiB} MiB)"
    return str(value)


def _add_settings(parser: argparse.ArgumentParser, fields: Sequence[str] | None = None) -> None:
    group = parser.add_argument_group("settings")
    for name, field in Settings.model_fields.items():
        if fields is not None and name not in fields:
            continue
        choices = _choices(field.annotation)
        metavar = "{" + ",".join(choices) + "}" if choices else name.split("_")[-1].upper()
        # A computed default (the socket, the instance id) is shown as it comes out on this machine, for this user.
        default = _shown(name, field.get_default(call_default_factory=True, validated_data={}))
        here = " here" if field.default_factory is not None else ""
        shown = f"; default{here} {default}" if default else ""
        # A yes/no setting is a switch: --require-broker, or --no-require-broker over the environment.
        how: dict[str, Any] = (
            {"action": argparse.BooleanOptionalAction} if field.annotation is bool else {"metavar": metavar}
        )
        group.add_argument(
            flag_of(name),
            dest=name,
            default=argparse.SUPPRESS,
            **how,
            help=f"{field.description}{shown} [{env_of(name)}]",
        )


def load_settings(args: argparse.Namespace) -> Settings:
    """Build Settings from the flags given (the rest come from env and file).

    Raises:
        ConfigError: a value is invalid; the message names the setting.
    """
    given = {name: value for name, value in vars(args).items() if name in Settings.model_fields}
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if first["loc"]:
            name = str(first["loc"][0])
        else:  # a check across settings: its message starts with the setting it is about
            name, _, message = message.partition(": ")
        if first["type"] == "extra_forbidden":
            message = "no such setting; the keys are the flags' names with underscores, e.g. max_frame_bytes"
        located = line_in_config(name, given)
        if located is not None:
            where = f"{name} in {located[0]}, line {located[1]}"
        else:
            where = f"{flag_of(name)} / {env_of(name)}" if name in Settings.model_fields else name
        got = first.get("input")
        if name in ("backend", "backend_file") and isinstance(got, str):
            got = redact_uri(got)
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        raise ConfigError(f"invalid setting {where}: {message}{shown}") from None
    except (OSError, ValueError) as exc:  # an unreadable or malformed --config file
        raise ConfigError(f"invalid setting --config: {exc}") from None


def _run_async(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency everywhere it builds
        return asyncio.run(main())
    return uvloop.run(main())


def cmd_run(args: argparse.Namespace) -> int:
    from sidecar.allocator import keep_large_buffers
    from sidecar.daemon import Daemon

    settings = load_settings(args)
    configure_logging(settings.log_level, settings.log_format)
    if "backend" in vars(args) and redact_uri(args.backend) != args.backend:
        log.warning(
            "the broker password in --backend can be read by every local user (ps, /proc/PID/cmdline); "
            "put the URI in a file given with --backend-file, or in SYNCAR_BACKEND"
        )

    async def main() -> int:
        daemon = Daemon(settings)
        try:
            await daemon.start()
            # Everything made so far (modules, settings, connections) lives as long as the process: keep it out of
            # the collector's full passes, which otherwise walk it all and stall the relay for milliseconds. Then
            # collect again: `sidecar.cli.main` paused it for the start, and frozen, it has nothing young to walk.
            gc.freeze()
            gc.enable()
            keep_large_buffers()
            try:
                await daemon.serve()
            finally:
                await daemon.shutdown()
        except StartupError as exc:
            log.error("cannot start: %s", exc)
            return EXIT_STARTUP
        return EXIT_OK

    return _run_async(main)


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

    return _run_async(main)


def cmd_publish(args: argparse.Namespace) -> int:
    from sidecar.client import AckTimeout, Client, ClientError, PublishRefused, checked_client_id

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

    return _run_async(main)


def cmd_tail(args: argparse.Namespace) -> int:
    from sidecar.client import Client, ClientError

    settings = load_settings(args)
    subscribe = [{"path": args.path, "event": args.event}]

    async def main() -> int:
        # No de-duplication: a debugging tool shows what arrives, repeats included.
        async with Client(settings.socket, name="syncar-tail", subscribe=subscribe, dedup=False) as client:
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
        return _run_async(main)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="syncar", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"syncar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon", description="Run the daemon in the foreground.")
    _add_settings(run)
    run.set_defaults(handler=cmd_run)

    check = commands.add_parser(
        "check",
        help="validate the settings and connect to the broker",
        description="Print the effective settings, then connect to the broker once. "
        "Exit 0 if it answered, 1 if not, 2 if a setting is invalid.",
    )
    _add_settings(check)
    check.set_defaults(handler=cmd_check)

    publish = commands.add_parser(
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
        "--timeout", type=float, default=10.0, help="seconds to wait for syncar, then for the ack (default 10)"
    )
    _add_settings(publish, ["socket", "config"])
    publish.set_defaults(handler=cmd_publish)

    tail = commands.add_parser(
        "tail",
        help="print events as they flow through a running daemon",
        description="Print every event the daemon delivers, like redis-cli monitor, "
        "repeats included (apps drop an event whose origin and id they saw).",
    )
    tail.add_argument("--path", default="*", help="only services matching this pattern (default *)")
    tail.add_argument("--event", default="*", help="only events matching this pattern (default *)")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    _add_settings(tail, ["socket", "config"])
    tail.set_defaults(handler=cmd_tail)

    health = commands.add_parser(
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
    health.add_argument("--timeout", type=float, default=2.0, help="seconds to wait (default 2)")
    _add_settings(health, ["http", "config"])
    health.set_defaults(handler=cmd_health)

    peers = commands.add_parser(
        "peers",
        help="list the daemons a running daemon hears on its key",
        description="GET /peers from the daemon's --http address: every daemon heard on the key's "
        "announcements (version, codec, mode, last sequence number, sequence lag, when last heard), "
        "this one first. Exit 0 if it answers, else 1.",
    )
    peers.add_argument("--json", action="store_true", help="the JSON of GET /peers, for programs")
    peers.add_argument("--timeout", type=float, default=2.0, help="seconds to wait (default 2)")
    _add_settings(peers, ["http", "config"])
    peers.set_defaults(handler=cmd_peers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command `argv` names. Called with the cyclic collector paused (`sidecar.cli.main`): `run` turns it on
    once the daemon listens, every other command at once."""
    args = build_parser().parse_args(argv)
    if args.handler is not cmd_run:
        gc.enable()
        # Every command but `run` (which flushes first) ends on SIGTERM as on Ctrl-C. As the pid 1 of a container
        # it must handle the signal, or the kernel drops it and `docker stop` kills it after its whole timeout.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"syncar: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    return code
