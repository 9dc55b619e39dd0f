"""`llmproxy status` and `llmproxy reload` against a fake admin API."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.cli.conftest import Invoke
from tests.cli.fake_admin import FakeAdmin, error_body
from tests.cli.test_rows import status_doc


def sock(admin: FakeAdmin) -> list[str]:
    return ["--socket", str(admin.socket)]


def outcome(**fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ok": True,
        "dry_run": False,
        "changes": [],
        "error": None,
        "config_version": 2,
        "at": time.time(),
        "trigger": "admin",
    }
    data.update(fields)
    return data


def test_status(cli: Invoke, admin: FakeAdmin) -> None:
    doc = status_doc(reloads={"ok": 1, "failed": 0, "last": outcome(config_version=4)})
    admin.route("GET", "/status", doc)
    result = cli("status", *sock(admin))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["version", "0.1.0"]
    assert "config       /etc/llmproxy/config.yaml (version 4)" in lines
    assert "in flight    12" in lines
    assert any(
        line.startswith("last reload  ok 0s ago (admin), config version 4") for line in lines
    )
    assert "usage        0 queued, 0 in the webhook outbox, 0 dead letters" in lines
    assert all(line == line.rstrip() for line in lines)


def test_status_json_is_the_api_answer(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("GET", "/status", status_doc())
    result = cli("status", "--json", *sock(admin))
    assert result.exit_code == 0
    assert json.loads(result.stdout) == status_doc()


def test_reload_prints_the_changes(cli: Invoke, admin: FakeAdmin) -> None:
    changes = ["backend added: gpu-3 (http://10.0.0.3:8000)", "routing.strategy: a -> b"]
    admin.route("POST", "/reload", outcome(changes=changes, config_version=5))
    result = cli("reload", *sock(admin))
    assert result.exit_code == 0
    assert admin.seen[0].body == {"dry_run": False}
    assert result.stdout.splitlines() == [
        "reloaded: config version 5",
        "  - backend added: gpu-3 (http://10.0.0.3:8000)",
        "  - routing.strategy: a -> b",
    ]


def test_reload_without_changes(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("POST", "/reload", outcome())
    result = cli("reload", *sock(admin))
    assert result.exit_code == 0
    assert result.stdout.startswith("no changes")


def test_dry_run(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("POST", "/reload", outcome(dry_run=True, changes=["x"]))
    result = cli("reload", "--dry-run", *sock(admin))
    assert result.exit_code == 0
    assert admin.seen[0].body == {"dry_run": True}
    assert result.stdout.splitlines() == [
        "dry run: the config is valid; a reload would change:",
        "  - x",
    ]


REFUSAL = "config.yaml:4: routing.load_balance_strategy: expected one of ...\nconfig.yaml:9: x: bad"


def refused() -> dict[str, Any]:
    body = error_body("config_invalid", REFUSAL)
    body["outcome"] = outcome(ok=False, error=REFUSAL, config_version=1)
    return body


def test_refused_reload_prints_file_and_line_and_exits_1(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("POST", "/reload", refused(), status=422)
    result = cli("reload", *sock(admin))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: reload refused; the running config is unchanged",
        *REFUSAL.splitlines(),
    ]


def test_refused_reload_json(cli: Invoke, admin: FakeAdmin) -> None:
    body = refused()
    admin.route("POST", "/reload", body, status=422)
    result = cli("reload", "--json", *sock(admin))
    assert result.exit_code == 1
    assert json.loads(result.stdout) == body
    assert "config.yaml:4" in result.stderr


def test_reload_other_errors_keep_their_code(cli: Invoke, admin: FakeAdmin) -> None:
    admin.error("POST", "/reload", 409, "reload_running", "a reload is already running")
    result = cli("reload", *sock(admin))
    assert result.exit_code == 1
    assert result.stderr == "error: a reload is already running\n"
