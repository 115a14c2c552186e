"""deploy/compose: valid against the compose spec, and wired the way docs/deploy.md says, for every broker variant."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar import __version__
from tests.deploy.helpers import COMPOSE_DIR, dockerfile_instructions, hadolint, interpolate, settings_from_env, tool
from tests.utils import REPO

BASE = COMPOSE_DIR / "docker-compose.yml"
APP_DOCKERFILE = COMPOSE_DIR / "feathers-chat.Dockerfile"
#: variant file (None: the main file alone) -> the broker scheme its syncars must use
VARIANTS: dict[str | None, str] = {None: "redis", "rabbitmq.yml": "amqp", "nats.yml": "nats"}
PAIRS = ("a", "b")


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def merge(base: Any, override: Any) -> Any:
    """Compose's merge for the keys our variants touch: mappings merge by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {key: merge(base[key], value) if key in base else value for key, value in override.items()} | {
            key: value for key, value in base.items() if key not in override
        }
    return override


def project(variant: str | None) -> dict[str, Any]:
    config = load(BASE)
    return merge(config, load(COMPOSE_DIR / variant)) if variant else config


def seconds(duration: str) -> float:
    found = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert found and duration, f"unexpected duration {duration!r}"
    return int(found.group(1) or 0) * 60 + int(found.group(2) or 0)


def check_jsonschema(*paths: Path) -> subprocess.CompletedProcess[str]:
    # The compose-spec schema ships inside check-jsonschema: no network at test time.
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_file_and_merged_variant_matches_the_compose_spec(tmp_path: Path) -> None:
    files = sorted(COMPOSE_DIR.glob("*.yml"))
    assert {path.name for path in files} == {"docker-compose.yml", *(v for v in VARIANTS if v)}
    merged = []
    for variant in VARIANTS:
        if variant:
            merged.append(tmp_path / f"merged-{variant}.json")
            merged[-1].write_text(json.dumps(project(variant)))
    result = check_jsonschema(*files, *merged)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}"


def test_the_schema_check_is_live(tmp_path: Path) -> None:
    bad = project(None)
    bad["services"]["app-a"]["depends_on"]["syncar-a"]["condition"] = "service_ready"
    bad["services"]["syncar-a"]["stop_grace_period"] = ["15s"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    result = check_jsonschema(path)
    assert result.returncode != 0
    assert "service_ready" in result.stdout


@pytest.mark.parametrize("variant", list(VARIANTS), ids=lambda v: v or "redis")
def test_each_app_has_its_own_ready_syncar(variant: str | None) -> None:
    services = project(variant)["services"]
    volumes = project(variant)["volumes"]
    assert set(services) == {"broker", *(f"{kind}-{pair}" for kind in ("syncar", "app") for pair in PAIRS)}
    assert services["broker"]["healthcheck"]["test"][0] == "CMD"
    instance_ids = set()
    for pair in PAIRS:
        syncar, app = services[f"syncar-{pair}"], services[f"app-{pair}"]
        env = {key: interpolate(value) for key, value in syncar["environment"].items()}
        settings_from_env(env)
        scheme, _, rest = env["SYNCAR_BACKEND"].partition("://")
        assert scheme == VARIANTS[variant]
        assert re.search(r"(^|@)broker:\d+", rest), env["SYNCAR_BACKEND"]
        assert env["SYNCAR_HTTP"] == "0.0.0.0:9464"
        instance_ids.add(env["SYNCAR_INSTANCE_ID"])

        # The socket's directory is this pair's own named volume, mounted in both containers.
        socket_dir = str(Path(env["SYNCAR_SOCKET"]).parent)
        mount = f"sock-{pair}:{socket_dir}"
        assert syncar["volumes"] == [mount] and app["volumes"] == [mount]
        assert f"sock-{pair}" in volumes
        assert app["environment"]["SYNCAR_SOCKET"] == env["SYNCAR_SOCKET"]

        # The app starts once its syncar's socket is up; syncar after the broker, without waiting for it to be
        # healthy: a broker outage must not keep the app from starting (syncar starts without its broker).
        assert app["depends_on"] == {f"syncar-{pair}": {"condition": "service_healthy"}}
        assert syncar["depends_on"] == {"broker": {"condition": "service_started"}}
        assert syncar["healthcheck"]["test"] == ["CMD", "syncar", "health", "--ready"]

        # docker stop must leave syncar the time to flush before it sends SIGKILL.
        assert seconds(syncar["stop_grace_period"]) > float(env["SYNCAR_SHUTDOWN_TIMEOUT"])
        assert syncar["read_only"] is True and syncar["cap_drop"] == ["ALL"]
    assert len(instance_ids) == len(PAIRS), "each syncar needs its own instance id"


def test_the_rabbitmq_broker_comes_back_as_the_same_node_with_its_data() -> None:
    # Durable mode survives a broker crash only if RabbitMQ restarts under the same node name (rabbit@<hostname>;
    # compose's default hostname is the new container's id) with the same data directory.
    config = project("rabbitmq.yml")
    broker = config["services"]["broker"]
    assert broker["hostname"] == "broker"
    assert broker["volumes"] == ["rabbitmq-data:/var/lib/rabbitmq"]
    assert "rabbitmq-data" in config["volumes"]


def test_every_container_runs_this_version_of_its_image() -> None:
    services = project(None)["services"]
    for pair in PAIRS:
        syncar, app = services[f"syncar-{pair}"], services[f"app-{pair}"]
        assert interpolate(syncar["image"]) == f"syncar:{__version__}"
        assert syncar["build"] == {"context": "../..", "dockerfile": "Dockerfile"}
        assert interpolate(app["image"]) == f"syncar-feathers-chat:{__version__}"
        assert app["build"] == {"context": "../..", "dockerfile": f"deploy/compose/{APP_DOCKERFILE.name}"}
    assert (COMPOSE_DIR / "../../Dockerfile").is_file() and APP_DOCKERFILE.is_file()


def test_app_dockerfile_passes_hadolint() -> None:
    result = hadolint(APP_DOCKERFILE)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_app_build_context_is_the_plugin_and_the_example() -> None:
    """The app image's context is the repository root, cut down by its own ignore file to what it copies,
    which must be every file the plugin publishes, and every module and the page of the example."""
    ignore = Path(f"{APP_DOCKERFILE}.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"
    allowed = {pattern[1:] for pattern in patterns[1:]}
    assert all(pattern.startswith("!") for pattern in patterns[1:])
    copied: set[str] = set()
    for instruction, arguments in dockerfile_instructions(APP_DOCKERFILE.read_text()):
        if instruction == "COPY":
            copied.update(arguments.split()[:-1])
    assert copied == allowed

    plugin = json.loads((REPO / "clients/node/package.json").read_text())
    published = {f"clients/node/{name.rstrip('/')}" for name in ["package.json", *plugin["files"]]}
    example = REPO / "examples/feathers-chat"
    modules = {
        f"examples/feathers-chat/{path.name}"
        for path in [*example.glob("*.js"), example / "public", example / "package.json", example / "package-lock.json"]
    }
    assert published | modules == allowed


def test_metrics_ports_stay_on_loopback() -> None:
    services = project(None)["services"]
    ports = [port for pair in PAIRS for port in services[f"syncar-{pair}"]["ports"]]
    assert ports == ["127.0.0.1:9464:9464", "127.0.0.1:9465:9464"]
