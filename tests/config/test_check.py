"""``llmproxy config check``: the lines printed for a good and a bad file."""

from __future__ import annotations

from pathlib import Path

from llmproxy.config.check import check_config, summarize
from llmproxy.config.loader import parse_config


def test_good_file_prints_ok_and_a_summary(tmp_path: Path) -> None:
    """A valid file yields ok, an 'OK' line and what it sets up."""
    path = tmp_path / "config.yaml"
    path.write_text(
        "listen: ':8080'\nbackends:\n  - {url: 'http://127.0.0.1:9001', name: mock, weight: 3}\n",
        encoding="utf-8",
    )
    lines, ok = check_config(path, {})
    assert ok
    assert lines[0] == f"{path}: OK"
    assert "listen: :8080 (http)" in lines
    assert "  mock (http://127.0.0.1:9001)  weight 3  models: any model" in lines


def test_bad_file_prints_every_issue(tmp_path: Path) -> None:
    """An invalid file yields not-ok and one file:line line per issue."""
    path = tmp_path / "config.yaml"
    path.write_text("backends:\n  - url: ftp://x\n    wieght: 1\n", encoding="utf-8")
    lines, ok = check_config(path, {})
    assert not ok
    assert lines == [
        f"{path}:2: backends[0].url: scheme must be http or https, got 'ftp://x'",
        f"{path}:3: backends[0]: unknown key 'wieght' (did you mean 'weight'?)",
    ]


def test_missing_file_is_not_ok(tmp_path: Path) -> None:
    """A missing file is a failed check with the OS reason, not an exception."""
    lines, ok = check_config(tmp_path / "absent.yaml", {})
    assert not ok
    assert lines == [f"{tmp_path / 'absent.yaml'}: cannot read the file: No such file or directory"]


def test_summary_lists_strategy_and_enabled_sections() -> None:
    """The summary names the strategy, models, limits and which optional sections are on."""
    config = parse_config(
        """\
server: {listen: "0.0.0.0:9000", workers: 4}
backends:
  - {url: "http://a:8000", models: [qwen, llama], weight: 10}
routing: {load_balance_strategy: least_connections, retry: {enabled: false}}
health_check: {enabled: false}
auth:
  enabled: true
  pipeline: [{name: inline, type: static, keys: [{key: k}]}]
rate_limit:
  enabled: true
  global: {enabled: true, requests_per_minute: 600, burst_size: 20}
metrics: {enabled: false}
admin: {enabled: false}
""",
        environ={},
    )
    assert summarize(config) == [
        "listen: 0.0.0.0:9000 (http, 4 workers)",
        "client address: the connection's peer (no trusted proxies)",
        "backends: 1",
        "  http://a:8000  weight 10  models: qwen, llama",
        "routing: least_connections, no retries",
        "health checks: off",
        "auth: on (first_match: inline [static])",
        "rate limits: on (memory; global 600/min burst 20)",
        "usage hook: off",
        "metrics: off",
        "admin socket: off",
        "enabled: auth, rate limits",
    ]


def test_summary_says_whose_forwarded_for_is_believed() -> None:
    """config check prints server.trusted_proxies: whose X-Forwarded-For names the client."""
    config = parse_config(
        """\
server: {trusted_proxies: ["10.0.0.0/8", "127.0.0.1"]}
backends: [{url: "http://a:8000"}]
""",
        environ={},
    )
    assert (
        "client address: from X-Forwarded-For / Forwarded when the peer is in 10.0.0.0/8, 127.0.0.1"
    ) in summarize(config)


def test_summary_warns_about_auth_without_providers() -> None:
    """Auth switched on with no provider is called out: every request would be refused."""
    config = parse_config("backends: [{url: http://a}]\nauth: {enabled: true}\n", environ={})
    assert "auth: on (no providers: every request will be refused)" in summarize(config)
