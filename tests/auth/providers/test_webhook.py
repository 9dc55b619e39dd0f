"""The webhook provider against a real aiohttp server on 127.0.0.1 that records what it receives."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from llmproxy.apikey import PresentedKey
from llmproxy.auth.providers.base import ProviderError
from llmproxy.auth.providers.webhook import MAX_REPLY_BYTES, WebhookProvider
from llmproxy.config.model import WebhookConnection
from llmproxy.connections import ConnectionPools
from tests.auth.providers.conftest import DOWN_ADDR

KEY_DATA = {"status": "active", "user_id": "u1", "total_quota": 1000, "ratio": 0.5, "ok": True}


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    body: bytes


@dataclass
class KeyService:
    """A key service with one path per behaviour; it records every request it gets."""

    url: str
    received: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def last_json(self) -> Any:
        return json.loads(self.received[-1].body)


@pytest.fixture
async def service() -> AsyncIterator[KeyService]:
    state = KeyService(url="")

    async def handle(request: web.Request) -> web.StreamResponse:
        state.received.append(
            Received(
                request.method,
                request.path,
                dict(request.headers),
                dict(request.query),
                await request.read(),
            )
        )
        behaviour = request.match_info["behaviour"]
        if behaviour == "ok":
            return web.json_response(KEY_DATA)
        if behaviour == "echo":
            return web.json_response({"status": "active", "api_key": state.last_json["api_key"]})
        if behaviour == "missing":
            return web.json_response({"error": "unknown key"}, status=404)
        if behaviour == "error":
            return web.Response(status=500, text="boom")
        if behaviour == "created":
            return web.json_response(KEY_DATA, status=201)
        if behaviour == "text":
            return web.Response(text="<html>not json</html>")
        if behaviour == "list":
            return web.json_response([KEY_DATA])
        if behaviour == "big":
            return web.json_response({"pad": "x" * MAX_REPLY_BYTES})
        if behaviour == "redirect":
            raise web.HTTPFound("/ok")
        # "slow": answer only when the test ends, long after any timeout.
        await state.release.wait()
        return web.json_response(KEY_DATA)

    app = web.Application()
    app.router.add_route("*", "/keys/{behaviour}", handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}/keys"
    try:
        yield state
    finally:
        state.release.set()
        await runner.cleanup()


async def opened(pools: ConnectionPools, url: str, **settings: Any) -> WebhookProvider:
    conn = WebhookConnection.model_validate({"url": url, "timeout": 1.0} | settings)
    provider = WebhookProvider("hook", conn, pools)
    await provider.open()
    return provider


async def test_ok_reply_is_the_data(pools, service, key):
    """A 200 reply with a JSON object is the key's data, with its JSON types."""
    provider = await opened(pools, f"{service.url}/ok")
    assert await provider.lookup(key) == KEY_DATA


async def test_not_found_is_unknown(pools, service, key):
    """A 404 means the service does not know the key (None)."""
    provider = await opened(pools, f"{service.url}/missing")
    assert await provider.lookup(key) is None


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("error", "answered HTTP 500"),
        ("created", "answered HTTP 201"),
        ("redirect", "answered HTTP 302"),
        ("text", "answered with invalid JSON"),
        ("list", "answered a JSON list, expected an object"),
        ("big", f"answered more than {MAX_REPLY_BYTES} bytes"),
    ],
)
async def test_any_other_reply_is_an_error(pools, service, key, behaviour, message):
    """Other statuses, redirects, non-JSON, non-object and oversized replies are ProviderErrors."""
    provider = await opened(pools, f"{service.url}/{behaviour}")
    with pytest.raises(ProviderError, match=f"webhook 'hook': .*{message}"):
        await provider.lookup(key)


async def test_slow_service_times_out(pools, service, key):
    """A service slower than `timeout` is a ProviderError once the timeout has passed."""
    provider = await opened(pools, f"{service.url}/slow", timeout=0.2)
    started = time.monotonic()
    with pytest.raises(
        ProviderError, match=r"no answer from http://127.0.0.1:\d+/keys/slow within"
    ):
        await provider.lookup(key)
    assert 0.15 < time.monotonic() - started < 1.0


async def test_service_down_is_an_error(pools, key):
    """A refused connection is a ProviderError naming the provider and the endpoint."""
    provider = await opened(pools, f"http://{DOWN_ADDR}/keys", timeout=0.5)
    with pytest.raises(
        ProviderError, match=r"webhook 'hook': request to http://127\.0\.0\.1:1/keys"
    ):
        await provider.lookup(key)


async def test_hash_mode_never_sends_the_secret(pools, service, key):
    """In hash mode the service gets digest, prefix and timestamp, and never the secret."""
    provider = await opened(pools, f"{service.url}/ok")
    before = int(time.time())
    await provider.lookup(key)
    received = service.received[-1]
    assert received.method == "POST"
    assert received.headers["Content-Type"] == "application/json"
    body = json.loads(received.body)
    assert body.keys() == {"api_key_sha256", "api_key_prefix", "timestamp"}
    assert body["api_key_sha256"] == key.sha256
    assert body["api_key_prefix"] == key.prefix
    assert before <= body["timestamp"] <= time.time()
    assert key.secret.encode() not in received.body
    assert all(key.secret not in value for value in received.headers.values())


async def test_plain_mode_sends_the_secret(pools, service, key):
    """In plain mode (seed compatibility) the secret is sent as api_key."""
    provider = await opened(pools, f"{service.url}/ok", send_key="plain")
    await provider.lookup(key)
    assert service.last_json["api_key"] == key.secret
    assert service.last_json["api_key_sha256"] == key.sha256


async def test_echoed_secret_is_dropped_from_the_data(pools, service, key):
    """A service echoing the secret back does not put it into the key's data."""
    provider = await opened(pools, f"{service.url}/echo", send_key="plain")
    assert await provider.lookup(key) == {"status": "active"}


async def test_configured_headers_are_sent(pools, service, key):
    """The configured headers go with every call (a shared token, say)."""
    headers = {"Authorization": "Bearer service-token", "X-Tenant": "acme"}
    provider = await opened(pools, f"{service.url}/ok", headers=headers)
    await provider.lookup(key)
    received = service.received[-1].headers
    assert received["Authorization"] == "Bearer service-token"
    assert received["X-Tenant"] == "acme"
    assert received["User-Agent"].startswith("llmproxy/")


async def test_get_sends_the_fields_as_query_parameters(pools, service, key):
    """With method GET the same fields travel as query parameters, without a body."""
    provider = await opened(pools, f"{service.url}/ok", method="GET")
    assert await provider.lookup(key) == KEY_DATA
    received = service.received[-1]
    assert received.method == "GET"
    assert received.body == b""
    assert received.query["api_key_sha256"] == key.sha256
    assert received.query["api_key_prefix"] == key.prefix
    assert "api_key" not in received.query


async def test_concurrent_lookups_share_the_session(pools, service):
    """Many lookups at once all answer through the shared session."""
    provider = await opened(pools, f"{service.url}/ok")
    keys = [PresentedKey.of(f"sk-test-{n}") for n in range(50)]
    assert await asyncio.gather(*(provider.lookup(each) for each in keys)) == [KEY_DATA] * 50


@pytest.mark.parametrize(
    "url", ["ftp://example.com/keys", "/keys", "http://", "http://example.com:99999/keys"]
)
def test_bad_url_is_refused_at_construction(url):
    """A url that is not http(s) with a host and a valid port is refused before any call."""
    conn = WebhookConnection(url=url)
    with pytest.raises(ValueError, match="webhook provider 'hook': url must be"):
        WebhookProvider("hook", conn, ConnectionPools())


def test_url_credentials_stay_out_of_messages():
    """Credentials and query of the url never appear in the provider's messages."""
    conn = WebhookConnection(url="ftp://user:hunter2@example.com/keys?token=t0ken")
    with pytest.raises(ValueError, match="url must be") as caught:
        WebhookProvider("hook", conn, ConnectionPools())
    assert "hunter2" not in str(caught.value)
    assert "t0ken" not in str(caught.value)
