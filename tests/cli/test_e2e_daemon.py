"""The operator commands against a real daemon: ``llmproxy serve`` in a subprocess.

The CLI finds the daemon the way an operator's does — through ``-c config.yaml`` — and every
change it makes is checked where it matters: a key added works on the gateway, a revoked one is
refused, a drained backend reports draining, a broken config is refused with its line.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.cli.conftest import Invoke
from tests.cli.fake_admin import short_socket_dir
from tests.cli.live_daemon import Daemon, config_text, daemon
from tests.e2e.daemon import LLMPROXY, free_port, wait_until_up

__all__ = ["daemon"]  # the module's fixture


def eventually(check: Callable[[], Any], within: float = 10.0) -> Any:
    """``check()``'s first truthy result, polling: usage records are written in batches."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def test_status_through_the_config(cli: Invoke, daemon: Daemon) -> None:
    result = cli("status", "-c", str(daemon.config))
    assert result.exit_code == 0, result.output
    assert f"pid          {daemon.pid}" in result.stdout.splitlines()
    assert str(daemon.config) in result.stdout
    status = json.loads(cli("status", "--json", "-c", str(daemon.config)).stdout)
    assert status["pid"] == daemon.pid
    assert status["config_path"] == str(daemon.config)


def test_key_lifecycle_is_enforced_by_the_gateway(cli: Invoke, daemon: Daemon) -> None:
    config = ["-c", str(daemon.config)]
    added = cli("keys", "add", "--name", "lifecycle", "--user-id", "ops", *config)
    assert added.exit_code == 0, added.output
    secret = added.stdout.strip()
    assert secret.startswith("sk-")
    assert daemon.chat(secret) == 200

    listed = cli("keys", "list", "--user-id", "ops", *config)
    assert listed.exit_code == 0
    row = next(line.split() for line in listed.stdout.splitlines() if "lifecycle" in line)
    assert row[1:] == ["lifecycle", row[2], "ops", "active", "0", "/", "∞", "never"]
    assert secret.startswith(row[2])

    disabled = cli("keys", "update", "lifecycle", "--status", "disabled", *config)
    assert disabled.exit_code == 0, disabled.output
    assert daemon.chat(secret) == 403
    assert cli("keys", "update", "lifecycle", "--status", "active", *config).exit_code == 0
    assert daemon.chat(secret) == 200

    revoked = cli("keys", "revoke", "lifecycle", "--yes", *config)
    assert revoked.exit_code == 0, revoked.output
    assert daemon.chat(secret) == 401
    shown = cli("keys", "show", "lifecycle", *config)
    assert "revoked" in shown.stdout
    assert cli("keys", "list", *config).stdout.count("lifecycle") == 0
    assert cli("keys", "list", "--all", *config).stdout.count("lifecycle") == 1


def test_key_fields_round_trip(cli: Invoke, daemon: Daemon) -> None:
    config = ["-c", str(daemon.config)]
    added = cli(
        "keys", "add", "--name", "fields", "--models", "mock-model", "--quota", "500",
        "--rpm", "60", "--expires", "2099-01-01", "--allowed-ips", "10.1.2.3/8",
        "--metadata", "team=ml", "--metadata", "tier:=2", "--json", *config,
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    key = json.loads(added.stdout)["key"]
    assert key["models"] == ["mock-model"]
    assert key["allowed_ips"] == ["10.0.0.0/8"]
    assert (key["total_quota"], key["rpm"]) == (500, 60)
    assert key["expires_at"] == 4070908800.0
    assert key["metadata"] == {"team": "ml", "tier": 2}

    updated = cli(
        "keys", "update", key["id"], "--clear", "quota", "--clear", "expires",
        "--metadata", "tier:=3", "--json", *config,
    )  # fmt: skip
    assert updated.exit_code == 0, updated.output
    changed = json.loads(updated.stdout)["key"]
    assert (changed["total_quota"], changed["expires_at"]) == (None, None)
    assert changed["metadata"] == {"team": "ml", "tier": 3}

    refused = cli("keys", "update", "fields", "--allowed-ips", "not-an-ip", *config)
    assert refused.exit_code == 2
    assert "not-an-ip" in refused.stderr
    missing = cli("keys", "show", "no-such-key", *config)
    assert missing.exit_code == 1
    assert "no-such-key" in missing.stderr


def test_drain_and_undrain(cli: Invoke, daemon: Daemon) -> None:
    config = ["-c", str(daemon.config)]
    assert cli("backends", "drain", "spare", *config).exit_code == 0
    table = cli("backends", "status", *config).stdout
    assert next(line for line in table.splitlines() if line.startswith("spare")).split()[3] == (
        "draining"
    )
    assert cli("backends", "undrain", "spare", *config).exit_code == 0
    backends = json.loads(cli("backends", "status", "--json", *config).stdout)["backends"]
    assert {b["name"]: b["draining"] for b in backends} == {"mock": False, "spare": False}
    unknown = cli("backends", "drain", "nope", *config)
    assert unknown.exit_code == 1
    assert "nope" in unknown.stderr


def test_usage_recent_and_summary(cli: Invoke, daemon: Daemon) -> None:
    config = ["-c", str(daemon.config)]
    secret = cli("keys", "add", "--name", "usage-reader", *config).stdout.strip()
    assert daemon.chat(secret) == 200
    assert daemon.chat(secret) == 200

    def recent() -> list[dict[str, Any]]:
        result = cli("usage", "recent", "--key", "usage-reader", "--json", *config)
        records: list[dict[str, Any]] = json.loads(result.stdout)["records"]
        return records if len(records) == 2 else []

    records = eventually(recent)
    assert [(r["key_name"], r["model"], r["completion_tokens"]) for r in records] == [
        ("usage-reader", "mock-model", 3)
    ] * 2
    table = cli("usage", "recent", "--key", "usage-reader", *config).stdout.splitlines()
    assert len(table) == 3
    assert table[1].split()[1:5] == ["usage-reader", "mock-model", "mock", "200"]

    summary = json.loads(cli("usage", "summary", "--since", "10m", "--json", *config).stdout)
    mine = [row for row in summary["rows"] if row["key_name"] == "usage-reader"]
    assert [(row["requests"], row["completion_tokens"]) for row in mine] == [(2, 6)]
    text = cli("usage", "summary", *config).stdout
    assert any(
        line.split()[:3] == ["usage-reader", "mock-model", "2"] for line in text.splitlines()
    )


def test_usage_tail_follows_requests_and_ctrl_c_exits_0(cli: Invoke, daemon: Daemon) -> None:
    secret = cli("keys", "add", "--name", "tailed", "-c", str(daemon.config)).stdout.strip()
    tail = subprocess.Popen(
        [*LLMPROXY, "usage", "tail", "--json", "--key", "tailed", "-c", str(daemon.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tail.stdout is not None
        # The tail subscribes some time after it starts: keep asking until a record shows.
        deadline = time.monotonic() + 20
        line = ""
        while not line and time.monotonic() < deadline:
            assert daemon.chat(secret) == 200
            with contextlib.suppress(subprocess.TimeoutExpired):
                tail.wait(0.3)  # only a pause; the tail keeps running
            line = _ready_line(tail)
        record = json.loads(line)
        assert (record["key_name"], record["model"], record["status"]) == (
            "tailed",
            "mock-model",
            200,
        )
        tail.send_signal(signal.SIGINT)
        assert tail.wait(10) == 0
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
        for stream in (tail.stdout, tail.stderr):
            if stream is not None:
                stream.close()


def _ready_line(process: subprocess.Popen[str]) -> str:
    """A line of ``process``'s stdout if one is waiting, else ``""`` (without blocking)."""
    import selectors

    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if selector.select(timeout=0):
            return process.stdout.readline()
    return ""


def test_reload_refused_then_applied(cli: Invoke, daemon: Daemon) -> None:
    config = ["-c", str(daemon.config)]
    original = daemon.config.read_text()
    try:
        daemon.config.write_text(original.replace("round_robin", "round_robbin"))
        refused = cli("reload", *config)
        assert refused.exit_code == 1, refused.output
        assert refused.stdout == ""
        lines = refused.stderr.splitlines()
        assert lines[0] == "error: reload refused; the running config is unchanged"
        assert any(
            line.startswith(f"{daemon.config}:5: routing.load_balance_strategy") for line in lines
        )
        status = json.loads(cli("status", "--json", *config).stdout)
        assert status["reloads"]["last"]["ok"] is False

        daemon.config.write_text(original.replace("round_robin", "least_connections"))
        dry = cli("reload", "--dry-run", *config)
        assert dry.exit_code == 0, dry.output
        assert dry.stdout.startswith("dry run: the config is valid")
        applied = cli("reload", "--json", *config)
        assert applied.exit_code == 0, applied.output
        assert json.loads(applied.stdout)["ok"] is True
    finally:
        daemon.config.write_text(original)
        cli("reload", *config)


def test_stopped_daemon_is_reported_as_unreachable(cli: Invoke, tmp_path: Path) -> None:
    """A daemon that is killed leaves its socket file behind: still "no daemon", exit 3."""
    socket_dir = short_socket_dir()
    socket = Path(socket_dir) / "admin.sock"
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(config_text(port, free_port(), socket))
    process = subprocess.Popen(
        [*LLMPROXY, "serve", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", process)
        assert eventually(socket.exists)
        assert cli("status", "-c", str(config)).exit_code == 0
        process.kill()
        process.wait(10)
        result = cli("status", "-c", str(config))
        assert result.exit_code == 3
        assert result.stderr.strip().endswith(f"socket: {socket}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(socket_dir, ignore_errors=True)


def test_teams_lifecycle_through_the_cli(cli: Invoke, daemon: Daemon) -> None:
    """teams add/list/show/update/remove, keys --team: exit codes, tables, JSON, refusals."""
    config = ["-c", str(daemon.config)]
    added = cli(
        "teams", "add", "research", "--budget", "100", "--period", "weekly", "--rpm", "600",
        "--tpm", "200000", "--max-concurrent", "20", "--quota", "5000000",
        "--description", "R&D", *config,
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "100.00 weekly" in added.stdout
    again = cli("teams", "add", "research", *config)
    assert again.exit_code == 1
    assert "a team named 'research' exists" in again.stderr
    bad = cli("teams", "add", "research", "--period", "yearly", *config)
    assert bad.exit_code == 2

    ghost = cli("keys", "add", "--name", "orphan", "--team", "ghost", *config)
    assert ghost.exit_code == 2
    assert "no team named 'ghost'" in ghost.stderr
    secret = cli(
        "keys", "add", "--name", "member", "--team", "research", "--budget", "5",
        "--budget-period", "daily", *config,
    ).stdout.strip()  # fmt: skip
    assert daemon.chat(secret) == 200
    key = json.loads(cli("keys", "show", "member", "--json", *config).stdout)["key"]
    assert (key["team"], key["budget"], key["budget_period"]) == ("research", 5.0, "daily")
    assert "5.00 daily" in cli("keys", "show", "member", *config).stdout

    row = next(
        line.split() for line in cli("teams", "list", *config).stdout.splitlines()
        if line.startswith("research")
    )  # fmt: skip
    assert row[:4] == ["research", "1", "100.00", "weekly"]
    shown = cli("teams", "show", "research", *config).stdout
    assert key["id"] in shown
    assert key["prefix"] in shown
    assert secret not in shown

    updated = cli("teams", "update", "research", "--clear", "rpm", "--json", *config)
    assert updated.exit_code == 0, updated.output
    assert json.loads(updated.stdout)["team"]["rpm"] is None

    refused = cli("teams", "remove", "research", "--yes", *config)
    assert refused.exit_code == 1
    assert "still has 1 key(s)" in refused.stderr
    removed = cli("teams", "remove", "research", "--force", "--yes", *config)
    assert removed.exit_code == 0, removed.output
    assert "1 key(s) left without a team" in removed.stdout
    assert json.loads(cli("keys", "show", "member", "--json", *config).stdout)["key"]["team"] == ""
    assert daemon.chat(secret) == 200
    assert cli("teams", "show", "research", *config).exit_code == 1
