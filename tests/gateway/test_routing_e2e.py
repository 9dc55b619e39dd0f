"""Backend choice end to end: model routing, weights, failover, fallback and health."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp

from tests.harness import gateway, make_config, mock_backend

CHAT = "/v1/chat/completions"


async def _who(session: aiohttp.ClientSession, url: str, model: str, **headers: str) -> str:
    async with session.post(
        url + CHAT, json={"model": model, "messages": []}, headers=headers
    ) as response:
        assert response.status == 200, await response.text()
        return response.headers["x-mock-backend"]


async def test_requests_go_to_the_backend_that_serves_the_model() -> None:
    """Each model is served only by the backends that list it; unlisted backends serve any."""
    async with (
        mock_backend(name="a", models=("llama", "qwen")) as a,
        mock_backend(name="b", models=("qwen",)) as b,
    ):
        config = make_config(
            [{"url": a.url, "models": ["llama"]}, {"url": b.url, "models": ["qwen"]}]
        )
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            assert {await _who(session, gw.url, "llama") for _ in range(6)} == {"a"}
            assert {await _who(session, gw.url, "qwen") for _ in range(6)} == {"b"}


async def test_weighted_round_robin_over_real_backends() -> None:
    """Weights 3:1 split 40 requests 30:10."""
    async with mock_backend(name="a") as a, mock_backend(name="b") as b:
        config = make_config([{"url": a.url, "weight": 3}, {"url": b.url, "weight": 1}])
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            counts = Counter([await _who(session, gw.url, "mock-model") for _ in range(40)])
    assert counts == {"a": 30, "b": 10}


async def test_reset_before_response_fails_over_to_another_backend() -> None:
    """A backend that drops the connection before answering is retried elsewhere."""
    async with (
        mock_backend(name="bad", fault="reset_before") as bad,
        mock_backend(name="good") as good,
    ):
        config = make_config([{"url": bad.url}, {"url": good.url}])
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            served = [await _who(session, gw.url, "mock-model") for _ in range(6)]
    assert set(served) == {"good"}
    assert bad.stats.requests >= 1


async def test_passive_ejection_stops_sending_to_a_failing_backend() -> None:
    """After failure_threshold consecutive failures a backend gets no traffic for a while."""
    async with mock_backend(name="bad", fault="500") as bad, mock_backend(name="good") as good:
        config = make_config(
            [{"url": bad.url}, {"url": good.url}],
            health_check={"enabled": False, "passive": {"failure_threshold": 2}},
            routing={"retry": {"retry_on_status": [500, 502, 503]}},
        )
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            for _ in range(20):
                assert await _who(session, gw.url, "mock-model") == "good"
    assert bad.stats.requests == 2


async def test_fallback_chain_serves_when_primary_is_down() -> None:
    """A weight-0 fallback backend takes the traffic only when the primary cannot, and
    llmproxy_fallbacks_total counts it against the primary it stood in for."""
    async with mock_backend(name="spare") as spare:
        config = make_config(
            [
                {"url": "http://127.0.0.1:1", "name": "primary"},
                {"url": spare.url, "name": "spare", "weight": 0},
            ],
            routing={"fallback": [{"primary": "primary", "fallback": ["spare"]}]},
        )
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            assert await _who(session, gw.url, "mock-model") == "spare"
            async with session.get(gw.url + "/metrics") as response:
                metrics = await response.text()
            assert 'llmproxy_fallbacks_total{backend="primary"} 1.0' in metrics


async def test_ready_follows_active_health_checks() -> None:
    """/ready is 503 once active probes mark every backend down, and 200 again after recovery."""
    async with mock_backend() as mock:
        config = make_config(
            [{"url": mock.url}],
            health_check={
                "enabled": True,
                "interval": "50ms",
                "timeout": "200ms",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
            },
        )
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            async with session.get(gw.url + "/ready") as response:
                assert response.status == 200
            async with session.get(gw.url + "/health") as response:
                assert response.status == 200
            await mock.stop()
            status = 200
            for _ in range(50):
                async with session.get(gw.url + "/ready") as response:
                    status = response.status
                if status == 503:
                    break
                await asyncio.sleep(0.05)
            assert status == 503
            async with session.post(
                gw.url + CHAT, json={"model": "mock-model", "messages": []}
            ) as response:
                assert response.status == 503
                assert (await response.json())["error"]["code"] == "no_backend_available"


async def test_a_failing_model_leaves_the_backends_other_models_served() -> None:
    """A model that fails upstream is taken out on its own: requests for the backend's other
    model are still served, and the status shows which model is out."""
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        body = await request.json()
        if body["model"] == "broken":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        return web.json_response(
            {
                "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    app = web.Application()
    app.router.add_post(CHAT, answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        config = make_config(
            [{"url": f"http://127.0.0.1:{port}", "name": "two-models", "models": ["ok", "broken"]}],
            health_check={
                "enabled": False,
                "passive": {"failure_threshold": 2, "min_clients": 1},
            },
            routing={"retry": {"enabled": False}},
        )
        async with gateway(config) as gw, aiohttp.ClientSession() as session:

            async def status(model: str) -> int:
                body = {"model": model, "messages": []}
                async with session.post(gw.url + CHAT, json=body) as response:
                    return response.status

            assert [await status("broken") for _ in range(2)] == [500, 500]
            assert await status("broken") == 503  # out, on its own
            assert [await status("ok") for _ in range(5)] == [200] * 5
            backend = gw.runtime.backends[0]
            now = asyncio.get_running_loop().time()
            snapshot = backend.snapshot(now)
            assert snapshot["available"] is True
            models_out = snapshot["models_out"]
            assert isinstance(models_out, dict)
            assert set(models_out) == {"broken"}
    finally:
        await runner.cleanup()


async def test_probes_carry_the_backends_key_and_follow_its_own_settings() -> None:
    """A health route behind a key (LiteLLM's /health answers 500 without one) is probed with
    the backend's api_key and stays up; a backend probed in `models` mode (GET /v1/models) with
    its own override is up too; a probe that fails takes only its backend out."""
    from aiohttp import web

    probes: list[str | None] = []

    async def health(request: web.Request) -> web.Response:
        probes.append(request.headers.get("authorization"))
        if request.headers.get("authorization") != "Bearer upstream-key":
            return web.json_response({"error": "missing key"}, status=500)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with mock_backend(name="mock") as mock:
            config = make_config(
                [
                    {"url": f"http://127.0.0.1:{port}", "name": "keyed", "api_key": "upstream-key"},
                    {"url": mock.url, "name": "mock", "health_check": {"mode": "models"}},
                    {"url": mock.url + "/nowhere", "name": "broken"},
                ],
                health_check={
                    "enabled": True,
                    "interval": "100ms",
                    "unhealthy_threshold": 1,
                    "healthy_threshold": 1,
                },
            )
            async with gateway(config) as gw:
                await asyncio.sleep(0.5)
                keyed, models, broken = gw.runtime.backends
                assert keyed.probe_healthy
                assert models.probe_healthy
                assert not broken.probe_healthy
                assert probes
                assert set(probes) == {"Bearer upstream-key"}
    finally:
        await runner.cleanup()


async def _app_backend(handler: Any) -> tuple[Any, str]:
    from aiohttp import web

    app = web.Application()
    app.router.add_post(CHAT, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def test_a_429_from_the_only_backend_goes_back_at_once_with_retry_after() -> None:
    """A 429 is not retried on the backend that sent it: with no other backend the client gets
    it after one attempt, with the backend's Retry-After (the SDK retries; the gateway must not
    multiply its 3 tries by 3); with another backend the request is served there."""
    from aiohttp import web

    hits = Counter[str]()

    def limited(name: str) -> Any:
        async def answer(_request: web.Request) -> web.Response:
            hits[name] += 1
            return web.json_response(
                {"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "7"}
            )

        return answer

    runner, busy = await _app_backend(limited("busy"))
    try:
        async with aiohttp.ClientSession() as session:
            async with gateway(make_config([{"url": busy, "name": "busy"}])) as gw:
                body = {"model": "m", "messages": []}
                async with session.post(gw.url + CHAT, json=body) as response:
                    assert response.status == 429
                    assert response.headers["retry-after"] == "7"
                    assert response.headers["x-llmproxy-attempts"] == "1"
                assert hits["busy"] == 1
            async with mock_backend(name="free") as free:
                config = make_config([{"url": busy, "name": "busy"}, {"url": free.url}])
                async with gateway(config) as gw:
                    for _ in range(4):
                        assert await _who(session, gw.url, "mock-model") == "free"
                assert hits["busy"] <= 3  # never twice for one request
    finally:
        await runner.cleanup()


async def test_the_retry_budget_bounds_retries() -> None:
    """With a budget of 0 % and no minimum, a failed attempt is not retried: the client gets
    the answer after one attempt, and x-llmproxy-attempts says so."""
    async with mock_backend(name="ok") as ok:
        config = make_config(
            [{"url": "http://127.0.0.1:1", "name": "dead"}, {"url": ok.url, "name": "ok"}],
            routing={
                "load_balance_strategy": "round_robin",
                "retry": {"budget_percent": 0, "min_retry_concurrency": 0},
            },
        )
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(4):
                body = {"model": "mock-model", "messages": []}
                async with session.post(gw.url + CHAT, json=body) as response:
                    statuses.append(response.status)
                    assert response.headers["x-llmproxy-attempts"] == "1"
            assert sorted(statuses) == [200, 200, 502, 502]


async def test_a_multipart_request_is_routed_and_judged_by_its_model() -> None:
    """A transcription (multipart form) goes to the backend serving its `model` field, and a
    key limited to other models is refused; a form with `model` twice is refused."""
    async with (
        mock_backend(name="whisper", models=("whisper-1",)) as whisper,
        mock_backend(name="llm", models=("llm",)) as llm,
    ):
        keys = [{"key": "sk-audio", "models": ["whisper-1"]}, {"key": "sk-text", "models": ["llm"]}]
        config = make_config(
            [
                {"url": whisper.url, "name": "whisper", "models": ["whisper-1"]},
                {"url": llm.url, "name": "llm", "models": ["llm"]},
            ],
            auth={"enabled": True, "pipeline": [{"name": "k", "type": "static", "keys": keys}]},
        )
        async with gateway(config) as gw, aiohttp.ClientSession() as session:

            async def send(key: str, *fields: tuple[str, str]) -> aiohttp.ClientResponse:
                form = aiohttp.FormData()
                for name, value in fields:
                    form.add_field(name, value)
                form.add_field("file", b"RIFF....", filename="a.wav", content_type="audio/wav")
                async with session.post(
                    gw.url + "/v1/audio/transcriptions",
                    data=form,
                    headers={"Authorization": f"Bearer {key}"},
                ) as response:
                    await response.read()
                    return response

            routed = await send("sk-audio", ("model", "whisper-1"))
            assert routed.headers["x-mock-backend"] == "whisper"
            refused = await send("sk-text", ("model", "whisper-1"))
            assert refused.status == 403
            twice = await send("sk-audio", ("model", "whisper-1"), ("model", "llm"))
            assert twice.status == 400
