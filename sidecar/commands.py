"""The `syncar` command line: argv -> Settings -> logging -> the daemon (`run`, here) or a tool (`sidecar.tools`).
Maps failures to exit codes (`sidecar.commands_common`).

Each command imports the modules only it needs, when it runs, so `syncar --help` and the local backend stay light.
`sidecar.cli.main` is the entry point; it imports this module.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from sidecar import __version__
from sidecar.commands_common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_STARTUP,
    add_settings,
    load_settings,
    run_async,
)
from sidecar.config import env_of, redact_uri
from sidecar.errors import ConfigError, StartupError
from sidecar.logging import configure as configure_logging
from sidecar.tools import add_tools

log = logging.getLogger(__name__)

DESCRIPTION = """\
syncar relays service events (Feathers created/updated/patched/removed and
custom events) between the instances of an app. Each instance's apps talk to
their syncar over a unix socket; syncars talk to each other through Redis,
RabbitMQ or NATS, or, with the default local:// backend, just relay between
the apps on one host.

Every setting is a flag and a SYNCAR_* environment variable
(--socket-mode is SYNCAR_SOCKET_MODE); flags win over the environment,
which wins over the --config TOML file."""


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
        return EXIT_OK if daemon.failure is None else EXIT_FAILURE

    return run_async(main)


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: --back would be --backend today and an error once another flag starts the same way.
    parser = argparse.ArgumentParser(
        prog="syncar",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"syncar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        command = commands.add_parser(name, allow_abbrev=False, **kwargs)
        command.set_defaults(parser=command)  # main() tells a flag it does not know with this command's usage
        return command

    run = add_command("run", help="run the daemon", description="Run the daemon in the foreground.")
    add_settings(run)
    run.set_defaults(handler=cmd_run)
    add_tools(add_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command `argv` names. Called with the cyclic collector paused (`sidecar.cli.main`): `run` turns it on
    once the daemon listens, every other command at once."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # argparse would say it with `syncar`'s usage, not the command's that lists its flags
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.handler is not cmd_run:
        gc.enable()
        # Every command but `run` (which flushes first) ends on SIGTERM as on Ctrl-C. As the pid 1 of a container
        # it must handle the signal, or the kernel drops it and `docker stop` kills it after its whole timeout.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        from backends.base import BackendConfigError  # loaded by then: only a backend raises it

        where = f"invalid setting --backend / {env_of('backend')}: " if isinstance(exc, BackendConfigError) else ""
        print(f"syncar: {where}{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    return code
