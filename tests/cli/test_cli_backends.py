"""`llmproxy backends ...` against a fake admin API."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from llmproxy.cli import backends
from tests.cli.conftest import Invoke
from tests.cli.fake_admin import FakeAdmin
from tests.cli.test_rows import make_backend


def sock(admin: FakeAdmin) -> list[str]:
    return ["--socket", str(admin.socket)]


def listed() -> dict[str, Any]:
    return {
        "backends": [
            make_backend(),
            make_backend(name="gpu-2", url="http://10.0.0.2:8000", draining=True, in_flight=0),
        ]
    }


def test_status_table(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("GET", "/backends", listed())
    result = cli("backends", "status", *sock(admin))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "NAME", "URL", "MODELS", "HEALTH", "IN", "FLIGHT", "EWMA", "MS", "ERRORS", "EJECTED", "FOR",
        "QUEUE", "KV", "CACHE", "AFFINITY",
    ]  # fmt: skip
    assert lines[1].split() == [
        "gpu-1", "http://10.0.0.1:8000", "llama", "available", "3", "123", "1.2%", "-",
        "-", "-", "-",
    ]  # fmt: skip
    assert lines[2].split()[3] == "draining"


def test_status_json(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("GET", "/backends", listed())
    result = cli("backends", "status", "--json", *sock(admin))
    assert json.loads(result.stdout) == listed()


def fake_sleep(interrupt_after: int) -> Callable[[float], None]:
    calls: list[float] = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == interrupt_after:
            raise KeyboardInterrupt

    return sleep


@pytest.fixture
def quick_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    """--watch without waiting: Ctrl-C arrives at the third pause."""
    real = backends.watch

    def watch(render: Callable[[], Any], interval: float, *, show: Callable[[Any], None]) -> Any:
        return real(render, interval, show=show, sleep=fake_sleep(3))

    monkeypatch.setattr(backends, "watch", watch)


@pytest.mark.usefixtures("quick_watch")
def test_watch_refreshes_until_ctrl_c_and_exits_0(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("GET", "/backends", listed())
    result = cli("backends", "status", "--watch", "--interval", "0.5", *sock(admin))
    assert result.exit_code == 0, result.output
    assert len(admin.seen) == 3  # the first table, then a refresh after each of two pauses
    assert "gpu-2" in result.stdout


@pytest.mark.usefixtures("quick_watch")
def test_watch_shows_an_error_in_place_and_keeps_going(cli: Invoke, admin: FakeAdmin) -> None:
    """A daemon restarting under a watch is shown, not fatal."""
    admin.route("GET", "/backends", listed())
    admin.error("GET", "/backends", 503, "starting", "the daemon is starting", then=True)
    admin.route("GET", "/backends", listed(), then=True)
    result = cli("backends", "status", "--watch", *sock(admin))
    assert result.exit_code == 0, result.output
    assert len(admin.seen) == 3


def test_watch_of_no_daemon_fails_at_once(cli: Invoke, tmp_path: Any) -> None:
    result = cli("backends", "status", "--watch", "--socket", str(tmp_path / "x.sock"))
    assert result.exit_code == 3


@pytest.mark.usefixtures("quick_watch")
def test_watch_json_prints_one_line_per_refresh(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("GET", "/backends", listed())
    result = cli("backends", "status", "--watch", "--json", *sock(admin))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert all(json.loads(line) == listed() for line in lines)


@pytest.mark.parametrize("action", ["drain", "undrain"])
def test_drain_and_undrain(cli: Invoke, admin: FakeAdmin, action: str) -> None:
    backend = make_backend(draining=action == "drain", in_flight=2)
    admin.route("POST", f"/backends/gpu-1/{action}", {"backend": backend})
    result = cli("backends", action, "gpu-1", *sock(admin))
    assert result.exit_code == 0, result.output
    assert [(seen.method, seen.path) for seen in admin.seen] == [
        ("POST", f"/backends/gpu-1/{action}")
    ]
    expected = (
        "gpu-1 is draining: no new requests; 2 in flight will finish."
        if action == "drain"
        else "gpu-1 takes new requests again (health: available)."
    )
    assert result.stdout.strip() == expected


def test_drain_by_url_name(cli: Invoke, admin: FakeAdmin) -> None:
    """An unnamed backend is named by its url; it travels as one path segment."""
    url = "http://10.0.0.9:8000"
    admin.route("POST", f"/backends/{url}/drain", {"backend": make_backend(name=url, url=url)})
    result = cli("backends", "drain", url, *sock(admin))
    assert result.exit_code == 0, result.output


def test_drain_unknown_backend_exits_1(cli: Invoke, admin: FakeAdmin) -> None:
    admin.error(
        "POST", "/backends/gpu-9/drain", 404, "backend_not_found", "no backend named 'gpu-9'"
    )
    result = cli("backends", "drain", "gpu-9", *sock(admin))
    assert result.exit_code == 1
    assert result.stderr == "error: no backend named 'gpu-9'\n"
