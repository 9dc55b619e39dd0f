"""The admin API end to end: a real gateway, real mock backends, the API on a real Unix socket.

Every effect is checked where it matters: a key added through the API lets a real HTTP request
through the gateway and is refused on the very next request once revoked; a drained backend gets
no new traffic; a usage record of a real request shows up on the live stream and in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from prometheus_client import CollectorRegistry

from llmproxy.config.model import Config
from llmproxy.daemon import admin_usage
from llmproxy.daemon.admin_api import AdminServer
from llmproxy.daemon.admin_socket import AdminSocketInUse
from llmproxy.daemon.control import ReloadCounts, ReloadOutcome
from llmproxy.daemon.runtime import Runtime, RuntimeState
from llmproxy.metrics import GatewayMetrics
from llmproxy.mock import MockBackend
from llmproxy.usage.sink import UsageSink
from tests.harness import RunningGateway, make_config, mock_backend, serve_state

CHAT = "/v1/chat/completions"
BODY = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
TOKEN = "admin-token-0123456789"


@dataclass
class FakeControl:
    """A DaemonControl that answers reloads with a canned outcome and records the calls."""

    outcome: ReloadOutcome = field(
        default_factory=lambda: ReloadOutcome(ok=True, dry_run=False, config_version=2)
    )
    config_path: str | None = "/etc/llmproxy/config.yaml"
    started_at: float = field(default_factory=lambda: time.time() - 42.0)
    calls: list[tuple[bool, str]] = field(default_factory=list)

    async def reload(self, *, dry_run: bool = False, trigger: str = "admin") -> ReloadOutcome:
        self.calls.append((dry_run, trigger))
        return self.outcome

    def reload_counts(self) -> ReloadCounts:
        return ReloadCounts(ok=4, failed=1, last=self.outcome)

    def config_version(self) -> int:
        return 5


@dataclass
class Stack:
    """A gateway and its admin API, and clients for both."""

    gateway: RunningGateway
    admin: AdminServer
    api: httpx.AsyncClient
    http: httpx.AsyncClient
    control: FakeControl
    sink: UsageSink | None

    async def chat(self, key: str | None, **headers: str) -> httpx.Response:
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return await self.http.post(self.gateway.url + CHAT, json=BODY, headers=headers)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh directory under /tmp: Unix socket paths must stay under 108 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="llmp-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _config(mocks: list[MockBackend], socket: Path, **sections: Any) -> Config:
    backends = [{"url": m.url, "name": m.settings.name} for m in mocks]
    settings: dict[str, Any] = {
        "auth": {"enabled": True, "storage": "builtin", "builtin_db": "keys.db"},
        "usage": {"database": "usage.db"},
        "admin": {"socket": str(socket)},
        **sections,
    }
    return make_config(backends, **settings)


@contextlib.asynccontextmanager
async def stack(
    config: Config,
    base_dir: Path,
    *,
    usage: bool = True,
    control: FakeControl | None = None,
    owner_uid: int | None = None,
) -> AsyncIterator[Stack]:
    """Serve ``config`` (with a real usage sink unless ``usage`` is off) and its admin API."""
    sink = UsageSink(config, base_dir) if usage else None
    state = RuntimeState(
        Runtime(config, base_dir=base_dir), GatewayMetrics(CollectorRegistry()), sink
    )
    control = control or FakeControl()
    async with serve_state(state) as running:
        admin = AdminServer(state, control, owner_uid=owner_uid)
        await admin.start(config, base_dir)
        assert admin.socket_path is not None
        transport = httpx.AsyncHTTPTransport(uds=str(admin.socket_path))
        try:
            async with (
                httpx.AsyncClient(transport=transport, base_url="http://admin") as api,
                httpx.AsyncClient(timeout=10) as http,
            ):
                yield Stack(running, admin, api, http, control, sink)
        finally:
            await admin.close()


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The error member of an error answer, after checking its status, shape and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "code"}
    assert error["code"] == code, error
    assert error["message"]
    return error


async def _until(condition: Any, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - counters of other objects, no event to wait on
            await asyncio.sleep(0.02)


# Keys --------------------------------------------------------------------------------------


async def test_a_key_added_works_and_is_refused_right_after_its_revoke(
    tmp_path: Path, short_dir: Path
) -> None:
    """Add → 200 through the gateway; revoke → the very next gateway request is 401."""
    async with mock_backend(name="a") as mock:
        async with stack(_config([mock], short_dir / "admin.sock"), tmp_path) as s:
            assert (await s.chat("sk-llmp-not-yet")).status_code == 401
            created = await s.api.post(
                "/keys",
                json={
                    "name": "ci",
                    "user_id": "team-a",
                    "models": ["mock-model"],
                    "rpm": 100,
                    "expires_at": "2999-01-01T00:00:00Z",
                    "metadata": {"team": "a"},
                },
            )
            assert created.status_code == 201, created.text
            secret = created.json()["secret"]
            key = created.json()["key"]
            assert secret.startswith("sk-llmp-")
            assert "sha256" not in key
            assert key["name"] == "ci"
            assert key["user_id"] == "team-a"
            assert key["models"] == ["mock-model"]
            assert key["expires_at"] == 32472144000.0
            assert key["metadata"] == {"team": "a"}
            assert key["status"] == "active"
            assert key["revoked_at"] is None
            assert secret.startswith(key["prefix"])

            answer = await s.chat(secret)
            assert answer.status_code == 200, answer.text

            revoked = await s.api.post(f"/keys/{key['id']}/revoke")
            assert revoked.status_code == 200
            assert revoked.json()["key"]["revoked_at"] is not None
            assert revoked.json()["key"]["status"] == "disabled"
            refused = await s.chat(secret)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_api_key"


async def test_list_show_and_update_never_reveal_the_secret(
    tmp_path: Path, short_dir: Path
) -> None:
    """A key is found by id, display prefix or name; updates apply and ``null`` clears."""
    async with mock_backend(name="a") as mock:
        async with stack(_config([mock], short_dir / "admin.sock"), tmp_path) as s:
            created = (
                await s.api.post("/keys", json={"name": "svc", "models": ["x"], "user_id": "u1"})
            ).json()
            other = (await s.api.post("/keys", json={"name": "other", "user_id": "u2"})).json()
            secret, key = created["secret"], created["key"]
            for ref in (key["id"], key["prefix"], "svc"):
                shown = await s.api.get(f"/keys/{quote(ref, safe='')}")
                assert shown.status_code == 200, (ref, shown.text)
                assert shown.json()["key"]["id"] == key["id"]

            # The key only allows model "x": the gateway refuses mock-model with it.
            assert (await s.chat(secret)).status_code == 403
            updated = await s.api.patch(
                "/keys/svc", json={"models": None, "rpm": 7, "expires_at": 4102444800}
            )
            assert updated.status_code == 200, updated.text
            changed = updated.json()["key"]
            assert (changed["models"], changed["rpm"], changed["expires_at"]) == (
                [],
                7,
                4102444800.0,
            )
            assert (await s.chat(secret)).status_code == 200

            disabled = await s.api.patch("/keys/svc", json={"status": "disabled"})
            assert disabled.json()["key"]["status"] == "disabled"
            assert (await s.chat(secret)).status_code == 403

            listed = (await s.api.get("/keys")).json()["keys"]
            assert [k["name"] for k in listed] == ["svc", "other"]
            mine = (await s.api.get("/keys", params={"user_id": "u2"})).json()["keys"]
            assert [k["id"] for k in mine] == [other["key"]["id"]]

            await s.api.post("/keys/other/revoke")
            assert [k["name"] for k in (await s.api.get("/keys")).json()["keys"]] == ["svc"]
            everything = (await s.api.get("/keys", params={"all": "1"})).json()["keys"]
            assert [k["name"] for k in everything] == ["svc", "other"]

            for path in ("/keys", f"/keys/{key['id']}", "/keys?all=1"):
                text = (await s.api.get(path)).text
                assert secret not in text
                assert "sha256" not in text


async def test_key_errors_are_json_with_the_right_status(tmp_path: Path, short_dir: Path) -> None:
    """Unknown ref 404; bad value, unknown field, missing name, ambiguous name 400."""
    async with mock_backend(name="a") as mock:
        async with stack(_config([mock], short_dir / "admin.sock"), tmp_path) as s:
            error = _error(await s.api.get("/keys/key_nope"), 404, "key_not_found")
            assert error["type"] == "not_found"
            assert "key_nope" in error["message"]
            _error(await s.api.post("/keys/key_nope/revoke"), 404, "key_not_found")

            error = _error(
                await s.api.post("/keys", json={"name": "x", "rpm": -1}), 400, "invalid_request"
            )
            assert "rpm" in error["message"]
            error = _error(
                await s.api.post("/keys", json={"name": "x", "rmp": 1}), 400, "invalid_request"
            )
            assert "rmp" in error["message"]
            error = _error(await s.api.post("/keys", json={"user_id": "u"}), 400, "invalid_request")
            assert "name" in error["message"]
            error = _error(
                await s.api.post("/keys", json={"name": "x", "expires_at": "next tuesday"}),
                400,
                "invalid_request",
            )
            assert "expires_at" in error["message"]
            error = _error(
                await s.api.post(
                    "/keys", content=b'{"name": ', headers={"content-type": "application/json"}
                ),
                400,
                "invalid_request",
            )
            assert "malformed JSON" in error["message"]
            _error(await s.api.post("/keys", json=["name"]), 400, "invalid_request")

            first = (await s.api.post("/keys", json={"name": "dup"})).json()["key"]
            second = (await s.api.post("/keys", json={"name": "dup"})).json()["key"]
            error = _error(await s.api.get("/keys/dup"), 400, "ambiguous_key")
            assert first["id"] in error["message"]
            assert second["id"] in error["message"]
            # Once one of them is revoked, the name means the live one.
            await s.api.post(f"/keys/{first['id']}/revoke")
            assert (await s.api.get("/keys/dup")).json()["key"]["id"] == second["id"]
            error = _error(
                await s.api.patch(f"/keys/{first['id']}", json={"rpm": 1}), 400, "invalid_request"
            )
            assert "revoked" in error["message"]


async def test_keys_without_a_builtin_store_and_usage_without_a_sink_are_409(
    tmp_path: Path, short_dir: Path
) -> None:
    """A daemon whose auth has no builtin provider, and no usage sink, says so with 409."""
    async with mock_backend(name="a") as mock:
        config = _config(
            [mock],
            short_dir / "admin.sock",
            auth={"enabled": True, "pipeline": [{"name": "s", "type": "static", "keys": []}]},
        )
        async with stack(config, tmp_path, usage=False) as s:
            for response in (
                await s.api.get("/keys"),
                await s.api.post("/keys", json={"name": "x"}),
                await s.api.get("/keys/x"),
            ):
                error = _error(response, 409, "no_key_store")
                assert error["type"] == "conflict"
            for path in ("/usage/recent", "/usage/summary", "/usage/stream"):
                _error(await s.api.get(path), 409, "no_usage_store")
            assert (await s.api.get("/status")).json()["usage"] is None


# Routing and errors ------------------------------------------------------------------------


async def test_unknown_paths_wrong_methods_and_bad_bodies(tmp_path: Path, short_dir: Path) -> None:
    """404 and 405 come as the same JSON error shape as every other failure."""
    async with mock_backend(name="a") as mock:
        async with stack(_config([mock], short_dir / "admin.sock"), tmp_path) as s:
            error = _error(await s.api.get("/nope"), 404, "unknown_path")
            assert error["type"] == "not_found"
            response = await s.api.delete("/keys")
            _error(response, 405, "method_not_allowed")
            assert "POST" in response.headers["allow"]
            _error(await s.api.get("/reload"), 405, "method_not_allowed")
            _error(await s.api.post("/reload", content=b"{nope"), 400, "invalid_request")
            _error(await s.api.post("/reload", json={"dry_run": "yes"}), 400, "invalid_request")
            _error(await s.api.post("/reload", json={"dryrun": True}), 400, "invalid_request")
            _error(await s.api.get("/usage/recent", params={"limit": "0"}), 400, "invalid_request")
            _error(await s.api.get("/usage/summary", params={"since": "x"}), 400, "invalid_request")


# Status and reload -------------------------------------------------------------------------


async def test_status_reports_the_daemon(tmp_path: Path, short_dir: Path) -> None:
    """Status combines the control's reload history, the runtime and the usage sink."""
    async with mock_backend(name="a") as mock:
        config = _config([mock], short_dir / "admin.sock")
        async with stack(config, tmp_path) as s:
            status = (await s.api.get("/status")).json()
    assert status["pid"] == os.getpid()
    assert status["version"]
    assert status["config_path"] == "/etc/llmproxy/config.yaml"
    assert status["config_version"] == 5
    assert status["started_at"] == s.control.started_at
    assert 42.0 <= status["uptime_seconds"] < 100.0
    assert status["listen"] == "127.0.0.1:0"
    assert status["in_flight"] == 0
    assert status["retired_snapshots"] == 0
    assert status["reloads"] == {"ok": 4, "failed": 1, "last": s.control.outcome.as_json()}
    assert status["usage"] == {"queued": 0, "outbox_depth": 0, "dead_letters": 0}


async def test_reload_answers_the_outcome_and_422_when_refused(
    tmp_path: Path, short_dir: Path
) -> None:
    """A reload goes through DaemonControl; refused, it is 422 with the outcome beside the error."""
    async with mock_backend(name="a") as mock:
        async with stack(_config([mock], short_dir / "admin.sock"), tmp_path) as s:
            applied = await s.api.post("/reload", json={"dry_run": True})
            assert applied.status_code == 200
            assert applied.json() == s.control.outcome.as_json()
            assert (await s.api.post("/reload")).status_code == 200
            assert s.control.calls == [(True, "admin"), (False, "admin")]

            s.control.outcome = ReloadOutcome(
                ok=False, dry_run=False, error="config.yaml:3: backends: at least 1 entry"
            )
            refused = await s.api.post("/reload", json={"dry_run": False})
            error = _error(refused, 422, "config_invalid")
            assert error["message"] == "config.yaml:3: backends: at least 1 entry"
            assert refused.json()["outcome"] == s.control.outcome.as_json()


# Backends ----------------------------------------------------------------------------------


async def test_drain_sends_new_requests_elsewhere_and_lets_in_flight_ones_finish(
    tmp_path: Path, short_dir: Path
) -> None:
    """Drained: no new request, in-flight ones complete; both drained: 503; undrain: back."""
    async with mock_backend(name="a") as a, mock_backend(name="b") as b:
        config = _config([a, b], short_dir / "admin.sock", auth={"enabled": False})
        async with stack(config, tmp_path) as s:
            slow = asyncio.create_task(s.chat(None, **{"x-mock-ttft": "0.5"}))
            await _until(lambda: a.stats.in_flight + b.stats.in_flight == 1)
            busy = "a" if a.stats.in_flight else "b"
            other = "b" if busy == "a" else "a"

            drained = await s.api.post(f"/backends/{busy}/drain")
            assert drained.status_code == 200
            snapshot = drained.json()["backend"]
            assert snapshot["draining"] is True
            assert snapshot["available"] is False
            assert snapshot["in_flight"] == 1

            for _ in range(4):
                answer = await s.chat(None)
                assert answer.status_code == 200
                assert answer.headers["x-mock-backend"] == other
            finished = await slow
            assert finished.status_code == 200
            assert finished.headers["x-mock-backend"] == busy

            listed = {b["name"]: b for b in (await s.api.get("/backends")).json()["backends"]}
            assert listed[busy]["draining"]
            assert listed[busy]["in_flight"] == 0
            assert not listed[other]["draining"]
            assert listed[other]["available"]
            assert listed[other]["error_rate"] == 0.0
            assert set(listed[other]) == {
                "name", "url", "weight", "models", "available", "models_out", "probe_healthy",
                "draining",
                "ejected_for_seconds", "in_flight", "ttfb_ewma_ms", "error_rate",
                "consecutive_failures", "requests_total", "failures_total", "max_in_flight",
                "queue_waiting", "running", "kv_cache_usage", "signals_age_seconds",
                "affinity_share",
            }  # fmt: skip

            await s.api.post(f"/backends/{other}/drain")
            unavailable = await s.chat(None)
            assert unavailable.status_code == 503

            undrained = await s.api.post(f"/backends/{busy}/undrain")
            assert undrained.json()["backend"]["draining"] is False
            answer = await s.chat(None)
            assert answer.status_code == 200
            assert answer.headers["x-mock-backend"] == busy

            error = _error(await s.api.post("/backends/nope/drain"), 404, "backend_not_found")
            assert "nope" in error["message"]


async def test_a_backend_named_by_its_url_can_be_drained(tmp_path: Path, short_dir: Path) -> None:
    """A backend without a name is addressed by its url, percent-encoded into the path."""
    async with mock_backend(name="a") as mock:
        config = make_config([{"url": mock.url}], admin={"socket": str(short_dir / "admin.sock")})
        async with stack(config, tmp_path, usage=False) as s:
            drained = await s.api.post(f"/backends/{quote(mock.url, safe='')}/drain")
            assert drained.status_code == 200, drained.text
            assert drained.json()["backend"]["name"] == mock.url
            assert (await s.chat(None)).status_code == 503


# Usage -------------------------------------------------------------------------------------


async def test_usage_stream_recent_and_summary_see_a_real_request(
    tmp_path: Path, short_dir: Path
) -> None:
    """A record of a request made after subscribing arrives on the stream (filtered by key),
    then in /usage/recent and /usage/summary; leaving the stream ends its subscription.
    """
    async with mock_backend(name="a") as mock:
        async with stack(_config([mock], short_dir / "admin.sock"), tmp_path) as s:
            assert s.sink is not None
            ci = (await s.api.post("/keys", json={"name": "ci"})).json()
            other = (await s.api.post("/keys", json={"name": "other"})).json()
            async with s.api.stream("GET", "/usage/stream", params={"key": "ci"}) as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("application/x-ndjson")
                await _until(lambda: s.sink is not None and s.sink.bus.subscribers == 1)
                assert (await s.chat(other["secret"])).status_code == 200
                assert (await s.chat(ci["secret"])).status_code == 200
                lines = stream.aiter_lines()
                async with asyncio.timeout(5):
                    line = await anext(lines)
                record = json.loads(line)
                assert record["key_id"] == ci["key"]["id"]
                assert record["key_name"] == "ci"
                assert record["model"] == "mock-model"
                assert record["completion_tokens"] == 3
                assert ci["secret"] not in line
            await _until(lambda: s.sink is not None and s.sink.bus.subscribers == 0)

            recent: list[dict[str, Any]] = []
            for _ in range(100):
                answer = await s.api.get("/usage/recent", params={"key": "ci"})
                recent = answer.json()["records"]
                if recent:
                    break
                await asyncio.sleep(0.05)
            assert [r["id"] for r in recent] == [record["id"]]
            everything = (await s.api.get("/usage/recent")).json()["records"]
            assert len(everything) == 2
            assert everything[0]["id"] == record["id"]  # newest first
            assert (await s.api.get("/usage/recent", params={"model": "zzz"})).json() == {
                "records": []
            }
            limited = await s.api.get("/usage/recent", params={"limit": "1"})
            assert len(limited.json()["records"]) == 1

            before = time.time()
            summary = (await s.api.get("/usage/summary", params={"since": "60"})).json()
            assert before - 61 <= summary["since"] <= time.time() - 59
            rows = {row["key_name"]: row for row in summary["rows"]}
            assert rows["ci"] == {
                "key_id": ci["key"]["id"],
                "key_name": "ci",
                "model": "mock-model",
                "requests": 1,
                "prompt_tokens": record["prompt_tokens"],
                "completion_tokens": 3,
                "total_tokens": record["total_tokens"],
                "api": "chat",
                "user_id": "",
                "team": "",
                "cost": 0.0,
            }
            assert summary["currency"] == "USD"
            assert rows["other"]["requests"] == 1


async def test_usage_stream_keeps_alive_and_ends_when_the_server_closes(
    tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quiet stream sends empty lines; closing the admin server ends open streams."""
    monkeypatch.setattr(admin_usage, "KEEPALIVE_INTERVAL", 0.1)
    monkeypatch.setattr(admin_usage, "POLL_INTERVAL", 0.05)
    async with mock_backend(name="a") as mock:
        async with stack(_config([mock], short_dir / "admin.sock"), tmp_path) as s:
            async with s.api.stream("GET", "/usage/stream", params={"model": "x"}) as stream:
                chunks = stream.aiter_bytes()
                async with asyncio.timeout(5):
                    assert await anext(chunks) == b"\n"
                    async with asyncio.timeout(5):
                        await s.admin.close()
                    rest = b"".join([chunk async for chunk in chunks])
                assert rest.strip() == b""
            assert s.sink is not None
            assert s.sink.bus.subscribers == 0


# Who may call ------------------------------------------------------------------------------


async def test_tcp_listener_requires_the_bearer_token(tmp_path: Path, short_dir: Path) -> None:
    """Over TCP: no token or a wrong one is 401; the right one works. The socket needs none."""
    async with mock_backend(name="a") as mock:
        config = _config(
            [mock],
            short_dir / "admin.sock",
            admin={
                "socket": str(short_dir / "admin.sock"),
                "listen": "127.0.0.1:0",
                "token": TOKEN,
            },
        )
        async with stack(config, tmp_path) as s:
            address = s.admin.tcp_address
            assert address is not None
            base = f"http://{address[0]}:{address[1]}"
            missing = await s.http.get(base + "/status")
            _error(missing, 401, "invalid_admin_token")
            assert missing.headers["www-authenticate"] == "Bearer"
            for header in (f"Bearer {TOKEN}x", "Bearer", f"Basic {TOKEN}", TOKEN, "Bearer x"):
                wrong = await s.http.get(base + "/status", headers={"Authorization": header})
                _error(wrong, 401, "invalid_admin_token")
            # Refused before routing: an unknown path does not reveal itself as 404.
            _error(await s.http.get(base + "/nope"), 401, "invalid_admin_token")
            right = await s.http.get(base + "/status", headers={"Authorization": f"Bearer {TOKEN}"})
            assert right.status_code == 200
            assert right.json()["pid"] == os.getpid()
            assert (await s.api.get("/status")).status_code == 200


async def test_a_peer_with_another_uid_is_refused(tmp_path: Path, short_dir: Path) -> None:
    """SO_PEERCRED: a peer whose uid is not the daemon's owner uid gets 403, on every path."""
    async with mock_backend(name="a") as mock:
        config = _config([mock], short_dir / "admin.sock")
        async with stack(config, tmp_path, owner_uid=os.getuid() + 1) as s:
            for path in ("/status", "/keys", "/nope"):
                error = _error(await s.api.get(path), 403, "forbidden_peer")
                assert str(os.getuid()) in error["message"]


async def test_socket_is_private_not_shared_and_removed_on_close(
    tmp_path: Path, short_dir: Path
) -> None:
    """The socket file is 0600; a second daemon on the same path is refused; close removes it."""
    path = short_dir / "admin.sock"
    async with mock_backend(name="a") as mock:
        config = _config([mock], path)
        async with stack(config, tmp_path) as s:
            assert path.stat().st_mode & 0o777 == 0o600
            second = AdminServer(s.gateway.state, FakeControl())
            with pytest.raises(AdminSocketInUse, match="another llmproxy daemon answers on"):
                await second.start(config, tmp_path)
            await second.close()
            assert (await s.api.get("/status")).status_code == 200
            await s.admin.close()
            assert not path.exists()


async def test_disabled_admin_serves_nothing(tmp_path: Path, short_dir: Path) -> None:
    """``admin.enabled: false`` binds no socket."""
    async with mock_backend(name="a") as mock:
        config = make_config(
            [{"url": mock.url}],
            admin={"enabled": False, "socket": str(short_dir / "admin.sock")},
        )
        state = RuntimeState(Runtime(config, base_dir=tmp_path))
        async with serve_state(state):
            server = AdminServer(state, FakeControl())
            await server.start(config, tmp_path)
            assert server.socket_path is None
            assert not (short_dir / "admin.sock").exists()
            await server.close()
