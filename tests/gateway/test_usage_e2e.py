"""Usage and metrics end to end: what the gateway records equals what the backend did."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from llmproxy.config.model import Config
from llmproxy.daemon.runtime import Runtime, RuntimeState
from llmproxy.metrics import GatewayMetrics
from llmproxy.usage.record import UsageRecord
from llmproxy.usage.sink import UsageSink
from tests.harness import RunningGateway, make_config, mock_backend, serve_state

CHAT = "/v1/chat/completions"
KEY = "sk-usage-test"


@contextlib.asynccontextmanager
async def _gateway(
    config: Config, base_dir: Path
) -> AsyncIterator[tuple[RunningGateway, UsageSink]]:
    sink = UsageSink(config, base_dir)
    state = RuntimeState(
        Runtime(config, base_dir=base_dir), GatewayMetrics(CollectorRegistry()), sink
    )
    async with serve_state(state) as running:
        yield running, sink


def _config(mock_url: str, **usage: Any) -> Config:
    return make_config(
        [{"url": mock_url}],
        auth={
            "enabled": True,
            "pipeline": [
                {
                    "name": "keys",
                    "type": "static",
                    "keys": [{"key": KEY, "name": "team", "user_id": "u7"}],
                }
            ],
        },
        usage={"database": "usage.db", **usage},
    )


async def _records(sink: UsageSink, count: int) -> list[UsageRecord]:
    for _ in range(100):
        records = await sink.store.recent(1000)
        if len(records) >= count:
            return records
        await asyncio.sleep(0.05)
    raise AssertionError(f"only {len(records)} of {count} usage records were written")


@pytest.mark.parametrize(("stream", "client_asks"), [(False, False), (True, False), (True, True)])
async def test_usage_equals_the_backends_count(
    tmp_path: Path, stream: bool, client_asks: bool
) -> None:
    """Records carry the mock's exact usage; a client sees the usage event only if it asked."""
    body: dict[str, Any] = {
        "model": "mock-model",
        "messages": [{"role": "user", "content": "hello there, how are you today?"}],
        "max_tokens": 9,
        "stream": stream,
    }
    if client_asks:
        body["stream_options"] = {"include_usage": True}
    async with mock_backend() as mock:
        async with (
            _gateway(_config(mock.url), tmp_path) as (gw, sink),
            aiohttp.ClientSession() as session,
        ):
            async with session.post(mock.url + CHAT, json=body) as response:
                direct = await response.read()
            async with session.post(
                gw.url + CHAT, json=body, headers={"Authorization": f"Bearer {KEY}"}
            ) as response:
                assert response.status == 200
                proxied = await response.read()
            (record,) = await _records(sink, 1)
    assert record.completion_tokens == 9
    assert record.prompt_tokens >= 1
    assert record.total_tokens == record.prompt_tokens + 9
    assert record.usage_source == "backend"
    assert (record.key_name, record.user_id, record.key_prefix) == ("team", "u7", "sk-u…")
    assert KEY not in record.to_json().decode()
    assert record.stream is stream
    assert record.status == 200
    if stream:
        assert record.ttft_ms is not None
        assert (b'"usage"' in proxied) is client_asks
        assert proxied.count(b"data: ") == direct.count(b"data: ")


async def test_cancelled_stream_is_billed_for_what_was_streamed(tmp_path: Path) -> None:
    """A client leaving mid-stream gets a record marked cancelled with the tokens it received."""
    async with mock_backend() as mock:
        async with (
            _gateway(_config(mock.url), tmp_path) as (gw, sink),
            aiohttp.ClientSession() as session,
        ):
            async with session.post(
                gw.url + CHAT,
                json={"model": "mock-model", "messages": [], "max_tokens": 500, "stream": True},
                headers={"Authorization": f"Bearer {KEY}", "x-mock-itl": "0.01"},
            ) as response:
                for _ in range(5):
                    await response.content.readuntil(b"\n\n")
                response.close()
            (record,) = await _records(sink, 1)
    assert record.cancelled
    assert 5 <= record.completion_tokens < 500
    assert record.usage_source == "estimated"


async def test_metrics_are_scraped_and_parse(tmp_path: Path) -> None:
    """/metrics parses with prometheus_client and counts requests, tokens and refusals by label."""
    async with mock_backend() as mock:
        async with (
            _gateway(_config(mock.url), tmp_path) as (gw, _sink),
            aiohttp.ClientSession() as session,
        ):
            headers = {"Authorization": f"Bearer {KEY}"}
            for _ in range(3):
                async with session.post(
                    gw.url + CHAT,
                    json={"model": "mock-model", "messages": [], "max_tokens": 4},
                    headers=headers,
                ) as response:
                    assert response.status == 200
            async with session.post(
                gw.url + CHAT,
                json={"model": "mock-model", "messages": []},
                headers={"Authorization": "Bearer sk-nope"},
            ) as response:
                assert response.status == 401
            async with session.get(gw.url + "/metrics") as response:
                text = await response.text()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    requests = {
        tuple(sorted(sample.labels.items())): sample.value
        for sample in families["llmproxy_requests"].samples
        if sample.name == "llmproxy_requests_total"
    }
    ok = (
        ("backend", "http://" + mock.url.split("//")[1]),
        ("endpoint", "chat/completions"),
        ("model", "mock-model"),
        ("status_class", "2xx"),
    )
    assert requests.get(ok) == 3, requests
    tokens = {
        sample.labels["type"]: sample.value
        for sample in families["llmproxy_tokens"].samples
        if sample.name == "llmproxy_tokens_total"
    }
    assert tokens["completion"] == 12
    decisions = {
        sample.labels["result"]: sample.value
        for sample in families["llmproxy_auth_decisions"].samples
        if sample.name == "llmproxy_auth_decisions_total"
    }
    assert decisions["allowed"] == 3
    assert decisions["denied"] == 1
    assert "sk-" not in text


@pytest.mark.parametrize("style", ["json", "text"])
async def test_access_log_line_per_request(tmp_path: Path, style: str) -> None:
    """Each request writes one access-log line with key name and prefix, never the key."""
    import io
    import json

    from llmproxy.gateway.access_log import AccessLog

    stream = io.StringIO()
    access = AccessLog(style, stream)  # type: ignore[arg-type]
    async with mock_backend() as mock:
        config = _config(mock.url)
        state = RuntimeState(
            Runtime(config, base_dir=tmp_path), GatewayMetrics(CollectorRegistry()), None, access
        )
        async with serve_state(state) as gw, aiohttp.ClientSession() as session:
            async with session.post(
                gw.url + CHAT,
                json={"model": "mock-model", "messages": [], "max_tokens": 3, "stream": True},
                headers={"Authorization": f"Bearer {KEY}"},
            ) as response:
                assert response.status == 200
                await response.read()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert KEY not in lines[0]
    if style == "json":
        entry = json.loads(lines[0])
        assert entry["key_name"] == "team"
        assert entry["completion_tokens"] == 3
        assert entry["status"] == 200
        assert entry["bytes"] > 0
        assert entry["ttft_ms"] is not None
    else:
        assert '"POST /v1/chat/completions HTTP/1.1" 200 ' in lines[0]
        assert "key=team" in lines[0]
        assert "tokens=" in lines[0]


@pytest.mark.parametrize("stream", [False, True])
async def test_durable_acknowledge_ends_a_response_only_once_its_record_is_written(
    tmp_path: Path, stream: bool
) -> None:
    """With usage.acknowledge: durable the record is in SQLite by the time the client has the
    whole answer; the answer's bytes are the same as without it."""
    body = {"model": "mock-model", "messages": [], "max_tokens": 5, "stream": stream}
    headers = {"Authorization": f"Bearer {KEY}"}
    async with mock_backend() as mock:
        durable = _config(mock.url, acknowledge="durable")
        async with (
            _gateway(durable, tmp_path) as (gw, sink),
            aiohttp.ClientSession() as session,
        ):
            for number in range(5):
                async with session.post(gw.url + CHAT, json=body, headers=headers) as response:
                    payload = await response.read()
                # No waiting: the record was committed before the last byte was sent.
                stored = await sink.store.recent(100)
                assert len(stored) == number + 1
                assert stored[0].request_id == response.headers["x-request-id"]
                assert stored[0].completion_tokens == 5
                if stream:
                    assert payload.rstrip().endswith(b"data: [DONE]")
                    assert payload.count(b"data: ") == 5 + 1  # 5 tokens, then [DONE]
                    assert b'"usage"' not in payload  # the event the gateway asked for
                else:
                    assert b'"completion_tokens":5' in payload


async def test_durable_holds_a_done_marker_cut_across_chunks(tmp_path: Path) -> None:
    """Under durable, a stream whose `data: [DONE]` arrives cut in two chunks still ends only
    once its record is written: the hold follows the stream's one SSE scanner, not a byte search
    within one chunk."""
    from aiohttp import web

    events = [
        b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,'
        b'"total_tokens":4}}\n\n',
        b"data: [DO",
        b"NE]\n\n",
    ]

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for piece in events:
            await response.write(piece)
            await asyncio.sleep(0.05)  # each piece its own chunk
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        config = _config(f"http://127.0.0.1:{port}", acknowledge="durable")
        async with _gateway(config, tmp_path) as (gw, sink), aiohttp.ClientSession() as session:
            body = {"model": "m", "messages": [], "stream": True}
            headers = {"Authorization": f"Bearer {KEY}"}
            async with session.post(
                gw.url + "/v1/chat/completions", json=body, headers=headers
            ) as response:
                received = b""
                async for chunk in response.content.iter_any():
                    received += chunk
                    if b"data: [DONE]\n\n" in received:
                        # The moment the client holds a complete [DONE]: already written.
                        stored = await sink.store.recent(10)
                        assert len(stored) == 1
                        assert stored[0].total_tokens == 4
                        break
                else:
                    raise AssertionError(f"no [DONE] in {received!r}")
    finally:
        await runner.cleanup()
