"""The admin client: answers, API errors and a missing daemon each become one typed outcome."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmproxy.cli.admin_client import (
    AdminClient,
    AdminError,
    DaemonUnreachable,
    _socket_reason,
    error_from_response,
)
from tests.cli.fake_admin import error_body, fake_admin

NO_DAEMON = "no daemon answers on the admin socket: is `llmproxy serve` running? socket: "


def mock_client(handler: httpx.MockTransport, **kwargs: object) -> AdminClient:
    return AdminClient(socket=Path("/unused.sock"), transport=handler, **kwargs)  # type: ignore[arg-type]


def test_answer_is_the_decoded_object() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"secret": "sk-1", "key": {"id": "key_a"}})

    with mock_client(httpx.MockTransport(handle)) as client:
        assert client.post("/keys", {"name": "ci"}) == {"secret": "sk-1", "key": {"id": "key_a"}}
    assert seen[0].method == "POST"
    assert seen[0].url.path == "/keys"
    assert json.loads(seen[0].content) == {"name": "ci"}
    assert "authorization" not in seen[0].headers


def test_api_error_keeps_status_code_message_and_body() -> None:
    body = {**error_body("config_invalid", "config.yaml:3: x: bad"), "outcome": {"ok": False}}
    transport = httpx.MockTransport(lambda request: httpx.Response(422, json=body))
    with mock_client(transport) as client, pytest.raises(AdminError) as caught:
        client.post("/reload", {"dry_run": False})
    error = caught.value
    assert (error.status, error.code, error.message) == (
        422,
        "config_invalid",
        "config.yaml:3: x: bad",
    )
    assert error.body["outcome"] == {"ok": False}


def test_error_without_the_api_shape_still_says_something() -> None:
    error = error_from_response(502, b"Bad Gateway\n")
    assert (error.status, error.code, error.message, error.body) == (
        502,
        "http_502",
        "Bad Gateway",
        {},
    )
    assert error_from_response(500, b"").message == "HTTP 500"


def test_answer_that_is_not_a_json_object_is_an_error() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b"[1, 2]"))
    with mock_client(transport) as client, pytest.raises(AdminError, match="not JSON"):
        client.get("/status")


def test_token_goes_with_the_admin_url() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    client = AdminClient(
        url="http://10.0.0.5:9090/", token="t0ken", transport=httpx.MockTransport(handle)
    )
    with client:
        client.get("/status", {"all": 1})
    assert str(seen[0].url) == "http://10.0.0.5:9090/status?all=1"
    assert seen[0].headers["authorization"] == "Bearer t0ken"


def test_needs_exactly_one_place() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        AdminClient()
    with pytest.raises(ValueError, match="exactly one"):
        AdminClient(socket=Path("/x.sock"), url="http://x")


def test_missing_socket_is_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "nope.sock"
    with AdminClient(socket=path) as client, pytest.raises(DaemonUnreachable) as caught:
        client.get("/status")
    assert caught.value.message == NO_DAEMON + str(path)
    assert str(caught.value) == NO_DAEMON + str(path)


def test_socket_nobody_listens_on_is_unreachable(short_dir: Path) -> None:
    """A socket file left behind by a killed daemon refuses connections."""
    path = short_dir / "stale.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    with AdminClient(socket=path) as client, pytest.raises(DaemonUnreachable) as caught:
        client.get("/status")
    assert caught.value.message == NO_DAEMON + str(path)


def test_daemon_that_never_answers_is_unreachable(short_dir: Path) -> None:
    path = short_dir / "hung.sock"
    hung = socket.socket(socket.AF_UNIX)
    hung.bind(str(path))
    hung.listen(1)
    try:
        timeout = httpx.Timeout(0.2)
        with AdminClient(socket=path, timeout=timeout) as client:
            with pytest.raises(DaemonUnreachable):
                client.get("/status")
    finally:
        hung.close()


def test_unreachable_admin_url_says_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = AdminClient(url="http://127.0.0.1:1", transport=httpx.MockTransport(refuse))
    with client, pytest.raises(DaemonUnreachable) as caught:
        client.get("/status")
    assert caught.value.message == (
        "no daemon answers on the admin URL: is `llmproxy serve` running? url: http://127.0.0.1:1"
    )


def _connect_error_after(cause: OSError) -> httpx.ConnectError:
    """A ConnectError chained to ``cause`` the way httpx raises it."""
    try:
        try:
            raise cause
        except OSError:
            raise httpx.ConnectError(str(cause)) from None
    except httpx.ConnectError as error:
        return error


def test_permission_denied_is_explained() -> None:
    reason = _socket_reason(_connect_error_after(PermissionError(13, "Permission denied")))
    assert "permission denied" in reason
    assert "another user" in reason
    assert _socket_reason(_connect_error_after(ConnectionRefusedError(111, "refused"))) == ""
    unreachable = DaemonUnreachable("/s.sock", over_socket=True, reason="permission denied")
    assert unreachable.message == NO_DAEMON + "/s.sock (permission denied)"


def test_stream_skips_keepalive_lines() -> None:
    with fake_admin() as fake:
        fake.route("GET", "/usage/stream", lines=['{"n": 1}', "", "  ", '{"n": 2}'])
        with AdminClient(socket=fake.socket) as client:
            records = list(client.stream("/usage/stream", {"model": "m"}))
        assert records == [{"n": 1}, {"n": 2}]
        assert fake.seen[0].query == {"model": "m"}


def test_stream_error_status_is_an_admin_error() -> None:
    with fake_admin() as fake:
        fake.error("GET", "/usage/stream", 409, "no_usage_store", "no usage sink")
        with AdminClient(socket=fake.socket) as client, pytest.raises(AdminError) as caught:
            list(client.stream("/usage/stream"))
        assert (caught.value.status, caught.value.code) == (409, "no_usage_store")


def test_stream_line_that_is_not_json_is_an_error() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b'{"n": 1}\nxx\n'))
    with mock_client(transport) as client:
        records = client.stream("/usage/stream")
        assert next(records) == {"n": 1}
        with pytest.raises(AdminError, match="not a JSON line"):
            next(records)


class _Broken(httpx.SyncByteStream):
    """A body that breaks after its first line, as when the daemon is killed mid-stream."""

    def __iter__(self) -> Iterator[bytes]:
        yield b'{"n": 1}\n'
        raise httpx.ReadError("connection reset")


def test_stream_broken_midway_is_unreachable() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=_Broken()))
    with mock_client(transport) as client:
        records = client.stream("/usage/stream")
        assert next(records) == {"n": 1}
        with pytest.raises(DaemonUnreachable):
            next(records)
