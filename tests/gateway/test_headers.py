"""What crosses the gateway: keys stay behind, hop-by-hop headers are dropped, ids go both ways."""

from __future__ import annotations

import aiohttp

from llmproxy.gateway.headers import client_response_headers, upstream_request_headers
from tests.harness import gateway, make_config, mock_backend


def test_upstream_headers_drop_keys_and_hop_by_hop() -> None:
    """Client keys (also spelt with underscores), hop-by-hop headers, headers named in
    Connection, the client's own forwarding headers and Accept-Encoding (the gateway reads
    usage from the answer) are not forwarded; X-Forwarded-For is the chain the gateway worked
    out."""
    out = upstream_request_headers(
        [
            (b"authorization", b"Bearer sk-client"),
            (b"x-api-key", b"sk-client"),
            (b"x-custom-key", b"sk-client"),
            (b"x_custom_key", b"sk-client"),
            (b"forwarded", b"for=1.2.3.4"),
            (b"x-real-ip", b"1.2.3.4"),
            (b"accept-encoding", b"gzip"),
            (b"connection", b"keep-alive, x-drop-me"),
            (b"x-drop-me", b"1"),
            (b"transfer-encoding", b"chunked"),
            (b"host", b"gateway"),
            (b"x-forwarded-for", b"10.0.0.1"),
            (b"accept", b"text/event-stream"),
        ],
        frozenset({b"authorization", b"x-api-key", b"x-custom-key"}),
        [("authorization", "Bearer backend-key")],
        "req-1",
        "127.0.0.1",
    )
    assert out == {
        "accept": "text/event-stream",
        "authorization": "Bearer backend-key",
        "x-forwarded-for": "127.0.0.1",
        "x-request-id": "req-1",
    }


def test_response_headers_drop_hop_by_hop_and_duplicates() -> None:
    """The backend's hop-by-hop, server and date headers are replaced by the gateway's own."""
    out = client_response_headers(
        [
            (b"Content-Type", b"text/event-stream"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Connection", b"close, x-internal"),
            (b"X-Internal", b"1"),
            (b"Server", b"uvicorn"),
            (b"x-request-id", b"backend-id"),
        ],
        b"req-1",
    )
    assert out == [(b"content-type", b"text/event-stream"), (b"x-request-id", b"req-1")]


async def test_forwarded_request_as_the_backend_sees_it() -> None:
    """The backend gets its own api_key, the query string, a request id, and no client key."""
    async with mock_backend() as mock:
        config = make_config(
            [{"url": mock.url, "api_key": "backend-secret", "headers": {"X-Team": "gpu"}}]
        )
        async with (
            gateway(config) as gw,
            aiohttp.ClientSession() as session,
            session.post(
                gw.url + "/v1/echo?a=1&b=two",
                data=b'{"x": 1}',
                headers={
                    "Authorization": "Bearer sk-client-secret",
                    "X-API-Key": "sk-client-secret",
                    "Content-Type": "application/json",
                    "Connection": "x-hop",
                    "X-Hop": "1",
                },
            ) as response,
        ):
            assert response.status == 200
            request_id = response.headers["x-request-id"]
            echoed = await response.json()
    headers = echoed["headers"]
    assert echoed["query"] == "a=1&b=two"
    assert echoed["body"] == '{"x": 1}'
    assert headers["authorization"] == "Bearer backend-secret"
    assert "x-api-key" not in headers
    assert "x-hop" not in headers
    assert headers["x-team"] == "gpu"
    assert headers["x-request-id"] == request_id
    assert len(request_id) == 32
    assert "sk-client-secret" not in str(echoed)


async def test_client_request_id_is_kept() -> None:
    """A request id the client sends is returned unchanged; the backend gets it followed by
    the gateway's own, so two clients sending one id are still two requests upstream."""
    async with (
        mock_backend() as mock,
        gateway(make_config([{"url": mock.url}])) as gw,
        aiohttp.ClientSession() as session,
        session.get(gw.url + "/v1/echo", headers={"X-Request-Id": "trace-abc-123"}) as response,
    ):
        echoed = await response.json()
        assert response.headers["x-request-id"] == "trace-abc-123"
        async with session.get(
            gw.url + "/v1/echo", headers={"X-Request-Id": "trace-abc-123"}
        ) as again:
            echoed_again = await again.json()
    first, second = echoed["headers"]["x-request-id"], echoed_again["headers"]["x-request-id"]
    assert first.startswith("trace-abc-123-")
    assert second.startswith("trace-abc-123-")
    assert first != second


async def test_cors_preflight_and_response_headers() -> None:
    """With CORS on, a preflight is answered and responses carry the allow-origin header."""
    async with mock_backend() as mock:
        config = make_config(
            [{"url": mock.url}],
            server={"cors": {"enabled": True, "allow_origins": ["https://app.example"]}},
        )
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            origin = {"Origin": "https://app.example"}
            async with session.options(gw.url + "/v1/chat/completions", headers=origin) as r:
                assert r.status == 204
                assert r.headers["access-control-allow-origin"] == "https://app.example"
                assert "POST" in r.headers["access-control-allow-methods"]
            async with session.get(gw.url + "/v1/models", headers=origin) as r:
                assert r.headers["access-control-allow-origin"] == "https://app.example"
            evil = {"Origin": "https://evil.example"}
            async with session.options(gw.url + "/v1/chat/completions", headers=evil) as r:
                assert r.status == 403
