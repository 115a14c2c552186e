"""Settings: flags over `SYNCAR_*` environment over an optional TOML file, validated once at startup.

The three sources are gathered here (`gathered`, some forty lines) and validated by pydantic alone. pydantic-settings
did the same and cost 1.2 MiB of resident memory and ~30 ms of CPU at every start, measured after the imports the
daemon needs anyway (docs/benchmarks/history.md, "Idle memory, start and peak memory: what was cut"), against budgets of
40 MiB idle and 300 ms to a listening socket.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backends import scheme_of
from backends.base import BackendConfig, Mode
from sidecar.backoff import DEFAULT_CAP, DEFAULT_INITIAL
from sidecar.errors import ConfigError
from sidecar.paths import default_socket_path

if TYPE_CHECKING:  # imported by _read_toml, only when there is a --config file: ~2.5 ms of CPU at every start
    import tomllib

MiB = 1024 * 1024


def default_instance_id(socket_path: Path) -> str:
    """The host (or pod) name and a short hash of the socket path: the same at every start of this daemon.

    Receivers drop repeats by `(origin, id)`, so the id must survive a restart; daemons on one host differ by
    their socket, which two live daemons cannot share.
    """
    digest = hashlib.sha256(os.fsencode(socket_path.resolve())).hexdigest()[:6]
    return f"{socket.gethostname()[:64]}-{digest}"


class Settings(BaseModel):
    """Everything the daemon and the CLI tools can be told. Each field is a `--flag` and a `SYNCAR_*` variable.

    `Settings(**given)` takes `given` (the flags) over the environment over the TOML file of `config`, as
    `gathered` says; the defaults are validated too.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    def __init__(self, **given: Any) -> None:
        super().__init__(**gathered(given))

    socket: Path = Field(
        default_factory=default_socket_path,
        description="unix socket the apps connect to: "
        "/run/syncar/syncar.sock as root, else $XDG_RUNTIME_DIR/syncar/syncar.sock, else "
        "/tmp/syncar-$UID/syncar.sock",
    )
    socket_mode: int = Field(0o660, description="file mode of the socket, octal; never world-writable")
    backend: str = Field(
        "local://",
        description="broker URI: local://, redis://, rediss://, redis+sentinel://, redis+cluster:// (and rediss+), "
        "amqp://, amqps://, nats://, tls://",
    )
    backend_file: Path | None = Field(
        None, description="file holding the broker URI, for credentials mounted as a secret; wins over --backend"
    )
    key: str = Field("feathers-sync", min_length=1, description="channel, exchange or subject on the broker")
    codec: Literal["syncar", "feathers-sync"] = Field("syncar", description="message format on the broker")
    mode: Mode = Field(
        Mode.BROADCAST,
        description="broadcast: broker pub/sub, at most once across outages (like feathers-sync); "
        "durable: a persistent per-instance queue, at least once plus de-duplication",
    )
    retention: int = Field(
        1_000_000, ge=1000, description="durable mode: events the broker keeps per key for instances that are away"
    )
    instance_ttl: float = Field(
        86_400.0,
        ge=60,
        description="durable mode: seconds after which the broker forgets "
        "an instance that has not come back (its queue or consumer is deleted)",
    )
    instance_id: str = Field(
        default_factory=lambda data: default_instance_id(data.get("socket") or default_socket_path()),
        min_length=1,
        max_length=200,
        description="this daemon's name on the bus, the same across restarts: the "
        "host name and a hash of the socket path unless given; durable mode needs it given",
    )
    require_broker: bool = Field(
        False,
        description="refuse to start (exit 3) while the broker cannot be reached, "
        "instead of starting without it, serving the local apps and connecting in the "
        "background",
    )
    reconnect_max_delay: float = Field(
        DEFAULT_CAP,
        ge=DEFAULT_INITIAL,
        le=3600,
        description="longest wait in "
        "seconds between two attempts to reach the broker; the first come within "
        "0.1 s and the waits double up to this",
    )
    announce_interval: float = Field(
        5.0,
        ge=0.05,
        le=3600,
        description="seconds between two announcements of this daemon on <key>.peers (`syncar peers`); a peer "
        "is gone after 3 missed, and 3 intervals without hearing any, not even our own, make the subscriptions again",
    )
    max_frame_bytes: int = Field(1 * MiB, ge=1024, le=256 * MiB, description="longest line a client may send")
    max_clients: int = Field(
        4096,
        ge=1,
        description="connections accepted at once; more are refused; lowered, with a warning, to what the file "
        "descriptor limit serves",
    )
    max_patterns: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description="patterns a client may list in "
        "hello.subscribe (each path and event at most 256 characters, at most 8 of them with "
        "a wildcard inside a name); a longer list gets an error",
    )
    client_queue_bytes: int = Field(
        8 * MiB, ge=64 * 1024, description="unsent bytes per client before it is disconnected as too slow"
    )
    replay_events: int = Field(10_000, ge=0, description="events kept for clients that reconnect with `resume`")
    replay_bytes: int = Field(
        8 * MiB,
        ge=0,
        description="bytes kept for clients that reconnect with `resume` (of the events' JSON); the default holds "
        "~7 s of 1.2 KB events at 1,000/s, longer than a client waits between two reconnect attempts (5 s at "
        "most), and costs ~10 MiB when full",
    )
    outbox_bytes: int = Field(
        64 * MiB,
        ge=1024,
        description="memory the publishes waiting for the broker may take (each counts its JSON twice, once with "
        "the syncar codec, plus 512 bytes, 256 more with an ack)",
    )
    allow_uids: tuple[int, ...] = Field(
        (),
        description="comma-separated uids allowed to connect (checked with SO_PEERCRED); empty: anyone the "
        "socket's mode lets in",
    )
    allow_gids: tuple[int, ...] = Field(
        (), description="comma-separated gids allowed to connect; a peer passes if its uid or its gid is allowed"
    )
    client_rate: float = Field(0.0, ge=0, description="publishes per second per client (token bucket); 0: no limit")
    client_burst: int = Field(1000, ge=1, description="publishes a client may send at once above --client-rate")
    signing_key_file: Path | None = Field(
        None,
        description="file of HMAC-SHA256 keys, one per line: the first "
        "signs, all verify; unsigned or forged broker messages are dropped",
    )
    signing_window: float = Field(
        60.0,
        ge=2,
        description="seconds a signed message stays acceptable, counted from "
        "when the broker took it (durable mode) or from now (broadcast); older or replayed "
        "ones are dropped. At least 2: signatures carry whole seconds",
    )
    shutdown_timeout: float = Field(10.0, ge=0, description="seconds to flush the outbox and clients on SIGTERM")
    http: str = Field(
        "127.0.0.1:9464", description="ADDR:PORT for /healthz, /readyz, /readyz/broker, /metrics and /peers, or 'off'"
    )
    tracing: bool = Field(
        False,
        description="emit OpenTelemetry spans, a publish and a receive span per broker message, exported with "
        "OTLP over HTTP (needs pip install 'syncar[otel]')",
    )
    tracing_endpoint: str | None = Field(
        None,
        pattern=r"^https?://",
        description="with --tracing: the OTLP/HTTP traces URL (default: OpenTelemetry's "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318/v1/traces)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["text", "json"] = Field("text", description="log line format")
    config: Path | None = Field(None, description="TOML file with any of these settings")

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return int(value, 8)
            except ValueError:
                raise ValueError(f"{value!r} is not an octal file mode such as 0660") from None
        return value

    @field_validator("socket_mode")
    @classmethod
    def _not_world_writable(cls, value: int) -> int:
        if not 0 <= value <= 0o777:
            raise ValueError(f"{value:o} is not a file mode")
        if value & 0o002:
            raise ValueError(f"{value:04o} is world-writable; any local user could inject events")
        if not value & 0o600 == 0o600:
            raise ValueError(f"{value:04o} does not let the owner read and write the socket")
        return value

    @field_validator("allow_uids", "allow_gids", mode="before")
    @classmethod
    def _id_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return tuple(int(part) for part in value.replace(" ", "").split(",") if part)
            except ValueError:
                raise ValueError(f"{value!r} is not a comma-separated list of numeric ids") from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _backend_from_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("backend_file"):
            try:
                data["backend"] = Path(data["backend_file"]).read_text().strip()
            except OSError as exc:
                raise ValueError(f"backend_file: cannot read {data['backend_file']}: {exc.strerror}") from None
        return data

    @model_validator(mode="after")
    def _needs_syncar_codec(self) -> Settings:
        if self.signing_key_file is not None and self.codec != "syncar":
            raise ValueError(
                "signing_key_file: signed messages need --codec syncar (feathers-sync apps could not read them)"
            )
        if self.mode is Mode.DURABLE and self.codec != "syncar":
            raise ValueError("mode: durable needs --codec syncar (feathers-sync apps only speak broadcast)")
        return self

    @model_validator(mode="after")
    def _durable_needs_given_id(self) -> Settings:
        # The broker keeps a durable instance's queue or consumer under its id. The derived default stays the same
        # only while the host name does, and a Deployment's pod or a recreated container gets a new one: each start
        # would then leave a queue behind, unread, for --instance-ttl. Only the operator knows what is stable.
        if self.mode is Mode.DURABLE and "instance_id" not in self.model_fields_set:
            raise ValueError(
                "instance_id: durable mode needs --instance-id, a name that stays the same across "
                "restarts (e.g. a StatefulSet pod name): the broker keeps this instance's queue or "
                "consumer under it"
            )
        return self

    @field_validator("http")
    @classmethod
    def _address(cls, value: str) -> str:
        if value != "off":
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(f"{value!r} is not ADDR:PORT (e.g. 127.0.0.1:9464) or 'off'")
        return value

    def backend_config(self) -> BackendConfig:
        """What the backend is told, by the daemon and by `syncar check` alike."""
        # echo off: the relay drops its own events coming back from the broker; a backend that can spare it them does.
        return BackendConfig(
            uri=self.backend,
            instance_id=self.instance_id,
            mode=self.mode,
            retention=self.retention,
            instance_ttl=self.instance_ttl,
            echo=False,
            reconnect_max_delay=self.reconnect_max_delay,
            key=self.key,
        )

    def http_address(self) -> tuple[str, int] | None:
        if self.http == "off":
            return None
        host, _, port = self.http.rpartition(":")
        return host.strip("[]"), int(port)

    @field_validator("config")
    @classmethod
    def _config_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @field_validator("backend")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        try:
            scheme_of(value)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("backend: ")) from None
        return value


def gathered(given: Mapping[str, Any]) -> dict[str, Any]:
    """The values `given` (by name), over `SYNCAR_<NAME>` variables, over the keys of the TOML file in force.

    Names match whatever their case, in each source, as they did with pydantic-settings: `syncar_key` and `KEY =`
    in the file count. Values stay as they came (strings from the environment): validation turns them into
    settings, and its errors name the setting. A key of the file that is no setting is kept, and refused there.

    Raises:
        ConfigError: the file is not TOML (the message names the line and the setting on it).
        OSError, UnicodeDecodeError: the file cannot be read.
    """
    flags = _by_name(given)
    environment = {name.lower(): value for name, value in os.environ.items()}
    prefix = env_of("").lower()
    from_env = {name: environment[prefix + name] for name in Settings.model_fields if prefix + name in environment}
    path = config_file(flags)
    # A file that is not there adds nothing here: the check of `config` says so, naming the setting.
    from_file = _by_name(_read_toml(path)) if path is not None and path.expanduser().is_file() else {}
    return {**from_file, **from_env, **flags}


def _by_name(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` keyed by the settings' names, in their order (a key in another case renamed; the first such key
    wins), then the keys that name no setting."""
    keys: dict[str, str] = {}
    for key in values:
        keys.setdefault(key.lower(), key)
    named = {name: values[keys[name]] for name in Settings.model_fields if name in keys}
    named.update((key, value) for key, value in values.items() if key.lower() not in Settings.model_fields)
    return named


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib  # noqa: PLC0415  (only with a --config file)

    with path.expanduser().open("rb") as file:
        try:
            return tomllib.load(file)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(_toml_syntax_error(path, exc)) from None


def config_file(given: Mapping[str, Any]) -> Path | None:
    """The TOML file in force: `config` among the settings given, else SYNCAR_CONFIG."""
    named = given.get("config") or os.environ.get(env_of("config"))
    return Path(named) if named else None


def line_in_config(name: str, given: Mapping[str, Any]) -> tuple[Path, int] | None:
    """The file and line that set `name`, if the value in force came from the --config file.

    Flags and the environment win over the file, so a setting given there is not the file's, even if it is in it.
    """
    path = config_file(given)
    if path is None or name in given or env_of(name) in os.environ:
        return None
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    # `key = ...`, `"key" = ...`, `key.sub = ...` or a table `[key]`: syncar's settings are all top-level.
    pattern = re.compile(rf"""\s*\[?\s*(["']?){re.escape(name)}\1\s*[=.\]]""")
    return next(((path, number) for number, line in enumerate(lines, 1) if pattern.match(line)), None)


def _toml_syntax_error(path: Path, exc: tomllib.TOMLDecodeError) -> str:
    reason, _, at = str(exc).partition(" (at ")
    found = re.match(r"line (\d+), column \d+", at)
    if found is None:  # "at end of document"
        return f"invalid --config {path}: not TOML: {reason}"
    lines = path.read_text(errors="replace").splitlines()
    line = lines[int(found[1]) - 1] if int(found[1]) <= len(lines) else ""
    key = re.match(r"""\s*\[?\s*["']?([\w-]+)""", line)
    where = f"setting {key[1]} in {path}" if key else f"--config {path}"
    return f"invalid {where}, {found[0]}: not TOML: {reason}"


def redact_uri(uri: str) -> str:
    """The URI with its password (or NATS token) replaced by ***, for anything a person or a log may see.

    Never fails, even on a malformed URI; a value without `scheme://` is hidden whole (it may be a password alone).
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return "***"
    userinfo, at, host = rest.rpartition("@")  # the last @: a raw @ in a password comes before it
    if not at:
        return uri
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user + ':' if colon else ''}***@{host}"


def flag_of(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_of(field: str) -> str:
    return "SYNCAR_" + field.upper()
