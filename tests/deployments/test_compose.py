"""deployments/docker-compose.yml and compose/config.yaml reference only what exists: the image
built from the Dockerfile, files of the repository, the services' ports, env names, config keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from llmproxy.config.loader import parse_config
from llmproxy.config.model import Config
from llmproxy.daemon.listen import parse_listen
from tests.deployments.common import (
    COMPOSE_CONFIG,
    DEPLOYMENTS,
    REPO,
    compose,
    compose_environment,
    dockerfile,
    healthcheck_command,
    image_command,
    interpolate,
    llmproxy_owned_dirs,
    required_env,
    under,
    written_dirs,
)

IMAGE = "llmproxy:local"
NO_ENV: dict[str, str] = {}  # `docker compose up` with no .env: the defaults in the file


def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def gateway_config() -> Config:
    env = compose_environment(services()["llmproxy"], NO_ENV)
    return parse_config(COMPOSE_CONFIG.read_text(), str(COMPOSE_CONFIG), env)


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source of a service's volumes (short syntax)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        found[target] = source
    return found


def test_services_and_images() -> None:
    assert compose()["name"] == "llmproxy"
    found = services()
    assert set(found) == {
        "llmproxy",
        "llmproxy-2",
        "mock",
        "redis",
        "postgres",
        "usage-receiver",
        "prometheus",
        "grafana",
    }
    for name, service in found.items():
        image = service["image"]
        if image == IMAGE:
            build = service["build"]
            assert (DEPLOYMENTS / build["context"]).resolve() == REPO, name
            assert (REPO / build["dockerfile"]) == DEPLOYMENTS / "Dockerfile", name
        else:
            # third-party images are pinned to a version, never `latest`
            repository, _, tag = image.rpartition(":")
            assert repository, name
            assert tag != "latest", name
            assert any(c.isdigit() for c in tag), name
    assert {n for n, s in found.items() if s["image"] == IMAGE} == {
        "llmproxy",
        "llmproxy-2",
        "mock",
        "usage-receiver",
    }


def test_bind_mounts_exist() -> None:
    named = set(compose()["volumes"])
    for name, service in services().items():
        for target, source in mounts(service).items():
            if source.startswith("."):
                assert (DEPLOYMENTS / source).exists(), f"{name}: {source}"
            else:
                assert source in named, f"{name}: volume {source} is not declared"
            assert target.startswith("/"), f"{name}: {target}"


def test_gateway_serves_the_mounted_config_on_the_published_port() -> None:
    gateway = services()["llmproxy"]
    assert "command" not in gateway
    assert "entrypoint" not in gateway
    config_path = Path(image_command()[image_command().index("--config") + 1])
    assert mounts(gateway)[str(config_path.parent)] == "./compose"
    assert (DEPLOYMENTS / "compose" / config_path.name).is_file()
    port = parse_listen(gateway_config().listen_address)[1]
    assert gateway["ports"] == [f"{port}:{port}"]
    assert dockerfile().final.one("EXPOSE").args == str(port)


def test_config_env_names_are_set_by_the_service() -> None:
    env = compose_environment(services()["llmproxy"], NO_ENV)
    assert required_env(COMPOSE_CONFIG.read_text()) <= set(env)
    assert all(env.values()), "a default for every secret, so `docker compose up` just works"


def test_config_points_at_the_compose_services() -> None:
    found = services()
    config = gateway_config()
    mock_command = found["mock"]["command"]
    assert image_command()[0] == "llmproxy"
    assert mock_command[0] == "mock-backend"
    (backend,) = config.backends
    url = urlsplit(backend.url)
    assert (url.hostname, url.port) == ("mock", int(option(mock_command, "--port")))
    assert set(backend.models) == set(option(mock_command, "--models").split(","))
    assert option(mock_command, "--host") == "0.0.0.0"

    assert config.rate_limit.enabled
    assert config.rate_limit.storage == "redis"
    assert config.rate_limit.redis is not None
    assert config.rate_limit.redis.addr == "redis:6379"
    redis = found["redis"]
    password = option(redis["command"], "--requirepass")
    assert interpolate(password, NO_ENV) == config.rate_limit.redis.password
    assert compose_environment(redis, NO_ENV)["REDISCLI_AUTH"] == config.rate_limit.redis.password

    receiver = found["usage-receiver"]
    hook = urlsplit(config.usage_hook.url)
    assert (hook.hostname, hook.port) == (
        "usage-receiver",
        int(option(receiver["command"], "--port")),
    )
    assert hook.path == "/api/usage"  # what examples/webhook-receiver.py serves
    secret = interpolate(option(receiver["command"], "--secret"), NO_ENV)
    assert secret == config.usage_hook.secret != ""
    assert receiver["entrypoint"] == ["python", "/srv/webhook-receiver.py"]
    assert mounts(receiver)["/srv/webhook-receiver.py"] == "../examples/webhook-receiver.py"

    assert config.auth.enabled
    assert config.auth.storage == "builtin"
    keys = urlsplit(config.auth.builtin_db)
    postgres = compose_environment(found["postgres"], NO_ENV)
    assert keys.scheme == "postgresql"
    assert (keys.hostname, keys.port) == ("postgres", 5432)
    assert (keys.username, keys.password) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
    )
    assert keys.path == f"/{postgres['POSTGRES_DB']}"
    assert config.usage.database == config.auth.builtin_db  # records shared by both replicas
    assert config.rate_limit.instances == 2  # the two replicas


def test_the_second_replica_is_the_first_on_its_own_port_and_state() -> None:
    """llmproxy-2 runs the same image, config and environment as llmproxy, with its own
    published port and its own state volume (its working directory)."""
    found = services()
    first, second = found["llmproxy"], found["llmproxy-2"]
    for name in ("image", "environment", "depends_on", "stop_grace_period", "restart"):
        assert second[name] == first[name], name
    assert mounts(second)["/etc/llmproxy"] == mounts(first)["/etc/llmproxy"] == "./compose"
    state = "/var/lib/llmproxy"
    assert mounts(first)[state] != mounts(second)[state]
    port = parse_listen(gateway_config().listen_address)[1]
    assert first["ports"] == [f"{port}:{port}"]
    assert second["ports"] == [f"{port + 1}:{port}"]
    assert first["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert found["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]


def test_config_writes_only_where_the_container_can() -> None:
    config = gateway_config()
    writable = {Path(target) for target, source in mounts(services()["llmproxy"]).items()}
    writable -= {Path("/etc/llmproxy")}  # mounted read-only
    writable |= llmproxy_owned_dirs() - {Path("/etc/llmproxy/run")}  # hidden by the mount
    for what, directory in written_dirs(config, Path("/etc/llmproxy")).items():
        assert under(directory, writable), f"{what} writes to {directory}"
    assert config.server.workers == 1  # more would need /etc/llmproxy/run, hidden by the mount


def test_health_checks_and_ordering() -> None:
    found = services()
    gateway = found["llmproxy"]
    assert healthcheck_command()[0] == "python"
    mock_port = option(found["mock"]["command"], "--port")
    health = compose_environment(found["mock"], NO_ENV)["LLMPROXY_HEALTH_URL"]
    assert health == f"http://127.0.0.1:{mock_port}/health"
    assert "/health" in gateway_config().auth.skip_paths  # the image's check needs no key
    assert found["usage-receiver"]["healthcheck"] == {"disable": True}
    depends = gateway["depends_on"]
    assert depends["redis"]["condition"] == depends["mock"]["condition"] == "service_healthy"


def test_stop_grace_period_covers_the_drain() -> None:
    grace = services()["llmproxy"]["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace[:-1]) > gateway_config().server.shutdown_timeout


def test_prometheus_and_grafana_use_the_provisioning_files() -> None:
    found = services()
    config = gateway_config()
    scrape = yaml.safe_load((DEPLOYMENTS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    port = parse_listen(config.listen_address)[1]
    gateways = jobs["llmproxy"]["static_configs"][0]["targets"]
    assert gateways == [f"llmproxy:{port}", f"llmproxy-2:{port}"]
    assert jobs["llmproxy"]["metrics_path"] == config.metrics.path
    assert (
        f"mock:{option(found['mock']['command'], '--port')}"
        in (jobs["vllm"]["static_configs"][0]["targets"])
    )
    assert mounts(found["prometheus"])["/etc/prometheus/prometheus.yml"] == "./prometheus.yml"

    grafana = mounts(found["grafana"])
    provisioning = DEPLOYMENTS / "grafana" / "provisioning"
    assert grafana["/etc/grafana/provisioning/datasources/llmproxy.yml"] == (
        "./grafana/provisioning/datasources.yml"
    )
    datasources = yaml.safe_load((provisioning / "datasources.yml").read_text())
    prometheus_url = urlsplit(datasources["datasources"][0]["url"])
    assert prometheus_url.hostname == "prometheus"
    assert found["prometheus"]["ports"] == [f"{prometheus_url.port}:{prometheus_url.port}"]
    dashboards = yaml.safe_load((provisioning / "dashboards.yml").read_text())
    folder = dashboards["providers"][0]["options"]["path"]
    assert grafana[f"{folder}/llmproxy.json"] == "./grafana/dashboard.json"
    home = compose_environment(found["grafana"], NO_ENV)[
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert home == f"{folder}/llmproxy.json"
    json.loads((DEPLOYMENTS / "grafana" / "dashboard.json").read_text())
