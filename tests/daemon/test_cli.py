"""The `syncar` command as a user meets it: help, version, bad settings, publish, tail, check."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from sidecar import __version__
from sidecar.paths import default_socket_path
from tests.utils import REPO, RawClient, SpawnedDaemon, publish_frame


def syncar(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True, text=True, timeout=30,
                          cwd=REPO, env={**os.environ, **(env or {})})


def test_version() -> None:
    result = syncar("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"syncar {__version__}"


def test_help_lists_every_setting_with_its_env_var() -> None:
    result = syncar("run", "--help")
    assert result.returncode == 0
    for flag, env in (("--socket", "SYNCAR_SOCKET"), ("--backend", "SYNCAR_BACKEND"),
                      ("--socket-mode", "SYNCAR_SOCKET_MODE"), ("--instance-id", "SYNCAR_INSTANCE_ID"),
                      ("--max-frame-bytes", "SYNCAR_MAX_FRAME_BYTES"), ("--log-level", "SYNCAR_LOG_LEVEL"),
                      ("--log-format", "SYNCAR_LOG_FORMAT")):
        assert flag in result.stdout
        assert env in result.stdout


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--socket-mode", "0666"], {}, "--socket-mode"),
    (["--socket-mode", "rw"], {}, "--socket-mode"),
    (["--backend", "kafka://x"], {}, "--backend"),
    (["--max-frame-bytes", "12"], {}, "--max-frame-bytes"),
    (["--log-format", "xml"], {}, "--log-format"),
    ([], {"SYNCAR_MAX_FRAME_BYTES": "lots"}, "SYNCAR_MAX_FRAME_BYTES"),
    ([], {"SYNCAR_CODEC": "protobuf"}, "SYNCAR_CODEC"),
])
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


@pytest.mark.parametrize(("text", "key", "line"), [
    ('key = "x"\nmax_frame_bytes = "lots"\n', "max_frame_bytes", "line 2"),
    ('key = "x"\n\nsocket_mode = "0666"\n', "socket_mode", "line 3"),
    ('key = "x"\nno_such_setting = 1\n', "no_such_setting", "line 2"),
    ('key = "x"\n[server]\nport = 1\n', "server", "line 2"),
    ('key = "x"\nmode = durable\n', "mode", "line 2, column 8"),  # not TOML at all
])
def test_config_file_error_names_the_file_the_key_and_the_line(tmp_path: Path, text: str, key: str,
                                                                line: str) -> None:
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
    for flag in ("--codec {syncar,feathers-sync}", "--mode {broadcast,durable}",
                 "--log-level {debug,info,warning,error}", "--log-format {text,json}"):
        assert f"{flag}\n" in text
    assert f"default here {default_socket_path()} [SYNCAR_SOCKET]" in text
    assert "default 86400 [SYNCAR_INSTANCE_TTL]" in text
    assert "default 1048576 (1 MiB) [SYNCAR_MAX_FRAME_BYTES]" in text
    assert "()" not in text
    assert not re.search(r"default \d+\.0\s", text), re.findall(r".*default \d+\.0\s.*", text)


async def test_publish_and_tail_through_a_daemon(sock: Path) -> None:
    daemon = SpawnedDaemon(sock)
    tail = None
    try:
        await daemon.ready()
        tail = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "tail", "--socket", str(sock), "--json",
            stdout=asyncio.subprocess.PIPE, cwd=REPO)
        assert tail.stdout is not None
        prober = await RawClient.connect(sock, {})
        # tail is subscribed once it prints one of our probes.
        for _ in range(100):
            await prober.send(publish_frame("probe", "ready"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    if await tail.stdout.readline():
                        break
        else:
            raise AssertionError("syncar tail never printed an event")
        result = await asyncio.to_thread(syncar, "publish", "--socket", str(sock), "messages", "created",
                                         '{"text":"from the cli"}')
        assert result.returncode == 0, result.stderr
        async with asyncio.timeout(10):
            while (event := orjson.loads(await tail.stdout.readline()))["path"] == "probe":
                pass
        assert (event["path"], event["event"], event["data"]) == ("messages", "created", {"text": "from the cli"})
        await prober.close()
    finally:
        if tail is not None and tail.returncode is None:
            tail.terminate()
            await tail.wait()
        await daemon.stop()
        daemon.kill()


def test_publish_without_daemon_fails_cleanly(sock: Path) -> None:
    result = syncar("publish", "--socket", str(sock), "--timeout", "1", "messages", "created", "{}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "publish failed" in result.stderr


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
