"""Every daemon command's exit code, as documented (``ExitCode``, the man pages' EXIT STATUS):
0 success, 1 the daemon refused, 2 a usage error, 3 no daemon answers — one table, each case."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import Invoke
from tests.cli.fake_admin import FakeAdmin

Route = tuple[str, str]

COMMANDS: dict[str, tuple[list[str], Route]] = {
    "status": (["status"], ("GET", "/status")),
    "reload": (["reload"], ("POST", "/reload")),
    "keys add": (["keys", "add", "--name", "ci"], ("POST", "/keys")),
    "keys list": (["keys", "list"], ("GET", "/keys")),
    "keys show": (["keys", "show", "ci"], ("GET", "/keys/ci")),
    "keys update": (["keys", "update", "ci", "--rpm", "5"], ("PATCH", "/keys/ci")),
    "keys revoke": (["keys", "revoke", "ci", "--yes"], ("POST", "/keys/ci/revoke")),
    "teams add": (["teams", "add", "ml"], ("POST", "/teams")),
    "teams list": (["teams", "list"], ("GET", "/teams")),
    "teams show": (["teams", "show", "ml"], ("GET", "/teams/ml")),
    "teams update": (["teams", "update", "ml", "--rpm", "5"], ("PATCH", "/teams/ml")),
    "teams remove": (["teams", "remove", "ml", "--yes"], ("DELETE", "/teams/ml")),
    "backends status": (["backends", "status"], ("GET", "/backends")),
    "backends drain": (["backends", "drain", "gpu"], ("POST", "/backends/gpu/drain")),
    "backends undrain": (["backends", "undrain", "gpu"], ("POST", "/backends/gpu/undrain")),
    "usage recent": (["usage", "recent"], ("GET", "/usage/recent")),
    "usage summary": (["usage", "summary"], ("GET", "/usage/summary")),
    "usage dead-letters": (["usage", "dead-letters"], ("GET", "/usage/dead-letters")),
}
NAMES = sorted(COMMANDS)


@pytest.mark.parametrize("name", NAMES)
def test_success_exits_0(name: str, cli: Invoke, admin: FakeAdmin) -> None:
    args, (method, path) = COMMANDS[name]
    admin.route(method, path, {"ok": True})
    result = cli(*args, "--json", "--socket", str(admin.socket))
    assert result.exit_code == 0, result.output
    assert [(seen.method, seen.path) for seen in admin.seen][-1] == (method, path)


@pytest.mark.parametrize("name", NAMES)
def test_a_refusal_exits_1(name: str, cli: Invoke, admin: FakeAdmin) -> None:
    args, (method, path) = COMMANDS[name]
    admin.error(method, path, 409, "refused", "the daemon says no")
    result = cli(*args, "--json", "--socket", str(admin.socket))
    assert result.exit_code == 1, result.output
    assert "the daemon says no" in result.stderr


@pytest.mark.parametrize("name", NAMES)
def test_a_usage_error_exits_2(name: str, cli: Invoke, admin: FakeAdmin) -> None:
    args, _route = COMMANDS[name]
    result = cli(*args, "--no-such-option", "--socket", str(admin.socket))
    assert result.exit_code == 2, result.output
    assert admin.seen == []


@pytest.mark.parametrize("name", NAMES)
def test_no_daemon_exits_3(name: str, cli: Invoke, short_dir: Path) -> None:
    args, _route = COMMANDS[name]
    result = cli(*args, "--socket", str(short_dir / "none.sock"))
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output


def test_config_check_and_serve_agree_on_a_bad_file(cli: Invoke, tmp_path: Path) -> None:
    """An invalid file is a config error (2) for config check as for serve; a good one is 0."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends: []\nrouting: {load_balance_strategy: least_conections}\n")
    assert cli("config", "check", str(bad)).exit_code == 2
    assert cli("serve", "-c", str(bad)).exit_code == 2
    assert cli("config", "check", str(tmp_path / "missing.yaml")).exit_code == 2
    assert cli("config", "check").exit_code == 2  # a usage error: no FILE
