"""The Prometheus and Grafana files in ``deployments/`` match the metrics the gateway exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from llmproxy.metrics import GatewayMetrics

DEPLOYMENTS = Path(__file__).resolve().parents[2] / "deployments"
METRIC_NAME = re.compile(r"\bllmproxy_[a-z0-9_]+\b")
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}


def exported_samples() -> dict[str, str]:
    """Every sample name the gateway can expose, mapped to its family name."""
    registry = CollectorRegistry()
    GatewayMetrics(registry)
    return {
        family.name + suffix: family.name
        for family in registry.collect()
        for suffix in SUFFIXES[family.type]
    }


def exprs(dashboard: dict[str, Any]) -> Iterator[str]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "query":
            yield variable["definition"]


def test_dashboard_uses_only_exported_metrics_and_covers_them_all() -> None:
    """Every llmproxy_* name in a dashboard query exists, and every family has a panel."""
    dashboard = json.loads((DEPLOYMENTS / "grafana" / "dashboard.json").read_text())
    assert dashboard["schemaVersion"] >= 39
    samples = exported_samples()
    used = {name for expr in exprs(dashboard) for name in METRIC_NAME.findall(expr)}
    assert used, "the dashboard queries no llmproxy metric"
    assert used <= samples.keys(), f"unknown metrics: {sorted(used - samples.keys())}"
    assert {samples[name] for name in used} == set(samples.values())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in {"${DS_PROMETHEUS}", "prometheus"}, panel["title"]


def test_prometheus_scrapes_gateway_and_backend() -> None:
    """prometheus.yml scrapes llmproxy and the mock/vLLM backend at /metrics."""
    config = yaml.safe_load((DEPLOYMENTS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {
        name: {target for group in job["static_configs"] for target in group["targets"]}
        for name, job in jobs.items()
    }
    assert "llmproxy:8000" in targets["llmproxy"]
    assert "mock:9001" in targets["vllm"]
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs.values())
    assert config["global"]["scrape_interval"] == "15s"


def test_grafana_provisioning_points_at_the_dashboard_datasource() -> None:
    """The provisioned datasource has the uid the dashboard's default variable names."""
    provisioning = DEPLOYMENTS / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources.yml").read_text())
    assert [source["uid"] for source in datasources["datasources"]] == ["prometheus"]
    dashboards = yaml.safe_load((provisioning / "dashboards.yml").read_text())
    assert dashboards["providers"][0]["type"] == "file"
