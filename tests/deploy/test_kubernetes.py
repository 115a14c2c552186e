"""deploy/kubernetes: valid against the Kubernetes schemas (offline), kustomize-ready, and wired as documented."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar import __version__
from tests.deploy.helpers import KUBE_DIR, module, settings_from_env, tool

#: 1.29 is the first release with native sidecars on by default; 1.33 made them GA.
KUBERNETES_VERSIONS = ("1.29", "1.33")
#: Created by the operator, never by the kustomization (it would overwrite the real credentials).
EXAMPLES = {"secret.example.yaml"}


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def resource_files() -> list[Path]:
    return sorted(path for path in KUBE_DIR.glob("*.yaml") if path.name != "kustomization.yaml")


def kustomization() -> dict[str, Any]:
    data = yaml.safe_load((KUBE_DIR / "kustomization.yaml").read_text())
    assert isinstance(data, dict)
    return data


def validate(resource: dict[str, Any], version: str) -> None:
    """Strict: unknown fields (a typo, or a field the version lacks) fail too."""
    validator = module("kubernetes_validate")
    try:
        validator.validate(resource, version, strict=True)
    except validator.ValidationError as exc:
        where = ".".join(str(item) for item in exc.path)
        pytest.fail(f"{resource['kind']}/{resource['metadata']['name']} on {version}: {where}: {exc.message}")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", resource_files(), ids=lambda path: path.name)
def test_each_manifest_validates(path: Path, version: str) -> None:
    docs = documents(path.read_text())
    assert docs, f"{path.name} is empty"
    for resource in docs:
        validate(resource, version)


def test_the_schema_check_is_live() -> None:
    """1.27 predates native sidecars, so its schema must refuse `restartPolicy` on an init container."""
    validator = module("kubernetes_validate")
    (deployment,) = documents((KUBE_DIR / "deployment.yaml").read_text())
    with pytest.raises(validator.ValidationError, match="restartPolicy"):
        validator.validate(deployment, "1.27", strict=True)


def test_kustomization_lists_every_resource_but_the_examples() -> None:
    config = kustomization()
    assert config["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and config["kind"] == "Kustomization"
    listed = config["resources"]
    assert len(listed) == len(set(listed))
    assert set(listed) == {path.name for path in resource_files()} - EXAMPLES
    assert config["images"] == [{"name": "syncar", "newTag": __version__}]


def test_kustomize_renders_valid_resources() -> None:
    # kubectl embeds kustomize; no pure-Python kustomize renders this. scripts/install puts a pinned kubectl in the
    # venv, so CI renders it; without one this test skips on a developer's machine and fails in CI.
    kubectl = tool("kubectl", "scripts/install puts one in .venv/bin")
    result = subprocess.run([kubectl, "kustomize", str(KUBE_DIR)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    rendered = documents(result.stdout)
    assert sorted(doc["kind"] for doc in rendered) == ["ConfigMap", "Deployment", "PodDisruptionBudget"]
    for resource in rendered:
        assert resource["metadata"]["labels"]["app.kubernetes.io/part-of"] == "syncar-example"
        for version in KUBERNETES_VERSIONS:
            validate(resource, version)
    (deployment,) = (doc for doc in rendered if doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert {c["image"] for c in pod["initContainers"] + pod["containers"]} == {f"syncar:{__version__}"}


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items}


def test_syncar_is_a_native_sidecar_sharing_the_socket(tmp_path: Path) -> None:
    (deployment,) = documents((KUBE_DIR / "deployment.yaml").read_text())
    (config,) = documents((KUBE_DIR / "configmap.yaml").read_text())
    settings = config["data"]
    template = deployment["spec"]["template"]
    pod = template["spec"]
    (syncar,) = pod["initContainers"]
    (app,) = pod["containers"]
    assert syncar["restartPolicy"] == "Always"

    # The socket's directory is an emptyDir mounted in both containers.
    socket_dir = str(Path(settings["SYNCAR_SOCKET"]).parent)
    volumes = by_name(pod["volumes"])
    for container in (syncar, app):
        (mount,) = (mount for mount in container["volumeMounts"] if mount["mountPath"] == socket_dir)
        assert "emptyDir" in volumes[mount["name"]]
    assert by_name(app["env"])["SYNCAR_SOCKET"]["valueFrom"]["configMapKeyRef"] == {
        "name": config["metadata"]["name"],
        "key": "SYNCAR_SOCKET",
    }

    # Settings from the ConfigMap, the instance id from the pod name.
    assert syncar["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    env = by_name(syncar["env"])
    assert env["SYNCAR_INSTANCE_ID"]["valueFrom"]["fieldRef"] == {"fieldPath": "metadata.name"}
    assert "SYNCAR_BACKEND" not in settings, "credentials belong in the Secret"
    effective = settings_from_env(
        {**settings, "SYNCAR_INSTANCE_ID": "app-7d9c-x2", "SYNCAR_BACKEND_FILE": str(broker_uri_file(tmp_path))}
    )
    assert effective.http_address() == ("0.0.0.0", 9464)


def broker_uri_file(directory: Path) -> Path:
    """The example Secret's URI written where the sidecar would find it, for Settings to read."""
    (secret,) = documents((KUBE_DIR / "secret.example.yaml").read_text())
    (value,) = secret["stringData"].values()
    path = directory / "backend-uri"
    path.write_text(value + "\n")
    return path


def test_the_broker_uri_comes_from_a_mounted_secret_file_not_the_environment(tmp_path: Path) -> None:
    """As docs/security.md recommends: the password is in no container's environment, only in a file syncar reads."""
    (deployment,) = documents((KUBE_DIR / "deployment.yaml").read_text())
    (config,) = documents((KUBE_DIR / "configmap.yaml").read_text())
    (secret,) = documents((KUBE_DIR / "secret.example.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (syncar,) = pod["initContainers"]
    (app,) = pod["containers"]
    for container in (syncar, app):
        for variable in container.get("env", []):
            assert "secretKeyRef" not in variable.get("valueFrom", {}), (container["name"], variable["name"])
            assert variable["name"] != "SYNCAR_BACKEND"
        assert all("secretRef" not in source for source in container.get("envFrom", []))

    path = Path(by_name(syncar["env"])["SYNCAR_BACKEND_FILE"]["value"])
    (mount,) = (mount for mount in syncar["volumeMounts"] if mount["mountPath"] == str(path.parent))
    assert mount["readOnly"] is True
    volume = by_name(pod["volumes"])[mount["name"]]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert path.name in secret["stringData"], "the file is the Secret's key"
    # Readable by syncar through the pod's fsGroup (the files belong to root), by nobody else; the app never mounts it.
    assert pod["securityContext"]["fsGroup"] == syncar["securityContext"]["runAsGroup"]
    assert volume["secret"]["defaultMode"] & 0o077 == 0o040
    assert all(m["name"] != mount["name"] for m in app["volumeMounts"])

    effective = settings_from_env(
        {**config["data"], "SYNCAR_INSTANCE_ID": "app-0", "SYNCAR_BACKEND_FILE": str(broker_uri_file(tmp_path))}
    )
    assert effective.backend == secret["stringData"][path.name]


def test_probes_scraping_and_shutdown_budget() -> None:
    (deployment,) = documents((KUBE_DIR / "deployment.yaml").read_text())
    (config,) = documents((KUBE_DIR / "configmap.yaml").read_text())
    settings = config["data"]
    template = deployment["spec"]["template"]
    (syncar,) = template["spec"]["initContainers"]

    host, _, port = settings["SYNCAR_HTTP"].rpartition(":")
    assert host == "0.0.0.0", "the kubelet probes the pod IP"
    (http,) = syncar["ports"]
    assert http["containerPort"] == int(port)
    # /readyz is the socket, not the broker (tests/daemon/test_http.py): a broker outage neither keeps new pods from
    # starting nor takes every running pod out of its Service at once.
    for probe, path in (("startupProbe", "/readyz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert syncar[probe]["httpGet"] == {"path": path, "port": http["name"]}, probe
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": port,
        "prometheus.io/path": "/metrics",
    }

    # The app exits first, then syncar flushes for up to its shutdown timeout: both inside the grace period.
    assert template["spec"]["terminationGracePeriodSeconds"] >= float(settings["SYNCAR_SHUTDOWN_TIMEOUT"]) + 15


def test_restrictive_security_and_resources() -> None:
    (deployment,) = documents((KUBE_DIR / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["fsGroup"] == 10001, "lets the app open the 0660 socket"
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["enableServiceLinks"] is False, "service links would inject SYNCAR_* variables"
    for container in pod["initContainers"] + pod["containers"]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}, f"{container['name']} {kind}"


def test_a_disruption_budget_lets_drains_through_one_pod_at_a_time() -> None:
    (deployment,) = documents((KUBE_DIR / "deployment.yaml").read_text())
    (budget,) = documents((KUBE_DIR / "pdb.yaml").read_text())
    assert (budget["apiVersion"], budget["kind"]) == ("policy/v1", "PodDisruptionBudget")
    spec = budget["spec"]
    # It covers exactly the app's pods.
    assert spec["selector"] == deployment["spec"]["selector"]
    assert spec["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # One pod at a time, whatever the replica count: a drain never waits forever, and never empties the Service.
    assert spec["maxUnavailable"] == 1 and "minAvailable" not in spec
    assert deployment["spec"]["replicas"] > spec["maxUnavailable"]
    # A pod that is not ready anyway (crashing) must not block a node drain.
    assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
