"""Every daemon command fails the same documented way: message on stderr, stable exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import Invoke
from tests.cli.fake_admin import FakeAdmin

NO_DAEMON = "no daemon answers on the admin socket: is `llmproxy serve` running? socket: "

COMMANDS = [
    ["status"],
    ["reload"],
    ["reload", "--dry-run"],
    ["keys", "add", "--name", "ci"],
    ["keys", "list"],
    ["keys", "show", "ci"],
    ["keys", "revoke", "ci", "--yes"],
    ["keys", "update", "ci", "--rpm", "5"],
    ["backends", "status"],
    ["backends", "status", "--watch"],
    ["backends", "drain", "gpu-1"],
    ["backends", "undrain", "gpu-1"],
    ["usage", "tail"],
    ["usage", "recent"],
    ["usage", "summary"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_no_daemon_exits_3_with_the_hint(cli: Invoke, tmp_path: Path, args: list[str]) -> None:
    socket = tmp_path / "missing" / "admin.sock"
    result = cli(*args, "--socket", str(socket))
    assert result.exit_code == 3, result.output
    assert result.stderr.strip() == f"error: {NO_DAEMON}{socket}"
    assert result.stdout == ""


@pytest.mark.parametrize("args", COMMANDS[:3], ids=" ".join)
def test_no_daemon_with_json_keeps_stdout_empty(
    cli: Invoke, tmp_path: Path, args: list[str]
) -> None:
    result = cli(*args, "--json", "--socket", str(tmp_path / "none.sock"))
    assert result.exit_code == 3
    assert result.stdout == ""


def test_no_daemon_found_through_the_config(
    cli: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --socket the message names the path the config leads to."""
    config = tmp_path / "config.yaml"
    config.write_text("backends: [{url: 'http://127.0.0.1:9001'}]\nadmin: {socket: run/a.sock}\n")
    monkeypatch.chdir(tmp_path)
    result = cli("status")
    assert result.exit_code == 3
    assert f"socket: {tmp_path / 'run' / 'a.sock'}" in result.stderr
    result = cli("status", "-c", str(config))
    assert result.exit_code == 3
    assert f"socket: {tmp_path / 'run' / 'a.sock'}" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "add"],  # --name is required
        ["keys", "add", "--name", "ci", "--quota", "0"],
        ["keys", "add", "--name", "ci", "--quota", "lots"],
        ["keys", "add", "--name", "ci", "--expires", "someday"],
        ["keys", "add", "--name", "ci", "--expires", "2001-01-01"],
        ["keys", "add", "--name", "ci", "--metadata", "novalue"],
        ["keys", "update", "ci"],  # nothing to change
        ["keys", "update", "ci", "--quota", "5", "--clear", "quota"],
        ["keys", "update", "ci", "--clear", "name"],
        ["keys", "update", "ci", "--status", "expired"],
        ["keys", "show"],
        ["keys", "list", "--bogus"],
        ["backends", "status", "--interval", "0"],
        ["backends", "drain"],
        ["usage", "summary", "--since", "0"],
        ["usage", "summary", "--since", "yesterday"],
        ["usage", "recent", "--limit", "0"],
        ["status", "--socket", "/x.sock", "--admin-url", "http://127.0.0.1:1"],
        ["status", "--admin-url", "127.0.0.1:9090"],
        ["status", "--config", "/nonexistent/config.yaml"],
    ],
    ids=" ".join,
)
def test_usage_errors_exit_2_before_any_request(
    cli: Invoke, admin: FakeAdmin, args: list[str]
) -> None:
    extra = [] if "--socket" in args or "--config" in args else ["--socket", str(admin.socket)]
    if "--admin-url" in args and "--socket" not in args:
        extra = []
    result = cli(*args, *extra)
    assert result.exit_code == 2, result.output
    assert admin.seen == []


def test_invalid_config_names_file_and_line(cli: Invoke, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("backends: [\n")
    result = cli("status", "-c", str(config))
    assert result.exit_code == 2
    assert f"error: {config}: the config is invalid" in result.stderr
    assert f"{config}:2" in result.stderr


def test_config_from_the_environment(
    cli: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "env.yaml"
    config.write_text("backends: [{url: 'http://127.0.0.1:9001'}]\nadmin: {socket: e.sock}\n")
    monkeypatch.setenv("LLMPROXY_CONFIG", str(config))
    from typer.testing import CliRunner

    from llmproxy.cli.main import app

    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 3
    assert f"socket: {tmp_path / 'e.sock'}" in result.stderr


def test_api_error_exits_1_with_its_message(cli: Invoke, admin: FakeAdmin) -> None:
    admin.error("GET", "/keys/ghost", 404, "key_not_found", "no key with id, prefix or name 'x'")
    result = cli("keys", "show", "ghost", "--socket", str(admin.socket))
    assert result.exit_code == 1
    assert result.stderr == "error: no key with id, prefix or name 'x'\n"
    assert result.stdout == ""


def test_api_error_with_json_prints_the_body_on_stdout(cli: Invoke, admin: FakeAdmin) -> None:
    admin.error("GET", "/keys/ghost", 404, "key_not_found", "nope")
    result = cli("keys", "show", "ghost", "--json", "--socket", str(admin.socket))
    assert result.exit_code == 1
    assert '"code": "key_not_found"' in result.stdout
    assert "error: nope" in result.stderr


def test_bad_value_refused_by_the_daemon_is_a_usage_error(cli: Invoke, admin: FakeAdmin) -> None:
    admin.error("POST", "/keys", 400, "invalid_request", "allowed_ips: 'x' is not an IP address")
    result = cli("keys", "add", "--name", "n", "--allowed-ips", "x", "--socket", str(admin.socket))
    assert result.exit_code == 2
    assert "allowed_ips: 'x' is not an IP address" in result.stderr


def test_no_key_store_gets_a_hint(cli: Invoke, admin: FakeAdmin) -> None:
    admin.error("GET", "/keys", 409, "no_key_store", "this daemon has no builtin key store")
    result = cli("keys", "list", "--socket", str(admin.socket))
    assert result.exit_code == 1
    assert "auth.storage: builtin" in result.stderr


def test_exit_codes_are_in_the_help(cli: Invoke) -> None:
    for args in (["status"], ["reload"], ["keys"], ["keys", "add"], ["backends"], ["usage"]):
        result = cli(*args, "--help")
        assert result.exit_code == 0
        text = " ".join(result.stdout.split())
        assert "Exit codes: 0 success; 1 the daemon refused" in text, args
        assert "3 no daemon answers" in text, args
