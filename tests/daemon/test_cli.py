"""The `syncar` command as a user meets it: help, version, bad settings, publish, tail, check."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar import __version__
from sidecar.config import Settings
from sidecar.paths import default_socket_path
from tests.brokers import BrokerServer, free_port
from tests.utils import REPO, RawClient, SpawnedDaemon, publish_frame, run_daemon, syncar


def test_version() -> None:
    result = syncar("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"syncar {__version__}"


def test_help_lists_every_setting_with_its_env_var() -> None:
    """Every field of Settings is a flag whose help says what it is and ends with its environment variable."""
    result = syncar("run", "--help", env={"COLUMNS": "10000"})  # no wrapping: a help on one line
    assert result.returncode == 0
    entries: dict[str, str] = {}  # flag -> its line, and the help's below it if the flag is long
    for line in result.stdout.partition("\nsettings:\n")[2].splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            entries[flag] = line
        else:
            entries[flag] += " " + line
    settings = {"--" + name.replace("_", "-"): name for name in Settings.model_fields}
    assert set(entries) == set(settings)
    for flag, name in settings.items():
        described = " ".join(entries[flag].split())
        assert " ".join(str(Settings.model_fields[name].description).split()) in described, flag
        assert described.endswith(f"[SYNCAR_{name.upper()}]"), described


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--socket-mode", "0666"], {}, "--socket-mode"),
        (["--socket-mode", "rw"], {}, "--socket-mode"),
        (["--backend", "kafka://x"], {}, "--backend"),
        (["--max-frame-bytes", "12"], {}, "--max-frame-bytes"),
        (["--log-format", "xml"], {}, "--log-format"),
        ([], {"SYNCAR_MAX_FRAME_BYTES": "lots"}, "SYNCAR_MAX_FRAME_BYTES"),
        ([], {"SYNCAR_CODEC": "protobuf"}, "SYNCAR_CODEC"),
    ],
)
def test_bad_setting_is_one_line_naming_it_and_exit_2(args: list[str], env: dict[str, str], named: str) -> None:
    result = syncar("run", *args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert "Traceback" not in result.stderr


def test_config_file_is_read_and_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "syncar.toml"
    config.write_text('key = "from-file"\ncodec = "feathers-sync"\ninstance_id = "file-id"\n')
    result = syncar("check", "--config", str(config), "--instance-id", "flag-id")
    assert result.returncode == 0, result.stderr
    assert "from-file" in result.stdout
    assert "feathers-sync" in result.stdout
    assert "flag-id" in result.stdout


def test_bad_config_file_names_it(tmp_path: Path) -> None:
    config = tmp_path / "syncar.toml"
    config.write_text("no_such_setting = 1\n")
    result = syncar("check", "--config", str(config))
    assert result.returncode == 2
    assert "no_such_setting" in result.stderr
    missing = syncar("check", "--config", str(tmp_path / "absent.toml"))
    assert missing.returncode == 2
    assert "--config" in missing.stderr


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ('key = "x"\nmax_frame_bytes = "lots"\n', "max_frame_bytes", "line 2"),
        ('key = "x"\n\nsocket_mode = "0666"\n', "socket_mode", "line 3"),
        ('key = "x"\nno_such_setting = 1\n', "no_such_setting", "line 2"),
        ('key = "x"\n[server]\nport = 1\n', "server", "line 2"),
        ('key = "x"\nmode = durable\n', "mode", "line 2, column 8"),  # not TOML at all
    ],
)
def test_config_file_error_names_the_file_the_key_and_the_line(tmp_path: Path, text: str, key: str, line: str) -> None:
    config = tmp_path / "syncar.toml"
    config.write_text(text)
    result = syncar("check", "--config", str(config))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"setting {key} in {config}, {line}:" in lines[0]


def test_a_setting_from_the_environment_is_not_blamed_on_the_file(tmp_path: Path) -> None:
    config = tmp_path / "syncar.toml"
    config.write_text("max_frame_bytes = 65536\n")
    result = syncar("check", "--config", str(config), env={"SYNCAR_MAX_FRAME_BYTES": "lots"})
    assert result.returncode == 2
    assert "--max-frame-bytes / SYNCAR_MAX_FRAME_BYTES" in result.stderr
    assert str(config) not in result.stderr


def test_help_shows_choices_and_defaults_as_a_person_writes_them() -> None:
    result = syncar("run", "--help", env={"COLUMNS": "400"})
    assert result.returncode == 0
    text = result.stdout
    for flag in (
        "--codec {syncar,feathers-sync}",
        "--mode {broadcast,durable}",
        "--log-level {debug,info,warning,error}",
        "--log-format {text,json}",
    ):
        assert f"{flag}\n" in text
    assert f"default here {default_socket_path()} [SYNCAR_SOCKET]" in text
    assert "default 86400 [SYNCAR_INSTANCE_TTL]" in text
    assert "default 1048576 (1 MiB) [SYNCAR_MAX_FRAME_BYTES]" in text
    assert "()" not in text
    assert not re.search(r"default \d+\.0\s", text), re.findall(r".*default \d+\.0\s.*", text)


@contextlib.asynccontextmanager
async def tail_of(sock: Path) -> AsyncIterator[tuple[asyncio.StreamReader, RawClient]]:
    """`syncar tail --json` on `sock`, once it prints events; and a raw client publishing next to it."""
    tail = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        "tail",
        "--socket",
        str(sock),
        "--json",
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert tail.stdout is not None
    prober = await RawClient.connect(sock, {})
    try:
        # tail is subscribed once it prints one of our probes.
        for _ in range(100):
            await prober.send(publish_frame("probe", "ready"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    if await tail.stdout.readline():
                        break
        else:
            raise AssertionError("syncar tail never printed an event")
        yield tail.stdout, prober
    finally:
        await prober.close()
        if tail.returncode is None:
            tail.terminate()
            await tail.wait()


async def test_publish_and_tail_through_a_daemon(sock: Path) -> None:
    daemon = SpawnedDaemon(sock)
    try:
        await daemon.ready()
        async with tail_of(sock) as (tail, _):
            result = await asyncio.to_thread(
                syncar, "publish", "--socket", str(sock), "messages", "created", '{"text":"from the cli"}'
            )
            assert result.returncode == 0, result.stderr
            async with asyncio.timeout(10):
                while (event := orjson.loads(await tail.readline()))["path"] == "probe":
                    pass
            assert (event["path"], event["event"], event["data"]) == ("messages", "created", {"text": "from the cli"})
    finally:
        await daemon.stop()
        daemon.kill()


async def test_tail_shows_repeated_events(sock: Path) -> None:
    """A debugging tool shows what arrives: the daemon delivers an event id twice, tail prints it twice."""
    async with run_daemon(sock), tail_of(sock) as (tail, publisher):
        for data in (1, 2):
            await publisher.send(publish_frame("messages", "created", data, id="same"))
        await publisher.send(publish_frame("messages", "created", "last"))
        seen: list[Any] = []
        async with asyncio.timeout(10):
            while not seen or seen[-1] != "last":
                event = orjson.loads(await tail.readline())
                if event["path"] == "messages":
                    seen.append(event["data"])
        assert seen == [1, 2, "last"]


@pytest.mark.parametrize("command", ["publish", "tail"])
def test_no_daemon_on_the_socket_fails_at_once_in_one_line(sock: Path, command: str) -> None:
    args = ["--timeout", "20", "messages", "created"] if command == "publish" else []
    started = time.monotonic()
    result = syncar(command, "--socket", str(sock), *args)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    # The same line from both (tail used to wait 10 s, then say "no syncar answered").
    assert result.stderr == f"syncar: {command}: cannot connect to {sock}: No such file or directory\n"
    assert elapsed < 10, f"took {elapsed:.1f}s"


def test_a_socket_path_over_the_unix_limit_is_named_with_the_limit(sock_dir: Path) -> None:
    long_path = sock_dir / ("d" * 100) / "syncar.sock"
    result = syncar("run", "--socket", str(long_path), "--http", "off")
    assert result.returncode == 3, result.stderr
    assert f"{long_path} is too long ({len(str(long_path))} bytes); a unix socket path takes at most 107 bytes" in (
        result.stderr
    ), result.stderr


async def test_publish_refused_by_the_daemon_says_so_at_once(sock: Path) -> None:
    async with run_daemon(sock):
        result = await asyncio.to_thread(syncar, "publish", "--socket", str(sock), "--timeout", "20", "", "created")
    assert result.returncode == 1, result.stderr
    assert result.stderr == ("syncar: publish: refused: invalid_frame: publish: 'path' must be a non-empty string\n")


async def _broker(client: RawClient, state: str) -> None:
    while (await client.frame_of("status", timeout=30))["broker"] != state:
        pass


async def test_publish_during_a_broker_outage_is_queued_not_failed(sock_dir: Path, redis_server: BrokerServer) -> None:
    """Exit 4, "queued": the event waits in syncar's outbox and reaches the other instance once the broker is back
    (it used to say `publish failed: ` and nothing more, exit 1)."""
    settings = {"backend": redis_server.uri, "key": f"cli-{uuid.uuid4().hex}", "mode": "durable"}
    async with (
        run_daemon(sock_dir / "a.sock", instance_id="cli-a", **settings),
        run_daemon(sock_dir / "b.sock", instance_id="cli-b", **settings),
    ):
        watcher = await RawClient.connect(sock_dir / "a.sock", {"subscribe": []})
        remote = await RawClient.connect(sock_dir / "b.sock", {})
        await asyncio.to_thread(redis_server.kill)
        try:
            await _broker(watcher, "down")
            result = await asyncio.to_thread(
                syncar,
                "publish",
                "--socket",
                str(sock_dir / "a.sock"),
                "--timeout",
                "1",
                "--id",
                "held",
                "messages",
                "created",
                '{"text":"during"}',
            )
        finally:
            await asyncio.to_thread(redis_server.start)
        assert result.returncode == 4, result.stderr
        assert result.stderr == (
            "syncar: publish: queued, not acknowledged: publish held: no ack within 1s: syncar "
            "has it in its outbox; its broker is down; it goes out when the broker takes it\n"
        )
        await _broker(watcher, "up")
        assert (await remote.frame_of("event", timeout=30))["data"] == {"text": "during"}
        await watcher.close()
        await remote.close()


async def test_publish_again_with_the_same_id_and_client_id_is_one_event(
    sock_dir: Path, redis_server: BrokerServer
) -> None:
    """A script that publishes again after exit 4 or a timeout, with the same --id and --client-id (or
    SYNCAR_CLIENT_ID), publishes one event: a receiver on another daemon gets it once, then the next. (Each run was a
    new app with a random client_id, so the same --id was another event in another scope, delivered twice:
    fhLIcxzete5GZm7Y.order-42, Yg2hZhXpH3cvDbdS.order-42.)"""
    settings = {"backend": redis_server.uri, "key": f"cli-{uuid.uuid4().hex}"}
    a, b = sock_dir / "a.sock", sock_dir / "b.sock"
    async with run_daemon(a, instance_id="cli-a", **settings), run_daemon(b, instance_id="cli-b", **settings):
        prober = await RawClient.connect(a, {})
        remote = await RawClient.connect(b, {})
        # B hears A once one of A's probes reaches it.
        for _ in range(100):
            await prober.send(publish_frame("probe", "ready"))
            with contextlib.suppress(TimeoutError):
                await remote.frame_of("event", timeout=0.2)
                break
        else:
            raise AssertionError("daemon b never heard daemon a")

        async def publish(event_id: str, data: str, *how: str, env: dict[str, str] | None = None) -> None:
            args = ["--socket", str(a), "--id", event_id, *how, "messages", "created", data]
            result = await asyncio.to_thread(syncar, "publish", *args, env=env)
            assert result.returncode == 0, result.stderr

        secret = uuid.uuid4().hex
        await publish("order-42", '{"n":42}', "--client-id", secret)
        await publish("order-42", '{"n":42}', env={"SYNCAR_CLIENT_ID": secret})
        await publish("order-43", '{"n":43}', "--client-id", secret)
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            while not events or events[-1]["data"] != {"n": 43}:
                if (event := await remote.frame_of("event"))["path"] == "messages":
                    events.append(event)
        assert [(event["id"].partition(".")[2], event["data"]) for event in events] == [
            ("order-42", {"n": 42}),
            ("order-43", {"n": 43}),
        ]
        assert events[0]["id"].partition(".")[0] == events[1]["id"].partition(".")[0], "one app, one scope"
        await prober.close()
        await remote.close()


def test_publish_help_and_readme_give_the_relays_de_duplication_window() -> None:
    from sidecar.relay import DEDUP_WINDOW
    from sidecar.seen import SeenIds

    # SeenIds(n) remembers at least the last n // 2 keys and at most the last n.
    assert SeenIds(DEDUP_WINDOW).generation == DEDUP_WINDOW // 2
    window = f"{DEDUP_WINDOW // 2:,} to {DEDUP_WINDOW:,} events"
    help_text = " ".join(syncar("publish", "--help").stdout.split())
    readme = " ".join((REPO / "README.md").read_text().split())
    assert window in help_text and "[SYNCAR_CLIENT_ID]" in help_text
    assert window in readme


@pytest.mark.parametrize("client_id", ["", "x" * 257])
def test_publish_refuses_a_client_id_the_daemon_would_in_one_line(sock: Path, client_id: str) -> None:
    for how in (["--client-id", client_id], []):
        result = syncar(
            "publish", "--socket", str(sock), *how, "messages", "created", env={"SYNCAR_CLIENT_ID": client_id}
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr == (
            "syncar: invalid --client-id / SYNCAR_CLIENT_ID: client_id must be a string of 1 to 256 characters\n"
        )


def test_publish_rejects_bad_json(sock: Path) -> None:
    result = syncar("publish", "--socket", str(sock), "messages", "created", "{not json")
    assert result.returncode == 2
    assert "JSON" in result.stderr


def test_bad_backend_uri_option_is_a_config_error() -> None:
    result = syncar("run", "--backend", "redis://127.0.0.1:1/0?no_such_option=1", "--http", "off")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "no_such_option" in result.stderr.strip().splitlines()[-1]


def test_durable_mode_without_instance_id_is_refused_in_one_line() -> None:
    result = syncar("run", "--backend", "redis://127.0.0.1:1", "--mode", "durable", "--http", "off")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--instance-id" in lines[0]


def test_check_names_the_broker_node_it_reached(nats_server: BrokerServer) -> None:
    result = syncar("check", "--backend", f"nats://127.0.0.1:{free_port()},127.0.0.1:{nats_server.port}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"broker node          127.0.0.1:{nats_server.port}" in lines  # the live one of the two
    assert any(
        line.startswith("cluster members      ") and f"127.0.0.1:{nats_server.port}" in line for line in lines
    ), result.stdout


def test_check_names_the_redis_node_it_reached(redis_server: BrokerServer) -> None:
    result = syncar("check", "--backend", redis_server.uri)
    assert result.returncode == 0, result.stderr
    assert f"broker node          127.0.0.1:{redis_server.port}" in result.stdout.splitlines(), result.stdout


@pytest.mark.cluster
@pytest.mark.redis
def test_check_names_the_redis_cluster_node_and_members(redis_cluster: Any) -> None:
    down = f"127.0.0.1:{free_port()}"
    result = syncar("check", "--backend", f"redis+cluster://{down},{redis_cluster.uri.partition('//')[2]}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    members = ", ".join(sorted(node.address for node in redis_cluster.nodes.values()))
    assert f"cluster members      {members}" in lines, result.stdout
    node = next(line for line in lines if line.startswith("broker node")).split()[-1]
    assert node in members  # a live one, not the one down


@pytest.mark.rabbitmq
def test_check_names_the_rabbitmq_node_it_reached_of_a_host_list(rabbitmq_server: BrokerServer) -> None:
    uri = f"amqp://guest:guest@127.0.0.1:{free_port()},127.0.0.1:{rabbitmq_server.port}/"
    result = syncar("check", "--backend", uri)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"broker node          127.0.0.1:{rabbitmq_server.port}" in lines, result.stdout  # the live one of the two
    assert not any(line.startswith("cluster members") for line in lines)  # RabbitMQ does not announce them


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("nats://127.0.0.1:1?foo=1", "nats: unknown URI option 'foo'"),
        ("redis://127.0.0.1:1/?tls=1", "redis: unknown URI option 'tls'"),
        ("redis://127.0.0.1:1/abc", "redis: invalid URI: the path is a database number"),  # redis-py took db 0
        ("127.0.0.1:6379", "no scheme: the URI has no '://'"),
    ],
)
@pytest.mark.parametrize("command", ["check", "run"])
def test_an_unusable_uri_exits_2_naming_the_setting(sock: Path, command: str, uri: str, says: str) -> None:
    """An invalid setting like any other, before any broker is asked (check said exit 1, run exit 3)."""
    result = syncar(command, "--socket", str(sock), "--http", "off", "--backend", uri)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("syncar: invalid setting --backend / SYNCAR_BACKEND: "), last
    assert says in last
    assert not sock.exists()


@pytest.mark.parametrize(
    ("args", "unknown"),
    [
        (["run", "--backnd", "redis://x"], "--backnd redis://x"),
        (["run", "--back", "local://x"], "--back local://x"),  # no abbreviations
        (["publish", "--clientid", "x", "messages", "created", "{}"], "--clientid {}"),
    ],
)
def test_an_unknown_flag_is_told_with_the_commands_usage(args: list[str], unknown: str) -> None:
    result = syncar(*args)
    assert result.returncode == 2
    assert f"syncar {args[0]}: error: unrecognized arguments: {unknown}" in result.stderr
    assert f"usage: syncar {args[0]} " in result.stderr


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "soon"])
@pytest.mark.parametrize("command", ["publish", "health", "peers"])
def test_a_timeout_is_a_number_of_seconds_above_0(command: str, timeout: str) -> None:
    positional = ["messages", "created"] if command == "publish" else []
    result = syncar(command, "--timeout", timeout, *positional)
    assert result.returncode == 2
    assert f"syncar {command}: error: argument --timeout: " in result.stderr


async def test_tail_tells_a_gap_on_stderr(sock: Path) -> None:
    """A stand-in daemon that welcomes tail and tells a gap: events that will not come are said, not only counted."""

    gone = asyncio.Event()

    async def daemon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readline()  # hello
            welcome = {"type": "welcome", "version": 1, "epoch": "e1", "seq": 0, "broker": "up"}
            gap = {"type": "gap", "origin": "b-1", "missed": 3, "first": 5, "last": 7, "run": "r1", "reason": "lost"}
            writer.write(orjson.dumps(welcome) + b"\n" + orjson.dumps(gap) + b"\n")
            await writer.drain()
            await reader.read()  # until tail goes
        finally:
            writer.close()
            gone.set()

    server = await asyncio.start_unix_server(daemon, path=str(sock))
    tail = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "tail", "--socket", str(sock), cwd=REPO, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert tail.stderr is not None
        line = await asyncio.wait_for(tail.stderr.readline(), 30)
        assert line.decode() == (
            "syncar: tail: gap: 3 events of b-1 never reached the daemon (seq 5-7 of its run r1: lost)\n"
        )
    finally:
        tail.terminate()
        await tail.wait()
        await asyncio.wait_for(gone.wait(), 10)
        server.close()
        await server.wait_closed()
