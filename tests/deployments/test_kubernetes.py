"""deployments/kubernetes: the manifests parse, fit together (names, labels, ports, volumes, Secret
keys) and match the gateway (its config validates with the Secret's values, probe paths exist and
need no key, the drain fits in the grace period, every path it writes is a writable volume)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from llmproxy import __version__
from llmproxy.config.loader import parse_config
from llmproxy.config.model import Config
from llmproxy.daemon.listen import parse_listen
from tests.deployments.common import (
    KUBERNETES,
    image_command,
    required_env,
    under,
    written_dirs,
)
from tests.e2e.daemon import free_port, running

MANIFESTS = (
    "configmap.yaml",
    "secret.yaml",
    "deployment.yaml",
    "service.yaml",
    "pdb.yaml",
    "hpa.yaml",
)
LABELS = {"app.kubernetes.io/name": "llmproxy"}


def load(name: str) -> dict[str, Any]:
    documents = [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc]
    assert len(documents) == 1, name
    document: dict[str, Any] = documents[0]
    return document


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = load("deployment.yaml")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (found,) = pod_spec()["containers"]
    assert isinstance(found, dict)
    return found


def secret_values() -> dict[str, str]:
    values: dict[str, str] = load("secret.yaml")["stringData"]
    return values


def config_text() -> str:
    text: str = load("configmap.yaml")["data"]["config.yaml"]
    return text


def gateway_config() -> Config:
    env = {
        item["name"]: secret_values()[item["valueFrom"]["secretKeyRef"]["key"]]
        for item in container()["env"]
    }
    return parse_config(config_text(), "configmap.yaml", env)


def test_every_manifest_parses_and_names_its_kind() -> None:
    kinds = {}
    for name in MANIFESTS:
        for document in yaml.safe_load_all((KUBERNETES / name).read_text()):
            assert document["apiVersion"], name
            assert document["metadata"]["name"], name
            assert document["metadata"]["labels"] == LABELS, name
            kinds[document["kind"]] = document["apiVersion"]
    assert kinds == {
        "ConfigMap": "v1",
        "Secret": "v1",
        "Deployment": "apps/v1",
        "Service": "v1",
        "PodDisruptionBudget": "policy/v1",
        "HorizontalPodAutoscaler": "autoscaling/v2",
    }
    assert sorted(path.name for path in KUBERNETES.glob("*.yaml")) == sorted(
        [*MANIFESTS, "kustomization.yaml"]
    )


def test_kustomization_applies_all_but_the_secret_and_the_hpa() -> None:
    kustomization = load("kustomization.yaml")
    assert kustomization["resources"] == [
        "configmap.yaml",
        "deployment.yaml",
        "service.yaml",
        "pdb.yaml",
    ]
    assert kustomization["namespace"] == "llmproxy"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_offline() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout)]
    assert sorted(kinds) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]


def test_config_validates_with_the_secret_through_the_environment() -> None:
    text = config_text()
    names = {item["name"] for item in container()["env"]}
    assert required_env(text) == names == set(secret_values())
    for item in container()["env"]:
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == load("secret.yaml")["metadata"]["name"]
        assert ref["key"] in secret_values()
    config = gateway_config()
    assert config.rate_limit.redis is not None
    assert config.rate_limit.redis.password == secret_values()["REDIS_PASSWORD"]
    assert config.usage_hook.secret == secret_values()["USAGE_HOOK_SECRET"]
    for value in secret_values().values():
        assert value not in text  # no secret written in the ConfigMap


def test_config_is_mounted_where_the_image_reads_it() -> None:
    args = container()["args"]
    assert ["llmproxy", *args] == image_command()
    config_path = Path(args[args.index("--config") + 1])
    mounts = {m["name"]: m for m in container()["volumeMounts"]}
    assert mounts["config"]["mountPath"] == str(config_path.parent)
    assert mounts["config"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert volumes["config"]["configMap"]["name"] == load("configmap.yaml")["metadata"]["name"]
    assert config_path.name in load("configmap.yaml")["data"]
    assert set(mounts) == set(volumes)
    image, _, tag = container()["image"].rpartition(":")
    assert image == "llmproxy"
    assert tag == __version__


def test_ports_match_the_listen_address_service_and_scrape_annotations() -> None:
    config = gateway_config()
    port = parse_listen(config.listen_address)[1]
    (container_port,) = container()["ports"]
    assert container_port == {"name": "http", "containerPort": port}
    (service_port,) = load("service.yaml")["spec"]["ports"]
    assert service_port["targetPort"] == "http"
    assert load("service.yaml")["spec"]["selector"] == LABELS
    annotations = load("deployment.yaml")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == config.metrics.path


def test_probes_use_gateway_paths_that_need_no_key() -> None:
    config = gateway_config()
    probes = {
        name: container()[name]["httpGet"]
        for name in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["livenessProbe"]["path"] == "/health"
    assert probes["readinessProbe"]["path"] == "/ready"
    for probe in probes.values():
        assert probe["port"] == "http"
        assert probe["path"] in config.auth.skip_paths


def test_probe_paths_answer_on_a_running_gateway(tmp_path: Path) -> None:
    """With auth on and no key: liveness 200, readiness 503 while no backend is healthy."""
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{port}",
                "backends": [{"url": f"http://127.0.0.1:{free_port()}"}],  # nothing listens
                "health_check": {"interval": "100ms", "timeout": "100ms", "unhealthy_threshold": 1},
                "auth": {"enabled": True, "storage": "file"},
                "api_keys": [{"key": "sk-probe-test"}],
                "usage": {"enabled": False},
                "admin": {"enabled": False},
            }
        )
    )
    base = f"http://127.0.0.1:{port}"
    paths = {
        name: container()[name]["httpGet"]["path"] for name in ("livenessProbe", "readinessProbe")
    }
    with running(["serve", "--config", str(config)], base + paths["livenessProbe"], cwd=tmp_path):
        deadline = time.monotonic() + 10
        while httpx.get(base + paths["readinessProbe"]).status_code != 503:
            assert time.monotonic() < deadline, "/ready never reported the dead backend"
            time.sleep(0.05)
        assert httpx.get(base + paths["livenessProbe"]).status_code == 200


def test_drain_fits_in_the_grace_period() -> None:
    config = gateway_config()
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    pause = float(pre_stop[1])
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert grace > pause + config.server.shutdown_timeout
    assert config.server.watch_config is True  # the kubelet swaps the file; the pods reload


def test_security_context_and_writable_volumes() -> None:
    security = container()["securityContext"]
    assert security == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod_spec()["automountServiceAccountToken"] is False
    assert pod_spec()["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    writable = {
        Path(m["mountPath"])
        for m in container()["volumeMounts"]
        if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]
    }
    assert writable == {Path("/var/lib/llmproxy"), Path("/run/llmproxy"), Path("/tmp")}
    config = gateway_config()
    for what, directory in written_dirs(config, Path("/etc/llmproxy")).items():
        assert under(directory, writable), f"{what} writes to {directory}, not a writable volume"
    assert config.server.workers == 1


def test_resources_replicas_and_shared_limits() -> None:
    deployment = load("deployment.yaml")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["selector"]["matchLabels"] == LABELS
    assert deployment["spec"]["template"]["metadata"]["labels"] == LABELS
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    resources = container()["resources"]
    assert resources["requests"]["cpu"]
    assert resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    config = gateway_config()
    # several replicas: limits and keys through Redis, `instances` = the replica count
    assert config.rate_limit.enabled
    assert config.rate_limit.storage == "redis"
    assert config.rate_limit.instances == deployment["spec"]["replicas"]
    assert [entry.type for entry in config.auth.pipeline] == ["redis"]
    assert config.auth.pipeline[0].redis == config.rate_limit.redis


def test_pdb_and_hpa_target_the_deployment() -> None:
    pdb = load("pdb.yaml")
    assert pdb["spec"]["selector"]["matchLabels"] == LABELS
    assert pdb["spec"]["maxUnavailable"] == 1
    hpa = load("hpa.yaml")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        load("deployment.yaml")["metadata"]["name"],
    )
    assert hpa["spec"]["minReplicas"] == load("deployment.yaml")["spec"]["replicas"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
