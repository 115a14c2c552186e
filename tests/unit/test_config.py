"""Settings as data: defaults, and the checks across settings."""

from __future__ import annotations

import inspect
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from sidecar.client import Client
from sidecar.config import Settings


def test_default_instance_id_is_the_same_at_every_start(tmp_path: Path) -> None:
    first = Settings(socket=tmp_path / "a.sock").instance_id
    assert Settings(socket=tmp_path / "a.sock").instance_id == first
    assert first.startswith(socket.gethostname()[:64] + "-")


def test_daemons_on_one_host_get_different_default_ids(tmp_path: Path) -> None:
    ids = {Settings(socket=tmp_path / f"{name}.sock").instance_id for name in ("a", "b", "c")}
    assert len(ids) == 3


def test_durable_mode_refuses_the_derived_id() -> None:
    with pytest.raises(ValidationError, match="durable mode needs --instance-id"):
        Settings(backend="redis://127.0.0.1:6379", mode="durable")


def test_durable_mode_takes_an_id_from_flag_environment_or_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    durable = {"backend": "redis://127.0.0.1:6379", "mode": "durable"}
    assert Settings(**durable, instance_id="web-0").instance_id == "web-0"
    config = tmp_path / "syncar.toml"
    config.write_text('instance_id = "web-1"\n')
    assert Settings(**durable, config=config).instance_id == "web-1"
    monkeypatch.setenv("SYNCAR_INSTANCE_ID", "web-2")
    assert Settings(**durable).instance_id == "web-2"


def test_the_backend_is_told_every_setting_about_it() -> None:
    """The daemon and `syncar check` both build the backend's config here; check once left out all but three."""
    settings = Settings(
        backend="nats://127.0.0.1:4222",
        mode="durable",
        instance_id="web-0",
        retention=5000,
        instance_ttl=600,
        reconnect_max_delay=7,
    )
    config = settings.backend_config()
    assert (
        config.uri,
        config.instance_id,
        config.mode,
        config.retention,
        config.instance_ttl,
        config.reconnect_max_delay,
    ) == ("nats://127.0.0.1:4222", "web-0", "durable", 5000, 600.0, 7.0)
    assert config.echo is False  # the relay drops its own events: a backend may keep the broker from sending them


def test_the_default_replay_buffer_outlasts_a_client_reconnecting_and_stays_small(tmp_path: Path) -> None:
    """The promise it serves (docs/reliability.md): an app reconnecting to its restarted daemon resumes from what
    the daemon received meanwhile. Clients wait at most 5 s between attempts; at 1,000 events/s of the 1.2 KB a
    Feathers event with a 256 B record takes, that is 6 MB. An entry takes ~1.25 times its JSON in memory: at 16
    MiB, the old default, a full buffer took a 60 MB daemon's peak at full speed to 70-80."""
    settings = Settings(socket=tmp_path / "a.sock")
    client_longest_wait = inspect.signature(Client).parameters["backoff"].default[1]
    assert client_longest_wait == 5.0  # the Node plugin's too (clients/node/lib/options.js)
    assert settings.replay_bytes >= client_longest_wait * 1000 * 1200
    assert settings.replay_bytes * 1.25 <= 10 * 1024 * 1024


def test_flags_win_over_the_environment_which_wins_over_the_file_whatever_the_case_of_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As pydantic-settings did, before config.py gathered the sources itself: names match in any case."""
    config = tmp_path / "syncar.toml"
    config.write_text('KEY = "file"\ncodec = "feathers-sync"\nMax_Frame_Bytes = 4096\nhttp = "off"\n')
    monkeypatch.setenv("syncar_codec", "syncar")
    monkeypatch.setenv("SYNCAR_HTTP", "127.0.0.1:1")
    settings = Settings(socket=tmp_path / "a.sock", config=config, http="127.0.0.1:2")
    assert (settings.key, settings.codec, settings.max_frame_bytes, settings.http) == (
        "file",
        "syncar",
        4096,
        "127.0.0.1:2",
    )
    assert settings.model_fields_set == {"socket", "config", "key", "codec", "max_frame_bytes", "http"}


def test_a_key_of_the_file_that_is_no_setting_is_refused_and_a_missing_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "syncar.toml"
    config.write_text("server = 1\n")
    with pytest.raises(ValidationError, match="server\n  Extra inputs are not permitted"):
        Settings(socket=tmp_path / "a.sock", config=config)
    with pytest.raises(ValidationError, match=r"absent\.toml is not a readable file"):
        Settings(socket=tmp_path / "a.sock", config=tmp_path / "absent.toml")
