"""Every kind of bad request gets a clear OpenAI-style error with the right status."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.harness import RunningGateway, gateway, make_config, mock_backend

CHAT = "/v1/chat/completions"


@pytest.fixture
async def gw() -> AsyncIterator[RunningGateway]:
    async with (
        mock_backend() as mock,
        gateway(
            make_config(
                [{"url": mock.url, "models": ["mock-model"]}], server={"max_body_size": "1KiB"}
            )
        ) as running,
    ):
        yield running


async def _post(
    gw: RunningGateway, path: str, data: bytes, content_type: str | None = "application/json"
) -> tuple[int, dict[str, object]]:
    headers = {"content-type": content_type} if content_type else {}
    async with (
        aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as session,
        session.post(gw.url + path, data=data, headers=headers) as response,
    ):
        assert response.content_type == "application/json"
        assert response.headers["x-request-id"]
        return response.status, await response.json()


def _error(body: dict[str, object]) -> dict[str, object]:
    error = body["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


@pytest.mark.parametrize(
    ("data", "code", "fragment"),
    [
        (b"{not json", "invalid_json", "not valid JSON"),
        (b"[1, 2]", "invalid_body", "must be a JSON object"),
        (b'"text"', "invalid_body", "must be a JSON object"),
        (b"{}", "missing_model", "model"),
        (b'{"model": 7}', "invalid_body", "model"),
        (b'{"model": "mock-model", "stream": "yes"}', "invalid_body", "stream"),
        (b"", "invalid_body", "empty"),
    ],
)
async def test_malformed_bodies_are_400(
    gw: RunningGateway, data: bytes, code: str, fragment: str
) -> None:
    """Malformed JSON, a non-object body and a missing or mistyped field are 400s naming it."""
    status, body = await _post(gw, CHAT, data)
    error = _error(body)
    assert status == 400
    assert error["code"] == code
    assert fragment in str(error["message"])
    assert error["type"] == "invalid_request_error"


async def test_unknown_model_is_404(gw: RunningGateway) -> None:
    """A model no backend serves is 404 model_not_found."""
    status, body = await _post(gw, CHAT, b'{"model": "gpt-9", "messages": []}')
    assert status == 404
    assert _error(body)["code"] == "model_not_found"


async def test_oversized_body_is_413(gw: RunningGateway) -> None:
    """A body over server.max_body_size is refused with 413 before reaching a backend."""
    big = b'{"model": "mock-model", "messages": [{"content": "' + b"x" * 2048 + b'"}]}'
    status, body = await _post(gw, CHAT, big)
    assert status == 413
    assert _error(body)["code"] == "request_too_large"


async def test_wrong_content_type_is_415(gw: RunningGateway) -> None:
    """A form-encoded body (curl -d without a header) gets 415 naming the expected type."""
    status, body = await _post(gw, CHAT, b"model=x", "application/x-www-form-urlencoded")
    assert status == 415
    assert "application/json" in str(_error(body)["message"])


async def test_path_outside_v1_is_404(gw: RunningGateway) -> None:
    """Paths outside /v1 are not proxied."""
    status, body = await _post(gw, "/admin/secret", b"{}")
    assert status == 404
    assert _error(body)["code"] == "unknown_path"


async def test_get_on_a_post_endpoint_is_405(gw: RunningGateway) -> None:
    """GET on chat completions is 405, not a proxied request."""
    async with aiohttp.ClientSession() as session, session.get(gw.url + CHAT) as response:
        assert response.status == 405
        _error(await response.json())


async def test_unreachable_backend_is_502() -> None:
    """A backend that refuses connections is a 502 after the retries."""
    async with gateway(make_config([{"url": "http://127.0.0.1:1"}])) as gw:
        status, body = await _post(gw, CHAT, b'{"model": "m", "messages": []}')
    assert status == 502
    assert _error(body)["code"] == "upstream_unreachable"


async def test_stalled_backend_is_504() -> None:
    """A backend that never answers is a 504 after first_byte_timeout."""
    async with mock_backend(fault="stall") as mock:
        config = make_config(
            [{"url": mock.url, "first_byte_timeout": "200ms"}],
            routing={"retry": {"enabled": False}},
        )
        async with gateway(config) as gw:
            status, body = await _post(gw, CHAT, b'{"model": "mock-model", "messages": []}')
    assert status == 504
    assert _error(body)["code"] == "upstream_timeout"


async def test_backend_error_status_is_passed_on_not_disguised() -> None:
    """A backend 500 is retried, then reaches the client as a 500 with the backend's error body."""
    config = {"routing": {"retry": {"max_retries": 1}}}
    async with mock_backend(fault="500") as mock:
        async with gateway(make_config([{"url": mock.url}], **config)) as gw:
            status, body = await _post(gw, CHAT, b'{"model": "mock-model", "messages": []}')
    assert status == 500
    assert _error(body)["message"] == "mock fault: internal server error"
    assert mock.stats.requests == 2


async def test_backend_5xx_is_retried_then_reported() -> None:
    """Retryable statuses are retried up to max_retries, and the last one is reported as is;
    a 429 from the only backend is reported after one attempt (never retried where it came
    from)."""
    async with mock_backend() as mock:
        config = make_config([{"url": mock.url}], routing={"retry": {"max_retries": 2}})
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            body = {"model": "mock-model", "messages": []}
            for fault, status, requests in (("500", 500, 3), ("429", 429, 4)):
                async with session.post(
                    gw.url + CHAT, json=body, headers={"x-mock-fault": fault}
                ) as response:
                    assert response.status == status
                    _error(await response.json())
                assert mock.stats.requests == requests


async def test_backend_silent_mid_stream_ends_with_error_event() -> None:
    """A stream whose backend goes quiet past idle_timeout ends with an SSE error event."""
    async with mock_backend() as mock:
        config = make_config([{"url": mock.url, "idle_timeout": "200ms"}])
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            async with session.post(
                gw.url + CHAT,
                json={"model": "mock-model", "messages": [], "stream": True, "max_tokens": 5},
                headers={"x-mock-itl": "2"},
            ) as response:
                assert response.status == 200
                body = await response.read()
    assert body.endswith(b"\n\n")
    assert b"event: error\n" in body
    assert b'"code":"upstream_timeout"' in body
    assert b"[DONE]" not in body
    assert b'"finish_reason":"length"' not in body
