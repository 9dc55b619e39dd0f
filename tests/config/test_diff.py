"""The reload diff: readable lines, secrets hidden, restart-only keys found."""

from __future__ import annotations

from typing import Any

from llmproxy.config.diff import describe_changes, restart_needed
from llmproxy.config.model import Config
from llmproxy.config.reference import render_reference


def _config(**sections: Any) -> Config:
    data: dict[str, Any] = {"backends": [{"url": "http://a:1", "name": "a"}]}
    data.update(sections)
    return Config.model_validate(data)


def test_same_config_has_no_changes() -> None:
    assert describe_changes(_config(), _config()) == ()
    assert restart_needed(_config(), _config()) == ()


def test_backends_are_matched_by_name() -> None:
    old = _config(backends=[{"url": "http://a:1", "name": "a"}, {"url": "http://b:1", "name": "b"}])
    new = _config(
        backends=[
            {"url": "http://b:1", "name": "b", "weight": 3},
            {"url": "http://c:1", "name": "c"},
        ]
    )
    assert describe_changes(old, new) == (
        "backend removed: a (http://a:1)",
        "backend added: c (http://c:1)",
        "backends[b].weight: 1 → 3",
    )


def test_reordered_backends_are_reported_as_an_order_change() -> None:
    a, b = {"url": "http://a:1", "name": "a"}, {"url": "http://b:1", "name": "b"}
    assert describe_changes(_config(backends=[a, b]), _config(backends=[b, a])) == (
        "backends: order a, b → b, a",
    )


def test_nested_values_are_shown_with_their_path() -> None:
    old = _config()
    new = _config(rate_limit={"enabled": True, "per_key": {"requests_per_minute": 60}})
    changes = describe_changes(old, new)
    assert "rate_limit.enabled: False → True" in changes
    assert any(line.startswith("rate_limit.per_key.requests_per_minute: ") for line in changes)


def test_secrets_are_never_shown() -> None:
    old = _config(
        api_keys=[{"key": "sk-old-secret-value"}],
        auth={"enabled": True, "storage": "file"},
    )
    new = _config(
        api_keys=[{"key": "sk-old-secret-value"}, {"key": "sk-new-secret-value"}],
        auth={"enabled": True, "storage": "file"},
        rate_limit={
            "enabled": True,
            "storage": "redis",
            "redis": {"addr": "127.0.0.1:6379", "password": "hunter2-password"},
        },
        usage_hook={"enabled": True, "url": "http://user:pw-in-url@billing/usage", "secret": "s3"},
    )
    text = "\n".join(describe_changes(old, new))
    for secret in ("sk-old-secret-value", "sk-new-secret-value", "hunter2-password", "pw-in-url"):
        assert secret not in text
    assert "api_keys: [1 entry] → [2 entries]" in text
    assert "rate_limit.redis.password: (unset) → (hidden)" in text
    assert "usage_hook.secret: (hidden) → (hidden)" in text


def test_listener_and_process_wide_sections_need_a_restart() -> None:
    old = _config()
    new = _config(
        listen=":9000",
        server={"workers": 2},
        usage={"database": "other.db"},
        admin={"socket": "/tmp/other.sock"},
    )
    needed = restart_needed(old, new)
    assert needed[0] == "listen address: :8000 → :9000"
    assert "server.workers: 1 → 2" in needed
    assert any(line.startswith("usage.database: ") for line in needed)
    assert any(line.startswith("admin.socket: ") for line in needed)


def test_server_listen_and_top_level_listen_are_one_address() -> None:
    old = _config(listen=":8000")
    new = _config(listen=":9999", server={"listen": ":8000"})
    assert restart_needed(old, new) == ()
    assert describe_changes(old, new) == ()


def test_live_sections_do_not_need_a_restart() -> None:
    new = _config(
        backends=[{"url": "http://z:1", "name": "z"}],
        routing={"load_balance_strategy": "least_connections"},
        rate_limit={"enabled": True},
        logging={"level": "debug"},
    )
    assert restart_needed(_config(), new) == ()


def test_the_reference_and_the_reload_read_one_restart_marker() -> None:
    """A key marked restart-only in the model is refused by a reload and documented as such."""
    new = _config(logging={"format": "json", "access_log": True}, server={"max_connections": 9})
    needed = restart_needed(_config(), new)
    assert "logging.format: 'text' → 'json'" in needed
    assert "logging.access_log: False → True" in needed
    assert "server.max_connections: 4096 → 9" in needed
    server, logging = (
        _section(render_reference(), "server"),
        _section(render_reference(), "logging"),
    )
    for key in ("workers", "max_connections", "listen"):
        assert "restart the daemon" in _row(server, key)
    assert "restart the daemon" in _row(logging, "access_log")
    assert "restart" not in _row(logging, "level")
    assert "restart" not in _row(server, "max_body_size")


def _section(reference: str, name: str) -> str:
    return reference.split(f"## `{name}`\n", 1)[1].split("\n## ", 1)[0]


def _row(section: str, key: str) -> str:
    return next(row for row in section.splitlines() if row.startswith(f"| `{key}` |"))
