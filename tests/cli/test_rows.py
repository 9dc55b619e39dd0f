"""Rows, fields and request bodies of the operator commands: pure, no daemon needed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import typer

from llmproxy.cli import backends, keys, ops, usage

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC).timestamp()


def make_key(**fields: Any) -> dict[str, Any]:
    key: dict[str, Any] = {
        "id": "key_abc",
        "name": "ci",
        "prefix": "sk-llmp-abc",
        "user_id": "",
        "status": "active",
        "created_at": NOW - 86400,
        "updated_at": NOW - 3600,
        "expires_at": None,
        "revoked_at": None,
        "models": [],
        "allowed_ips": [],
        "total_quota": None,
        "used_quota": 0,
        "rpm": None,
        "tpm": None,
        "max_concurrent": None,
        "priority": None,
        "metadata": {},
    }
    key.update(fields)
    return key


# keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "state"),
    [
        ({}, "active"),
        ({"revoked_at": NOW - 1, "status": "disabled"}, "revoked"),
        ({"status": "disabled"}, "disabled"),
        ({"status": "quota_exceeded"}, "quota exceeded"),
        ({"expires_at": NOW - 1}, "expired"),
        ({"expires_at": NOW + 1}, "active"),
        ({"total_quota": 100, "used_quota": 100}, "quota exceeded"),
        ({"total_quota": 100, "used_quota": 99}, "active"),
    ],
)
def test_key_state_is_what_the_gateway_does_with_it(fields: dict[str, Any], state: str) -> None:
    assert keys.key_state(make_key(**fields), NOW) == state


def test_key_row() -> None:
    key = make_key(user_id="alice", total_quota=10000, used_quota=1234, expires_at=NOW + 86400 * 3)
    assert keys.key_row(key, NOW) == (
        "key_abc",
        "ci",
        "sk-llmp-abc",
        "alice",
        "active",
        "1,234 / 10,000",
        "in 3d",
    )


def test_key_row_defaults() -> None:
    row = keys.key_row(make_key(used_quota=5), NOW)
    assert row[3] == "-"
    assert row[5] == "5 / ∞"
    assert row[6] == "never"


def test_key_fields_show_everything_but_a_secret() -> None:
    key = make_key(
        models=["a", "b"],
        rpm=60,
        metadata={"team": "ml"},
        expires_at=datetime(2026, 7, 1, tzinfo=UTC).timestamp(),
    )
    fields = dict(keys.key_fields(key, NOW, UTC))
    assert fields["models"] == "a, b"
    assert fields["allowed ips"] == "any"
    assert fields["requests / min"] == "60"
    assert fields["tokens / min"] == "-"
    assert fields["metadata"] == '{"team": "ml"}'
    assert fields["expires"] == "2026-07-01 00:00 (in 29d 12h)"
    assert fields["revoked"] == "-"
    assert "secret" not in fields


def test_add_body_holds_only_what_was_given() -> None:
    body = keys.key_fields_body(now=NOW, models="a, b", quota=5, expires="1d", priority=0)
    assert body == {
        "models": ["a", "b"],
        "total_quota": 5,
        "priority": 0,
        "expires_at": NOW + 86400,
    }
    assert keys.key_fields_body(now=NOW) == {}


def test_bad_expiry_is_a_usage_error_naming_the_option() -> None:
    with pytest.raises(typer.BadParameter) as caught:
        keys.key_fields_body(now=NOW, expires="someday")
    assert caught.value.param_hint == "--expires"


def test_update_body_clears_to_each_fields_empty_value() -> None:
    body = keys.update_body(
        {},
        name=None,
        status=None,
        clear=keys.CLEAR_CHOICES,
        metadata=None,
        current_metadata=None,
        reset_used_quota=False,
    )
    assert body == {
        "user_id": "",
        "models": [],
        "allowed_ips": [],
        "total_quota": None,
        "rpm": None,
        "burst": None,
        "tpm": None,
        "max_concurrent": None,
        "priority": None,
        "expires_at": None,
        "metadata": {},
        "team": "",
        "budget": None,
    }


def test_update_body_merges_metadata_unless_cleared() -> None:
    common: dict[str, Any] = {"name": "new", "status": keys.Settable.disabled}
    merged = keys.update_body(
        {},
        **common,
        clear=[],
        metadata={"b": "2"},
        current_metadata={"a": 1, "b": "1"},
        reset_used_quota=True,
    )
    assert merged == {
        "name": "new",
        "status": "disabled",
        "metadata": {"a": 1, "b": "2"},
        "used_quota": 0,
    }
    replaced = keys.update_body(
        {},
        **common,
        clear=["metadata"],
        metadata={"b": "2"},
        current_metadata={"a": 1},
        reset_used_quota=False,
    )
    assert replaced["metadata"] == {"b": "2"}


def test_update_body_refuses_set_and_clear_of_one_field() -> None:
    with pytest.raises(typer.BadParameter, match="quota is both set and cleared"):
        keys.update_body(
            {"total_quota": 5},
            name=None,
            status=None,
            clear=["quota"],
            metadata=None,
            current_metadata=None,
            reset_used_quota=False,
        )


def test_key_path_quotes_the_ref() -> None:
    assert keys.key_path("key_abc") == "/keys/key_abc"
    assert keys.key_path("team a/b") == "/keys/team%20a%2Fb"


# backends ---------------------------------------------------------------------------------


def make_backend(**fields: Any) -> dict[str, Any]:
    backend: dict[str, Any] = {
        "name": "gpu-1",
        "url": "http://10.0.0.1:8000",
        "weight": 1,
        "models": ["llama"],
        "available": True,
        "probe_healthy": True,
        "draining": False,
        "ejected_for_seconds": 0.0,
        "in_flight": 3,
        "ttfb_ewma_ms": 123.4,
        "error_rate": 0.0125,
        "consecutive_failures": 0,
        "requests_total": 10,
        "failures_total": 0,
    }
    backend.update(fields)
    return backend


@pytest.mark.parametrize(
    ("fields", "health"),
    [
        ({}, "available"),
        ({"draining": True, "ejected_for_seconds": 5, "available": False}, "draining"),
        ({"ejected_for_seconds": 12.5, "available": False, "probe_healthy": False}, "ejected"),
        ({"probe_healthy": False, "available": False}, "probe down"),
        ({"available": False}, "unavailable"),
    ],
)
def test_backend_health(fields: dict[str, Any], health: str) -> None:
    assert backends.backend_health(make_backend(**fields)) == health


def test_backend_row() -> None:
    assert backends.backend_row(make_backend()) == (
        "gpu-1",
        "http://10.0.0.1:8000",
        "llama",
        "available",
        "3",
        "123",
        "1.2%",
        "-",
        "-",
        "-",
        "-",
    )
    loaded = make_backend(max_in_flight=8, queue_waiting=2, kv_cache_usage=0.5, affinity_share=0.25)
    assert backends.backend_row(loaded)[4:] == (
        "3/8", "123", "1.2%", "-", "2", "50.0%", "25.0%"
    )  # fmt: skip
    ejected = make_backend(models=None, ejected_for_seconds=75.0, ttfb_ewma_ms=None)
    row = backends.backend_row(ejected)
    assert (row[2], row[3], row[5], row[7]) == ("any", "ejected", "-", "1m 15s")


def test_watch_refreshes_until_interrupted() -> None:
    shown: list[int] = []
    sleeps: list[float] = []
    counter = iter(range(100))

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backends.watch(lambda: next(counter), 0.5, show=shown.append, sleep=sleep)
    assert shown == [0, 1, 2]
    assert sleeps == [0.5] * 4


def test_backend_path_keeps_a_url_name_in_one_segment() -> None:
    assert backends.backend_path("gpu-1", "drain") == "/backends/gpu-1/drain"
    assert (
        backends.backend_path("http://10.0.0.1:8000", "undrain")
        == "/backends/http%3A%2F%2F10.0.0.1%3A8000/undrain"
    )


# usage ------------------------------------------------------------------------------------


def make_record(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "time": datetime(2026, 6, 1, 11, 59, 30, tzinfo=UTC).timestamp(),
        "key_id": "key_abc",
        "key_name": "ci",
        "key_prefix": "sk-llmp-abc",
        "model": "llama",
        "backend": "gpu-1",
        "status": 200,
        "prompt_tokens": 1200,
        "completion_tokens": 34,
        "ttft_ms": 95.0,
        "latency_ms": 812.5,
        "cancelled": False,
    }
    record.update(fields)
    return record


def test_usage_row() -> None:
    assert usage.usage_row(make_record(), NOW, UTC) == (
        "11:59:30",
        "ci",
        "llama",
        "gpu-1",
        "200",
        "1,200",
        "34",
        "95",
        "812",
    )


def test_usage_row_dates_older_records_unless_asked_for_the_clock() -> None:
    record = make_record(time=NOW - 86400)
    assert usage.usage_row(record, NOW, UTC)[0] == "2026-05-31 12:00"
    assert usage.usage_row(record, NOW, UTC, clock=True)[0] == "12:00:00"


def test_usage_row_without_key_backend_or_ttft() -> None:
    record = make_record(key_name="", key_prefix="", key_id="", backend="", ttft_ms=None)
    row = usage.usage_row(record, NOW, UTC)
    assert (row[1], row[3], row[7]) == ("-", "-", "-")
    assert usage.key_label(make_record(key_name="", key_prefix="sk-p")) == "sk-p"


@pytest.mark.parametrize(
    ("fields", "text", "style"),
    [
        ({}, "200", "green"),
        ({"status": 429}, "429", "yellow"),
        ({"status": 502}, "502", "red"),
        ({"cancelled": True}, "cancelled", "yellow"),
    ],
)
def test_usage_status(fields: dict[str, Any], text: str, style: str) -> None:
    record = make_record(**fields)
    assert usage.status_text(record) == text
    assert usage.status_style(record) == style


def test_fixed_columns_pad_numbers_right_and_cut_long_text() -> None:
    cells = ("12:00:00", "a-very-long-key-name-here", "m", "b", "200", "1", "2", "3", "4")
    line = usage.fixed_columns(cells)
    assert line.startswith("12:00:00 a-very-long-key… m ")
    assert len(line) == sum(usage.WIDTHS) + len(usage.WIDTHS) - 1
    assert line.endswith("         4")


def test_summary_rows_sorted_with_totals() -> None:
    rows: list[dict[str, Any]] = [
        {"key_name": "zed", "model": "m", "requests": 1, "prompt_tokens": 10,
         "completion_tokens": 1, "total_tokens": 11},
        {"key_name": "", "key_id": "key_b", "model": "m", "requests": 2, "prompt_tokens": 20,
         "completion_tokens": 2, "total_tokens": 22},
        {"key_name": None, "key_id": None, "model": "x", "requests": 3, "prompt_tokens": 30,
         "completion_tokens": 3, "total_tokens": 33},
    ]  # fmt: skip
    body, totals = usage.summary_rows(rows)
    assert body == [
        ("(no key)", "x", 3, 30, 3, 33, 0.0),
        ("key_b", "m", 2, 20, 2, 22, 0.0),
        ("zed", "m", 1, 10, 1, 11, 0.0),
    ]
    assert totals == ("total", "", 6, 60, 6, 66, 0.0)


def test_filters_leave_out_what_was_not_given() -> None:
    assert usage.filters(None, None) == {}
    assert usage.filters("ci", "llama") == {"key": "ci", "model": "llama"}


# status and reload ------------------------------------------------------------------------


def status_doc(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": "0.1.0",
        "pid": 4242,
        "started_at": NOW - 3725,
        "uptime_seconds": 3725.2,
        "config_path": "/etc/llmproxy/config.yaml",
        "config_version": 4,
        "listen": ":8000",
        "in_flight": 12,
        "retired_snapshots": 0,
        "reloads": {"ok": 3, "failed": 1, "last": None},
        "usage": {"queued": 0, "outbox_depth": 0, "dead_letters": 0},
    }
    doc.update(fields)
    return doc


def test_status_lines() -> None:
    lines = {label: (value, style) for label, value, style in ops.status_lines(status_doc(), NOW)}
    assert lines["version"] == ("0.1.0", "")
    assert lines["pid"] == ("4242", "")
    assert lines["uptime"] == ("1h 2m", "")
    assert lines["config"] == ("/etc/llmproxy/config.yaml (version 4)", "")
    assert lines["in flight"] == ("12", "")
    assert lines["reloads"] == ("3 ok, 1 failed", "")
    assert lines["last reload"] == ("none since start", "")
    assert lines["usage"][0] == "0 queued, 0 in the webhook outbox, 0 dead letters"


def test_status_lines_flag_trouble() -> None:
    failed = {
        "ok": False,
        "dry_run": False,
        "changes": [],
        "error": "config.yaml:4: routing.x: bad\nconfig.yaml:9: y: bad",
        "config_version": 4,
        "at": NOW - 300,
        "trigger": "sighup",
    }
    doc = status_doc(
        config_path=None,
        retired_snapshots=2,
        reloads={"ok": 0, "failed": 1, "last": failed},
        usage={"queued": 5, "outbox_depth": 1200, "dead_letters": 3},
    )
    lines = {label: (value, style) for label, value, style in ops.status_lines(doc, NOW)}
    assert lines["config"][0].startswith("(embedded demo config)")
    assert "2 older config snapshots" in lines["in flight"][0]
    value, style = lines["last reload"]
    assert value.startswith("failed 5m ago (sighup): config.yaml:4: routing.x: bad")
    assert "+1 more lines" in value
    assert style == "red"
    assert lines["usage"] == (
        "5 queued, 1,200 in the webhook outbox, 3 dead letters",
        "yellow",
    )
    assert ops.usage_summary(None)[0].startswith("not recorded")


def test_last_reload_ok() -> None:
    outcome = {"ok": True, "dry_run": False, "at": NOW - 60, "trigger": "file", "config_version": 5}
    assert ops.reload_summary(outcome, NOW) == ("ok 1m ago (file), config version 5", "")


@pytest.mark.parametrize(
    ("outcome", "lines"),
    [
        (
            {"ok": True, "dry_run": False, "changes": [], "config_version": 4},
            ["no changes: the file matches the running config (version 4)"],
        ),
        (
            {"ok": True, "dry_run": False, "changes": ["backend added: b"], "config_version": 5},
            ["reloaded: config version 5", "  - backend added: b"],
        ),
        (
            {"ok": True, "dry_run": True, "changes": [], "config_version": 4},
            ["dry run: the config is valid; no changes from the running config"],
        ),
        (
            {"ok": True, "dry_run": True, "changes": ["x", "y"], "config_version": 4},
            ["dry run: the config is valid; a reload would change:", "  - x", "  - y"],
        ),
    ],
)
def test_reload_lines(outcome: dict[str, Any], lines: list[str]) -> None:
    assert ops.reload_lines(outcome) == lines


def test_models_out_are_marked_in_the_models_cell() -> None:
    """A model out on its own shows with how long it stays out; the backend stays available."""
    from llmproxy.cli.backends import models_cell

    assert models_cell({"models": ["ok", "broken"], "models_out": {"broken": 25.0}}) == (
        "ok, broken (out 25s)"
    )
    assert models_cell({"models": None, "models_out": {"x": 3.0}}) == "any, x (out 3s)"
    assert models_cell({"models": None}) == "any"


def test_team_spend_is_shown_against_its_budget() -> None:
    """``teams show``: what the team spent this period, of its budget, as a share."""
    from llmproxy.cli.teams import spent_text

    assert spent_text({"amount": 81.2, "currency": "USD"}, 100) == "81.20 of 100.00 USD (81 %)"
    assert spent_text({"amount": 3, "currency": "EUR"}, None) == "3.00 EUR"


def test_usage_summary_by_team_and_model_with_cost() -> None:
    """``usage summary --by team`` adds up keys of a team; ``--by model`` has no model column
    and sums cost across keys."""
    rows: list[dict[str, Any]] = [
        {"key_id": "a", "team": "ml", "model": "m", "requests": 1, "total_tokens": 10,
         "cost": 0.5},
        {"key_id": "b", "team": "ml", "model": "m", "requests": 2, "total_tokens": 20,
         "cost": 0.25},
        {"key_id": "c", "team": "", "model": "x", "requests": 1, "total_tokens": 5, "cost": 0.0},
    ]  # fmt: skip
    body, totals = usage.summary_rows(rows, "team")
    assert body == [("(no team)", "x", 1, 0, 0, 5, 0.0), ("ml", "m", 3, 0, 0, 30, 0.75)]
    assert totals[6] == 0.75
    body, _ = usage.summary_rows(rows, "model")
    assert body == [("m", "", 3, 0, 0, 30, 0.75), ("x", "", 1, 0, 0, 5, 0.0)]
