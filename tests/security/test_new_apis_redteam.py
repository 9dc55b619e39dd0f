"""Red-team tests of the Anthropic Messages and OpenAI Responses surfaces, end to end through the
real gateway on loopback: the mock backend, or a small hostile aiohttp backend started here.

A docstring that begins "Regression" names a defect the red-team pass found (where it was, and
what the gateway did wrong, in the past tense of that pass) and what must happen instead; each
is fixed and the test keeps it so. The others pin behaviour that was right from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
from aiohttp import web

from llmproxy.config.model import Config
from tests.gateway.test_usage_e2e import _gateway, _records
from tests.harness import RunningGateway, make_config, mock_backend

KEY = "sk-redteam-alpha"
OTHER_KEY = "sk-redteam-bravo"
LIMITED_KEY = "sk-redteam-limited"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def hostile(handler: Handler) -> AsyncIterator[str]:
    """A tiny aiohttp backend answering every request with ``handler``; yields its URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server: Any = site._server
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _keys(limited_models: tuple[str, ...] = ("m-b",)) -> dict[str, Any]:
    return {
        "enabled": True,
        "pipeline": [
            {
                "name": "keys",
                "type": "static",
                "keys": [
                    {"key": KEY, "name": "alpha"},
                    {"key": OTHER_KEY, "name": "bravo"},
                    {"key": LIMITED_KEY, "name": "limited", "models": list(limited_models)},
                ],
            }
        ],
    }


def _config(backends: list[dict[str, Any]], **sections: Any) -> Config:
    sections.setdefault("auth", _keys())
    sections.setdefault("usage", {"database": "usage.db"})
    sections.setdefault("routing", {"retry": {"enabled": False}})
    return make_config(backends, **sections)


def _headers(key: str = KEY, **extra: str) -> dict[str, str]:
    return {"x-api-key": key, "anthropic-version": "2023-06-01", **extra}


def _anthropic_shaped(body: Any, kind: str | None = None) -> bool:
    ok = (
        isinstance(body, dict)
        and body.get("type") == "error"
        and isinstance(body.get("error"), dict)
        and isinstance(body["error"].get("type"), str)
        and isinstance(body["error"].get("message"), str)
    )
    return ok and (kind is None or body["error"]["type"] == kind)


MESSAGE: dict[str, Any] = {
    "model": "claude-local",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "hello there"}],
}


async def _post_raw(
    session: aiohttp.ClientSession,
    url: str,
    data: bytes,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    async with session.post(
        url, data=data, headers={"content-type": "application/json", **(headers or _headers())}
    ) as response:
        return response.status, await response.read()


# --------------------------------------------------------------------------------------------
# Messages: the client's mistakes, before and after the body — Anthropic's shape, right status
# --------------------------------------------------------------------------------------------


def _mock_config(url: str, **sections: Any) -> Config:
    return _config(
        [{"url": url, "models": ["claude-local"]}],
        server={"max_body_size": 4096, "proxy_paths": ["/v1/messages", "/v1/responses"]},
        **sections,
    )


BAD_BODIES = {
    "malformed": b'{"model": "claude-local", "max_tokens": 8, "messages": [',
    "model-twice": b'{"model":"claude-local","model":"other","max_tokens":8,"messages":[]}',
    "model-escaped": (
        b'{"model":"claude-local","mode\\u006c":"other","max_tokens":8,"messages":[]}'
    ),
    "max-tokens-twice": b'{"model":"claude-local","max_tokens":8,"max_tokens":9,"messages":[]}',
    "deep": b'{"model":"claude-local","max_tokens":8,"messages":' + b"[" * 200 + b"]" * 200 + b"}",
    "stream-string": b'{"model":"claude-local","max_tokens":8,"stream":"true","messages":[]}',
    "max-tokens-huge": b'{"model":"claude-local","max_tokens":99999999999999,"messages":[]}',
    "max-tokens-negative": b'{"model":"claude-local","max_tokens":-1,"messages":[]}',
    "max-tokens-bool": b'{"model":"claude-local","max_tokens":true,"messages":[]}',
    "not-object": b'["model","claude-local"]',
    "bad-utf8": b'{"model":"claude-local","max_tokens":8,"messages":[],"x":"\xff"}',
    "model-nul": b'{"model":"claude\\u0000local","max_tokens":8,"messages":[]}',
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
async def test_messages_bad_bodies_are_anthropic_400s(tmp_path: Path, name: str) -> None:
    """Every malformed or ambiguous Messages body is a 400 ``invalid_request_error`` in
    Anthropic's shape; none reaches the backend."""
    async with (
        mock_backend(models=("claude-local",)) as mock,
        _gateway(_mock_config(mock.url), tmp_path) as (gw, _),
        aiohttp.ClientSession() as session,
    ):
        status, body = await _post_raw(session, gw.url + "/v1/messages", BAD_BODIES[name])
    assert status == 400, (status, body)
    assert _anthropic_shaped(json.loads(body), "invalid_request_error"), body
    assert mock.stats.by_path.get("/v1/messages", 0) == 0


async def test_messages_errors_before_the_body_are_anthropic_shaped(tmp_path: Path) -> None:
    """Refusals made before the body is read (no key, a wrong key, a wrong method, a wrong
    content type, a body over ``max_body_size``) answer in Anthropic's shape with the right
    status and type, on ``/v1/messages`` and ``/v1/messages/count_tokens``."""
    big = json.dumps({**MESSAGE, "pad": "x" * 10_000}).encode()
    async with (
        mock_backend(models=("claude-local",)) as mock,
        _gateway(_mock_config(mock.url), tmp_path) as (gw, _),
        aiohttp.ClientSession() as session,
    ):
        got: dict[str, tuple[int, Any]] = {}
        for path in ("/v1/messages", "/v1/messages/count_tokens", "/v1/messages?beta=true"):
            url = gw.url + path
            async with session.post(url, json=MESSAGE) as r:
                got[f"{path} no key"] = (r.status, await r.json(content_type=None))
            async with session.post(url, json=MESSAGE, headers=_headers("sk-nope")) as r:
                got[f"{path} bad key"] = (r.status, await r.json(content_type=None))
            async with session.get(url, headers=_headers()) as r:
                got[f"{path} GET"] = (r.status, await r.json(content_type=None))
            async with session.post(
                url,
                data=json.dumps(MESSAGE),
                headers={**_headers(), "content-type": "text/plain"},
            ) as r:
                got[f"{path} text/plain"] = (r.status, await r.json(content_type=None))
            async with session.post(
                url, data=big, headers={**_headers(), "content-type": "application/json"}
            ) as r:
                got[f"{path} too big"] = (r.status, await r.json(content_type=None))
    expected = {
        "no key": (401, "authentication_error"),
        "bad key": (401, "authentication_error"),
        "GET": (405, "invalid_request_error"),
        "text/plain": (415, "invalid_request_error"),
        "too big": (413, "request_too_large"),
    }
    for label, (status, body) in got.items():
        want_status, want_type = expected[label.split(" ", 1)[1]]
        assert status == want_status, (label, status, body)
        assert _anthropic_shaped(body, want_type), (label, body)


async def test_messages_sdk_raises_the_typed_exceptions(tmp_path: Path) -> None:
    """The anthropic SDK raises its typed exceptions from the gateway's answers: a bad key, a
    malformed request (a string ``stream``... via extra_body), a model no backend serves."""
    async with (
        mock_backend(models=("claude-local",)) as mock,
        _gateway(_mock_config(mock.url), tmp_path) as (gw, _),
    ):
        async with anthropic.AsyncAnthropic(
            base_url=gw.url, api_key="sk-nope", max_retries=0
        ) as bad:
            with pytest.raises(anthropic.AuthenticationError):
                await bad.messages.create(**MESSAGE)
        async with anthropic.AsyncAnthropic(base_url=gw.url, api_key=KEY, max_retries=0) as ok:
            with pytest.raises(anthropic.BadRequestError):
                await ok.messages.create(
                    **MESSAGE,
                    extra_body={"max_tokens": 2**40},
                )
            with pytest.raises(anthropic.NotFoundError):
                await ok.messages.create(**{**MESSAGE, "model": "nope"})
            with pytest.raises(anthropic.PermissionDeniedError):
                async with anthropic.AsyncAnthropic(
                    base_url=gw.url, api_key=LIMITED_KEY, max_retries=0
                ) as limited:
                    await limited.messages.create(**MESSAGE)


# --------------------------------------------------------------------------------------------
# Translation (backends[].apis: [chat_completions])
# --------------------------------------------------------------------------------------------


def _chat_only_config(url: str, **sections: Any) -> Config:
    return _config(
        [{"url": url, "name": "chat", "models": ["claude-local"], "apis": ["chat_completions"]}],
        **sections,
    )


async def test_count_tokens_on_a_chat_only_backend_is_not_a_generation(
    tmp_path: Path,
) -> None:
    """Regression (proxy.py ``_attempt``: ``translating = request.api == "messages" and ...``):
    ``/v1/messages/count_tokens`` has api ``messages``, so for a chat-only backend it is
    translated into a *chat completion* and sent to ``/v1/chat/completions``: the backend
    generates a whole answer (the body has no ``max_tokens``: as long as the backend likes),
    the client gets a Message instead of ``{"input_tokens": N}``, and a record for
    ``/v1/messages/count_tokens`` carries completion tokens (an endpoint that is never meant
    to generate). A count_tokens request must never become a generation: answer it as a count
    (or refuse it / route it elsewhere, in Anthropic's shape); the chat endpoint must not be
    hit."""
    async with (
        mock_backend(models=("claude-local",), tokens=50) as mock,
        _gateway(_chat_only_config(mock.url), tmp_path) as (gw, sink),
        aiohttp.ClientSession() as session,
    ):
        body = {"model": "claude-local", "messages": [{"role": "user", "content": "hi there"}]}
        async with session.post(
            gw.url + "/v1/messages/count_tokens", json=body, headers=_headers()
        ) as response:
            status = response.status
            answer = await response.json(content_type=None)
        records = await _records(sink, 1)
    generated = mock.stats.by_path.get("/v1/chat/completions", 0)
    assert generated == 0, (
        f"count_tokens made the backend generate a chat completion; answer={answer}, "
        f"billed={[(r.endpoint, r.completion_tokens) for r in records]}"
    )
    if status == 200:
        assert set(answer) == {"input_tokens"}, answer
    else:
        assert _anthropic_shaped(answer), answer


@pytest.mark.parametrize(
    ("name", "chat_status", "chat_body", "want_status", "want_type"),
    [
        ("no-choices", 200, b'{"id":"x","choices":[],"usage":{"prompt_tokens":3}}', 502, None),
        ("not-json-200", 200, b"<html>oops</html>", 502, None),
        ("error-not-json", 500, b"<html>Internal Server Error</html>", 500, "api_error"),
        ("overloaded-503", 503, b'{"error":{"message":"busy"}}', 529, "overloaded_error"),
        ("rate-limited", 429, b'{"error":{"message":"slow down"}}', 429, "rate_limit_error"),
    ],
)
async def test_translated_whole_answers_from_a_broken_chat_backend(
    tmp_path: Path,
    name: str,
    chat_status: int,
    chat_body: bytes,
    want_status: int,
    want_type: str | None,
) -> None:
    """A chat-only backend's broken or failed answer to a translated Messages request reaches
    the client in Anthropic's shape with Anthropic's status (its 503 is the 529
    ``overloaded_error`` the SDK retries), never a 500/traceback."""

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=chat_status, body=chat_body, content_type="application/json")

    async with (
        hostile(handler) as url,
        _gateway(_chat_only_config(url), tmp_path) as (gw, _),
        aiohttp.ClientSession() as session,
    ):
        status, body = await _post_raw(
            session, gw.url + "/v1/messages", json.dumps(MESSAGE).encode()
        )
    decoded = json.loads(body)
    assert status == want_status, (name, status, body)
    assert _anthropic_shaped(decoded, want_type), (name, body)


async def _post_within(
    url: str, body: dict[str, Any], seconds: float, headers: dict[str, str] | None = None
) -> tuple[int, bytes] | None:
    """POST and read the whole answer; None when it did not come within ``seconds``."""
    timeout = aiohttp.ClientTimeout(total=seconds)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            async with session.post(url, json=body, headers=headers or _headers()) as response:
                return response.status, await response.read()
        except TimeoutError:
            return None


async def test_translated_answer_stalling_after_its_head_times_out(tmp_path: Path) -> None:
    """Regression (proxy.py ``_relay_translated_body``): the whole chat answer is awaited with
    ``connection.finished()`` and no ``watch_idle`` — unlike ``_relay_body`` and
    ``_relay_stream`` — so a chat-only backend that sends its head and a few bytes and then
    goes silent holds the client (and a backend slot, a concurrency lease) forever, whatever
    ``first_byte_timeout`` / ``idle_timeout`` say. It should end in an Anthropic-shaped 504
    (or 502) once the backend is silent past its timeout."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=200, headers={"content-type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"id":"chatcmpl-1",')
        await asyncio.sleep(30)
        return response

    async with hostile(handler) as url:
        config = _config(
            [
                {
                    "url": url,
                    "models": ["claude-local"],
                    "apis": ["chat_completions"],
                    "first_byte_timeout": "1s",
                    "idle_timeout": "1s",
                }
            ]
        )
        async with _gateway(config, tmp_path) as (gw, _):
            answer = await _post_within(gw.url + "/v1/messages", MESSAGE, 6)
    assert answer is not None, "no answer 6 s after a 1 s timeout: the relay waits forever"
    status, body = answer
    assert status in (502, 504), answer
    assert _anthropic_shaped(json.loads(body)), body


async def test_translated_answer_over_max_response_size_is_cut_while_it_arrives(
    tmp_path: Path,
) -> None:
    """Regression (proxy.py ``_relay_translated_body``): the chat answer is collected whole
    (``connection.sink = parts.append``) and only *then* compared with
    ``backends[].max_response_size``: a hostile or broken backend can make the gateway hold
    an answer of any size in memory (here 8 MiB against a 1 MiB limit, then silence; it
    could be gigabytes). The limit should stop the read as soon as it is passed: a 502 in
    Anthropic's shape, without waiting for the rest."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=200, headers={"content-type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"id":"chatcmpl-1","choices":[{"message":{"content":"')
        for _ in range(8):
            await response.write(b"a" * (1024 * 1024))
        await asyncio.sleep(30)
        return response

    async with hostile(handler) as url:
        config = _config(
            [
                {
                    "url": url,
                    "models": ["claude-local"],
                    "apis": ["chat_completions"],
                    "max_response_size": "1MiB",
                }
            ]
        )
        async with _gateway(config, tmp_path) as (gw, _):
            answer = await _post_within(gw.url + "/v1/messages", MESSAGE, 6)
    assert answer is not None, "the over-limit answer was held until the backend would end it"
    status, body = answer
    assert status == 502, answer
    assert _anthropic_shaped(json.loads(body)), body


# --------------------------------------------------------------------------------------------
# Responses: whose response is it?
# --------------------------------------------------------------------------------------------


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _create(
    session: aiohttp.ClientSession, gw: RunningGateway, key: str, **body: Any
) -> tuple[int, Any, dict[str, str]]:
    payload = {"model": "m-a", "input": "a secret only alpha should see", **body}
    async with session.post(gw.url + "/v1/responses", json=payload, headers=_bearer(key)) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


def _two_models_config(a: str, b: str, **sections: Any) -> Config:
    return _config(
        [
            {"url": a, "name": "a", "models": ["m-a"]},
            {"url": b, "name": "b", "models": ["m-b"]},
        ],
        **sections,
    )


async def test_another_key_cannot_read_or_delete_a_response(tmp_path: Path) -> None:
    """Regression (routing/responses.py ``ResponseHomes`` keeps id -> backend only;
    app.py ``_pin_response`` never asks who made the response): any key that is not limited to
    models can ``GET`` (read the whole conversation's output) and ``DELETE`` a response another
    key created, just by its id. A response id must only be usable by the key (tenant) that
    created it: for another key the gateway should answer 404 as for an unknown id, and never
    forward the request."""
    async with (
        mock_backend(name="a", models=("m-a",)) as a,
        mock_backend(name="b", models=("m-b",)) as b,
        _gateway(_two_models_config(a.url, b.url), tmp_path) as (gw, _),
        aiohttp.ClientSession() as session,
    ):
        status, made, _ = await _create(session, gw, KEY)
        assert status == 200, made
        url = f"{gw.url}/v1/responses/{made['id']}"
        async with session.get(url, headers=_bearer(OTHER_KEY)) as r:
            read = (r.status, await r.read())
        async with session.delete(url, headers=_bearer(OTHER_KEY)) as r:
            deleted = (r.status, await r.read())
        async with session.get(url, headers=_bearer(KEY)) as r:
            own = r.status
    assert read[0] == 404, f"bravo read alpha's response: {read}"
    assert deleted[0] == 404, f"bravo deleted alpha's response: {deleted}"
    assert own == 200


async def test_another_key_cannot_continue_a_response(tmp_path: Path) -> None:
    """Regression (app.py ``_pin_response``): ``previous_response_id`` naming a response made by
    another key is honoured: the follow-up goes to the backend holding it, which continues
    that tenant's conversation (its context) for the other key. It should be a 404
    ``previous_response_not_found``, as for an id the gateway never saw."""
    async with (
        mock_backend(name="a", models=("m-a",)) as a,
        mock_backend(name="b", models=("m-b",)) as b,
        _gateway(_two_models_config(a.url, b.url), tmp_path) as (gw, _),
        aiohttp.ClientSession() as session,
    ):
        _, made, _ = await _create(session, gw, KEY)
        status, follow, _ = await _create(
            session, gw, OTHER_KEY, input="repeat what I told you", previous_response_id=made["id"]
        )
    assert status == 404, f"bravo continued alpha's conversation: {follow}"


async def test_a_limited_key_cannot_continue_a_response_of_a_model_it_may_not_use(
    tmp_path: Path,
) -> None:
    """Regression (app.py ``_pin_response`` + routing/router.py ``route(only=...)``): a key allowed
    only ``m-b`` names ``model: m-b`` (allowed, so auth passes) and the ``previous_response_id``
    of a response made with ``m-a`` on backend ``a``. The request is pinned to ``a`` — a
    backend that does not serve ``m-b`` (``route(only=)`` checks availability, not
    ``serves(model)``) — and reaches the ``m-a`` conversation. The gateway must never send a
    request for a model to a backend not configured for it, nor let a key reach state made
    with a model it may not use: 404 (or 400) from the gateway, backend ``a`` untouched."""
    async with (
        mock_backend(name="a", models=("m-a", "m-b")) as a,  # a server that would take either
        mock_backend(name="b", models=("m-b",)) as b,
        _gateway(_two_models_config(a.url, b.url), tmp_path) as (gw, _),
        aiohttp.ClientSession() as session,
    ):
        _, made, _ = await _create(session, gw, KEY)
        before = a.stats.by_path.get("/v1/responses", 0)
        status, follow, headers = await _create(
            session,
            gw,
            LIMITED_KEY,
            model="m-b",
            input="what did alpha say?",
            previous_response_id=made["id"],
        )
        after = a.stats.by_path.get("/v1/responses", 0)
    assert after == before, (
        f"a request for m-b reached backend a (configured for m-a only): {status} {follow}"
    )
    assert status in (400, 403, 404), (status, follow, headers.get("x-mock-backend"))


async def test_a_limited_key_can_read_its_own_response(tmp_path: Path) -> None:
    """Regression (auth pipeline ``model_required`` on every proxied request without a model, and
    ``_pin_response`` knowing no model per response): a key limited to ``m-b`` creates a
    response with ``m-b`` but can never ``GET`` or ``DELETE`` it (403 ``model_required``:
    the request has no body to name a model). The gateway knows the response's home; it
    should also know its model (and key), and let its maker read it."""
    async with (
        mock_backend(name="a", models=("m-a",)) as a,
        mock_backend(name="b", models=("m-b",)) as b,
        _gateway(_two_models_config(a.url, b.url), tmp_path) as (gw, _),
        aiohttp.ClientSession() as session,
    ):
        status, made, _ = await _create(session, gw, LIMITED_KEY, model="m-b")
        assert status == 200, made
        url = f"{gw.url}/v1/responses/{made['id']}"
        async with session.get(url, headers=_bearer(LIMITED_KEY)) as r:
            read = (r.status, await r.json(content_type=None))
    assert read[0] == 200, read


async def test_an_unknown_previous_response_does_not_keep_the_keys_slot(tmp_path: Path) -> None:
    """Regression (app.py ``_forward``: ``_pin_response`` runs after ``_admit`` and outside the
    ``try/finally`` that calls ``_finish``): the 404 for an unknown ``previous_response_id``
    (or ``GET /v1/responses/{unknown}``) never settles the admission, so the key's
    concurrency slot and token reservation are never given back. With ``max_concurrent: 1``
    one such request locks the key out (429) for good. A refused request must release
    what it took."""
    limits = {"enabled": True, "per_key": {"enabled": True, "max_concurrent": 1}}
    async with (
        mock_backend(name="a", models=("m-a",)) as a,
        mock_backend(name="b", models=("m-b",)) as b,
        _gateway(_two_models_config(a.url, b.url, rate_limit=limits), tmp_path) as (gw, _),
        aiohttp.ClientSession() as session,
    ):
        missing, _, _ = await _create(session, gw, KEY, previous_response_id="resp_neverseen")
        status, answer, _ = await _create(session, gw, KEY)
    assert missing == 404
    assert status == 200, f"the key is locked out after one 404: {status} {answer}"


async def test_an_unknown_previous_response_does_not_keep_the_token_reservation(
    tmp_path: Path,
) -> None:
    """Regression (same place as above): each 404 for an unknown ``previous_response_id`` keeps
    its token reservation (``max_output_tokens`` + prompt estimate) against the key's
    ``tokens_per_minute``: three 404s that used nothing spend a 3,000-token budget and the
    key's next real request is refused 429."""
    limits = {"enabled": True, "per_key": {"enabled": True, "tokens_per_minute": 3000}}
    async with (
        mock_backend(name="a", models=("m-a",)) as a,
        mock_backend(name="b", models=("m-b",)) as b,
        _gateway(_two_models_config(a.url, b.url, rate_limit=limits), tmp_path) as (gw, _),
        aiohttp.ClientSession() as session,
    ):
        for _ in range(3):
            missing, _, _ = await _create(
                session, gw, KEY, previous_response_id="resp_neverseen", max_output_tokens=990
            )
            assert missing == 404
        status, answer, _ = await _create(session, gw, KEY, max_output_tokens=10)
    assert status == 200, f"404s that used nothing spent the key's budget: {status} {answer}"


async def test_a_backend_cannot_claim_another_backends_response_id(tmp_path: Path) -> None:
    """Regression (proxy.py ``_note_response`` -> ``ResponseHomes.remember``: last writer wins):
    a hostile (or merely buggy) backend ``h`` that answers with the id of a response made on
    ``a`` takes it over: every later ``GET`` / ``previous_response_id`` for it — with the
    client's next input — goes to ``h``. An id already homed on another backend must not be
    re-homed by a different backend's answer (first claim wins, or the conflicting answer is
    refused), so the follow-up still reaches ``a``."""
    stolen: list[str] = []
    reached_h: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        raw = await request.read()
        reached_h.append(f"{request.method} {request.path} {raw[:200]!r}")
        body = {
            "id": stolen[0],
            "object": "response",
            "status": "completed",
            "model": "m-h",
            "output": [],
            "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
        }
        return web.json_response(body)

    async with (
        mock_backend(name="a", models=("m-a",)) as a,
        hostile(handler) as h,
    ):
        config = _config(
            [
                {"url": a.url, "name": "a", "models": ["m-a"]},
                {"url": h, "name": "h", "models": ["m-h"]},
            ]
        )
        async with _gateway(config, tmp_path) as (gw, _), aiohttp.ClientSession() as session:
            _, made, _ = await _create(session, gw, KEY)
            stolen.append(made["id"])
            await _create(session, gw, OTHER_KEY, model="m-h", input="anything")
            reached_h.clear()
            status, follow, headers = await _create(
                session, gw, KEY, input="my next secret", previous_response_id=made["id"]
            )
    assert not reached_h, f"alpha's follow-up went to the hostile backend: {reached_h}"
    assert status == 200, (status, follow)
    assert headers.get("x-mock-backend") == "a", (status, follow)


async def test_previous_response_id_twice_is_refused(tmp_path: Path) -> None:
    """``previous_response_id`` is judged (it picks the backend): twice in one body, or once
    plainly and once escaped, is a 400 ``duplicate_member``, never forwarded."""
    async with (
        mock_backend(name="a", models=("m-a",)) as a,
        mock_backend(name="b", models=("m-b",)) as b,
        _gateway(_two_models_config(a.url, b.url), tmp_path) as (gw, _),
        aiohttp.ClientSession() as session,
    ):
        _, made, _ = await _create(session, gw, KEY)
        bodies = [
            b'{"model":"m-a","input":"x","previous_response_id":"%s","previous_response_id":"r"}'
            % made["id"].encode(),
            b'{"model":"m-a","input":"x","previous_response_id":"%s","previous_response_i\\u0064":"r"}'
            % made["id"].encode(),
        ]
        answers = []
        for body in bodies:
            answers.append(await _post_raw(session, gw.url + "/v1/responses", body, _bearer(KEY)))
    for status, body in answers:
        assert status == 400, body
        assert json.loads(body)["error"]["code"] == "duplicate_member"


@pytest.mark.parametrize(
    ("suffix", "statuses"),
    [
        ("..%2Fchat%2Fcompletions", {400}),
        ("resp_x%2F..%2F..%2Fmodels", {400}),
        ("resp_x/..", {400}),
        ("resp_" + "a" * 3000, {400, 404, 414, 431}),
        ("resp_%00", {400}),
        ("resp_x;admin", {400}),
        ("RESP_unknown", {404}),
    ],
)
async def test_response_ids_with_path_characters_never_reach_a_backend(
    tmp_path: Path, suffix: str, statuses: set[int]
) -> None:
    """``GET /v1/responses/{id}`` with separators, dot segments, escapes or a huge id: refused
    by the gateway (400, or 404 for an id it never saw), in the OpenAI shape, never a 500 and
    never forwarded anywhere."""
    async with (
        mock_backend(name="a", models=("m-a",)) as a,
        mock_backend(name="b", models=("m-b",)) as b,
        _gateway(_two_models_config(a.url, b.url), tmp_path) as (gw, _),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]))
        writer.write(
            b"GET /v1/responses/%s HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n"
            b"connection: close\r\n\r\n" % (suffix.encode(), KEY.encode())
        )
        await writer.drain()
        raw = await reader.read()
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert status in statuses, raw[:300]
    if body:
        assert "error" in json.loads(body)
    assert sum(a.stats.by_path.values()) + sum(b.stats.by_path.values()) == 0, (
        a.stats.by_path,
        b.stats.by_path,
    )


async def test_concurrent_deletes_and_reads_of_one_response(tmp_path: Path) -> None:
    """DELETE raced against DELETE and GET: exactly one delete succeeds, no 5xx, and once it
    is gone the gateway itself answers 404 for it (its home is forgotten)."""
    async with (
        mock_backend(name="a", models=("m-a",)) as a,
        mock_backend(name="b", models=("m-b",)) as b,
        _gateway(_two_models_config(a.url, b.url), tmp_path) as (gw, _),
        aiohttp.ClientSession() as session,
    ):
        _, made, _ = await _create(session, gw, KEY)
        url = f"{gw.url}/v1/responses/{made['id']}"

        async def call(method: str) -> int:
            async with session.request(method, url, headers=_bearer(KEY)) as r:
                await r.read()
                return r.status

        results = await asyncio.gather(*(call(m) for m in ["DELETE", "GET"] * 5))
        calls_before = a.stats.by_path.copy()
        after = await call("GET")
        calls_after = a.stats.by_path.copy()
    deletes = results[0::2]
    assert deletes.count(200) == 1, results
    assert all(s in (200, 404) for s in results), results
    assert after == 404
    assert calls_after == calls_before, "the forgotten id was still forwarded"


# --------------------------------------------------------------------------------------------
# A hostile Messages backend: what is billed, and does the gateway stay up?
# --------------------------------------------------------------------------------------------


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: %s\ndata: %s\n\n" % (e["type"].encode(), json.dumps(e).encode()) for e in events
    )


def _start(input_tokens: Any = 11) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-local",
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        },
    }


def _delta(text: str = "tok") -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": text},
    }


def _final(output_tokens: Any) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": output_tokens},
    }


STOP = {"type": "message_stop"}
BLOCK = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}


def _stream_backend(payload: bytes, *, split: int = 0) -> Handler:
    """A Messages backend answering every stream with ``payload`` (cut in ``split``-byte
    writes when ``split``), and the second request of a test with a plain good stream."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=200, headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        if split:
            for i in range(0, len(payload), split):
                await response.write(payload[i : i + split])
                await asyncio.sleep(0)
        else:
            await response.write(payload)
        await response.write_eof()
        return response

    return handler


def _messages_config(url: str, **sections: Any) -> Config:
    return _config([{"url": url, "name": "h", "models": ["claude-local"]}], **sections)


STREAM: dict[str, Any] = {**MESSAGE, "stream": True}


async def _bill(tmp_path: Path, handler: Handler, body: dict[str, Any] = STREAM) -> list[Any]:
    """Send ``body`` twice to the hostile backend; the usage records written."""
    async with (
        hostile(handler) as url,
        _gateway(_messages_config(url), tmp_path) as (gw, sink),
        aiohttp.ClientSession() as session,
    ):
        for _ in range(2):
            async with session.post(gw.url + "/v1/messages", json=body, headers=_headers()) as r:
                await r.read()
        records = await _records(sink, 2)
    return records


async def test_a_stream_cut_into_single_bytes_is_billed_like_a_whole_one(tmp_path: Path) -> None:
    """Events split at every byte (CRLF line ends too) meter exactly like whole ones: the
    backend's 11 prompt tokens and final 3 output tokens, ``backend``."""
    payload = _sse(_start(), BLOCK, _delta(), _delta(), _delta(), _final(3), STOP)
    for label, data in (("lf", payload), ("crlf", payload.replace(b"\n", b"\r\n"))):
        records = await _bill(tmp_path / label, _stream_backend(data, split=1))
        for record in records:
            assert (record.prompt_tokens, record.completion_tokens) == (11, 3), (label, record)
            assert record.usage_source == "backend", (label, record)


async def test_error_lookalikes_inside_text_do_not_change_the_bill(tmp_path: Path) -> None:
    """Text that spells ``"type":"error"``, ``message_stop`` or ``content_block_delta`` is
    escaped JSON: it counts as the one delta it is."""
    text = '"type":"error" "message_stop" "content_block_delta" event: error\n\ndata: [DONE]'
    payload = _sse(_start(), BLOCK, _delta(text), _delta(text), _final(2), STOP)
    records = await _bill(tmp_path, _stream_backend(payload))
    assert [(r.prompt_tokens, r.completion_tokens, r.usage_source) for r in records] == [
        (11, 2, "backend")
    ] * 2


@pytest.mark.parametrize(
    "bad",
    [-5, "7", 1.5, None, {"n": 1}],
    ids=["negative", "string", "float", "null", "object"],
)
async def test_unreadable_final_counts_fall_back_to_what_was_relayed(
    tmp_path: Path, bad: Any
) -> None:
    """A ``message_delta`` whose ``output_tokens`` is not a count is not believed: the
    completion is the 4 deltas relayed, the prompt the backend's, and the record says
    ``counted`` — never a negative, a string or a crash."""
    payload = _sse(_start(), BLOCK, *[_delta()] * 4, _final(bad), STOP)
    records = await _bill(tmp_path, _stream_backend(payload))
    for record in records:
        assert (record.prompt_tokens, record.completion_tokens) == (11, 4), record
        assert record.usage_source == "counted", record


async def test_repeated_message_delta_counts_are_not_added_up(tmp_path: Path) -> None:
    """``message_delta`` usage is cumulative: three of them (1, 2, 3) bill 3, not 6."""
    payload = _sse(
        _start(), BLOCK, _delta(), _final(1), _delta(), _final(2), _delta(), _final(3), STOP
    )
    records = await _bill(tmp_path, _stream_backend(payload))
    assert [(r.completion_tokens, r.usage_source) for r in records] == [(3, "backend")] * 2


@pytest.mark.parametrize(
    ("where", "value"),
    [("output", 2**64 - 1), ("output", 10**30), ("input", 2**63), ("input", 10**30)],
)
async def test_absurd_usage_numbers_are_not_billed_as_the_backends(
    tmp_path: Path, where: str, value: int
) -> None:
    """Regression (usage/extract.py ``UsageFields``: ``NonNegative`` has no upper bound; read by
    usage/events.py ``EventStreamUsage._read_usage``): a backend reporting
    ``output_tokens: 18446744073709551615`` (or an input count past 2**63) for a 4-token,
    ``max_tokens: 8`` answer is billed exactly that, labelled ``backend`` (exact). A count no
    request can have used — past what the request allowed, or what a usage store's 64-bit
    integer holds — must not be billed as the backend's: the meter should fall back to what it
    relayed (``counted``) or cap and flag it, and the record must be written."""
    final = _final(value if where == "output" else 4)
    payload = _sse(_start(value if where == "input" else 11), BLOCK, *[_delta()] * 4, final, STOP)
    records = await _bill(tmp_path, _stream_backend(payload))
    for record in records:
        assert record.completion_tokens <= 8 + 4, record
        assert record.prompt_tokens < 2**31, record
        assert record.total_tokens < 2**63, record


async def test_absurd_usage_numbers_in_a_whole_message_are_not_billed(tmp_path: Path) -> None:
    """Regression (usage/extract.py ``usage_from_body`` / ``UsageFields``): the same for a
    non-streamed Message: ``"output_tokens": 2**64-1`` is billed as is, ``backend``."""

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-local",
                "content": [{"type": "text", "text": "hi"}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 5, "output_tokens": 2**64 - 1},
            }
        )

    records = await _bill(tmp_path, handler, MESSAGE)
    for record in records:
        assert record.completion_tokens <= 8, record


async def test_a_200_that_is_not_a_message_is_not_billed_zero_silently(tmp_path: Path) -> None:
    """Regression (gateway/exchange.py ``used_usage`` -> ``finished``): a backend answering
    ``200`` with a body that carries no usage (here not JSON at all) is recorded with 0 prompt
    and 0 completion tokens and ``usage_source: "counted"`` — as if exact. The request was
    served and its prompt was sent to the model: the record should carry at least the prompt
    estimate, labelled ``estimated``."""

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200, body=b"this is not JSON", content_type="application/json")

    body = {**MESSAGE, "messages": [{"role": "user", "content": "word " * 200}]}
    records = await _bill(tmp_path, handler, body)
    for record in records:
        assert record.status == 200
        assert record.prompt_tokens > 0, record
        assert record.usage_source == "estimated", record


async def test_event_names_written_as_text_are_not_counted_as_tokens(tmp_path: Path) -> None:
    """Regression (usage/events.py ``EventStreamUsage._events``, which counts
    ``b'"content_block_delta"'`` anywhere in the data): the marker is searched in the whole
    event, and a text delta whose text *is* ``content_block_delta`` encodes as
    ``"text":"content_block_delta"`` — the marker, unescaped. Each such delta counts twice.
    When the stream is cut before its final
    ``message_delta`` the bill is these counts: 4 deltas relayed, 8 billed. (The same holds
    for Responses' ``.delta"`` marker and a delta text ending in ``.delta``.) Only the event's
    own ``type`` should count."""
    payload = _sse(_start(), BLOCK, *[_delta("content_block_delta")] * 4)  # then cut
    records = await _bill(tmp_path, _stream_backend(payload))
    for record in records:
        assert record.completion_tokens == 4, record


LOOKALIKE = "message_stop"


async def test_a_stop_event_name_written_as_text_does_not_hold_back_the_stream(
    tmp_path: Path,
) -> None:
    """Regression (usage/events.py ``EventStreamUsage._events``: ``done`` is set when
    ``b'"message_stop"'`` is anywhere in the data; proxy.py ``_StreamSink`` then holds every
    later chunk under ``usage.acknowledge: durable``): a model that writes the text
    ``message_stop`` (``"text":"message_stop"``) makes the gateway believe the stream ended,
    and everything after it is held back in memory until the backend really ends — the client
    sees no token for the rest of the answer. Only a ``message_stop`` event ends the
    stream."""
    gate = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=200, headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for event in (_start(), BLOCK, _delta(LOOKALIKE), _delta("after")):
            await response.write(_sse(event))
            await asyncio.sleep(0.05)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gate.wait(), 5)
        await response.write(_sse(_final(2), STOP))
        await response.write_eof()
        return response

    async with (
        hostile(handler) as url,
        _gateway(
            _messages_config(url, usage={"database": "usage.db", "acknowledge": "durable"}),
            tmp_path,
        ) as (gw, _),
        aiohttp.ClientSession() as session,
    ):
        async with session.post(gw.url + "/v1/messages", json=STREAM, headers=_headers()) as r:
            seen = b""
            try:
                async with asyncio.timeout(2):
                    while b'"after"' not in seen:
                        piece = await r.content.readany()
                        if not piece:
                            break
                        seen += piece
            except TimeoutError:
                pass
            gate.set()
            await r.read()
    assert b'"after"' in seen, f"the delta after the lookalike was held back: {seen[-300:]!r}"


TOOL_CHAT_STREAM: list[dict[str, Any]] = [
    {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": ""},
                        }
                    ],
                },
            }
        ]
    },
    {
        "choices": [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{not json"}}]},
            }
        ]
    },
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}},
]


def _chat_stream_backend(chunks: list[dict[str, Any]], *, done: bool = True,
                         tail: bytes = b"") -> Handler:  # fmt: skip
    async def handler(request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": None,
                                "tool_calls": [
                                    {
                                        "id": "call_1",
                                        "type": "function",
                                        "function": {"name": "lookup", "arguments": "{not json"},
                                    }
                                ],
                            },
                            "finish_reason": "tool_calls",
                        }
                    ],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 4},
                }
            )
        response = web.StreamResponse(status=200, headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(
                b"data: " + json.dumps({"id": "chatcmpl-1", **chunk}).encode() + b"\n\n"
            )
        if done:
            await response.write(b"data: [DONE]\n\n")
        if tail:
            await response.write(tail)
        await response.write_eof()
        return response

    return handler


TOOLS: list[Any] = [
    {"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
]


async def test_translated_tool_arguments_that_are_not_json_stream_like_they_answer(
    tmp_path: Path,
) -> None:
    """Regression (translate/_stream.py ``ChatStreamToMessages._tool_call``): arguments that are
    not JSON are handed to a non-streamed client as ``{"_raw_arguments": text}``
    (translate/_response.py ``_tool_input``), but in a stream they go out as ``partial_json``
    pieces unchanged, so the anthropic SDK's stream helper — which parses ``partial_json`` —
    raises on them and the client loses the whole answer. The stream should carry the same
    ``input`` the whole answer does."""
    async with (
        hostile(_chat_stream_backend(TOOL_CHAT_STREAM)) as url,
        _gateway(_chat_only_config(url), tmp_path) as (gw, _),
        anthropic.AsyncAnthropic(base_url=gw.url, api_key=KEY, max_retries=0) as client,
    ):
        whole = await client.messages.create(**MESSAGE, tools=TOOLS)
        async with client.messages.stream(**MESSAGE, tools=TOOLS) as stream:
            streamed = await stream.get_final_message()
    use = next(b for b in whole.content if b.type == "tool_use")
    assert use.input == {"_raw_arguments": "{not json"}
    streamed_use = next(b for b in streamed.content if b.type == "tool_use")
    assert streamed_use.input == use.input


async def test_a_translated_stream_cut_mid_event_is_an_error_for_the_sdk(tmp_path: Path) -> None:
    """A chat stream that stops in the middle of an event (no finish_reason, no ``[DONE]``)
    ends the translated stream with an Anthropic ``error`` event: the SDK raises instead of
    taking the cut answer for a whole one; the record bills what was relayed."""
    chunks = [{"choices": [{"index": 0, "delta": {"content": "par"}}]}]
    handler = _chat_stream_backend(chunks, done=False, tail=b'data: {"choices":[{"index":0,"del')
    async with (
        hostile(handler) as url,
        _gateway(_chat_only_config(url), tmp_path) as (gw, sink),
        anthropic.AsyncAnthropic(base_url=gw.url, api_key=KEY, max_retries=0) as client,
    ):
        with pytest.raises(anthropic.APIError):
            async with client.messages.stream(**MESSAGE) as stream:
                await stream.get_final_message()
        (record,) = await _records(sink, 1)
    assert record.completion_tokens == 1
    assert record.prompt_tokens > 0


async def test_a_limited_key_cannot_read_a_response_by_naming_an_allowed_model_in_a_get_body(
    tmp_path: Path,
) -> None:
    """Regression (app.py ``_proxy``/``_pin_response``): the model allowlist is judged on the
    body's ``model`` even for ``GET /v1/responses/{id}``, and the id's home is used whatever
    that model is. A key allowed only ``m-b`` sends ``GET /v1/responses/{alpha's m-a id}``
    with the JSON body ``{"model": "m-b"}``: auth passes (m-b is allowed), the request is
    pinned to backend ``a`` and returns alpha's ``m-a`` response. The response's own model (and
    maker) must be what is judged: 404 (or 403), never the response."""
    async with (
        mock_backend(name="a", models=("m-a",)) as a,
        mock_backend(name="b", models=("m-b",)) as b,
        _gateway(_two_models_config(a.url, b.url), tmp_path) as (gw, _),
        aiohttp.ClientSession() as session,
    ):
        _, made, _ = await _create(session, gw, KEY)
        async with session.get(
            f"{gw.url}/v1/responses/{made['id']}",
            json={"model": "m-b"},
            headers=_bearer(LIMITED_KEY),
        ) as r:
            status, body = r.status, await r.read()
    assert status in (403, 404), f"the m-b-only key read alpha's m-a response: {body[:300]!r}"


def _responses_stream_backend(response_id: str, *, split: int) -> Handler:
    events: list[dict[str, Any]] = [
        {"type": "response.created", "sequence_number": 0,
         "response": {"id": response_id, "object": "response", "status": "in_progress"}},
        {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1",
         "output_index": 0, "content_index": 0, "delta": "hi"},
        {"type": "response.completed", "sequence_number": 2,
         "response": {"id": response_id, "object": "response", "status": "completed",
                      "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}}},
    ]  # fmt: skip
    payload = b"".join(
        b"event: %s\ndata: %s\n\n" % (e["type"].encode(), json.dumps(e).encode()) for e in events
    )

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        if request.method == "GET":
            return web.json_response({"id": response_id, "object": "response"})
        response = web.StreamResponse(status=200, headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i in range(0, len(payload), split):
            await response.write(payload[i : i + split])
            await asyncio.sleep(0.001)
        await response.write_eof()
        return response

    return handler


async def test_a_response_id_cut_between_two_chunks_is_still_noted(tmp_path: Path) -> None:
    """Regression (proxy.py ``_StreamSink`` / ``_note_response``): the id is searched in each
    relayed chunk on its own (``response_id_in(data[:_ID_WITHIN])``), so a
    ``response.created`` event that arrives in pieces — any TCP segmentation, here 16-byte
    writes — is never matched: the response gets no home and its ``GET`` /
    ``previous_response_id`` are 404 from the gateway although it made it. The id must be
    found however the stream is cut (search across chunk boundaries). Billing of the same
    stream, for contrast, is right."""
    rid = "resp_" + "c" * 24
    async with (
        hostile(_responses_stream_backend(rid, split=16)) as url,
        _gateway(_config([{"url": url, "name": "h", "models": ["m-h"]}]), tmp_path) as (gw, sink),
        aiohttp.ClientSession() as session,
    ):
        async with session.post(
            gw.url + "/v1/responses",
            json={"model": "m-h", "input": "hi", "stream": True},
            headers=_bearer(KEY),
        ) as r:
            await r.read()
        (record,) = await _records(sink, 1)
        async with session.get(f"{gw.url}/v1/responses/{rid}", headers=_bearer(KEY)) as r:
            status = r.status
    assert (record.prompt_tokens, record.completion_tokens, record.usage_source) == (
        3,
        1,
        "backend",
    )
    assert status == 200, "the gateway forgot a response it relayed (id cut between chunks)"


async def test_a_whole_response_whose_first_chunk_is_short_is_still_noted(
    tmp_path: Path,
) -> None:
    """Regression (proxy.py ``_relay_body``: ``_note_response(request, backend, first)`` reads only
    the first chunk — "the id comes first in the body"): a non-streamed Responses answer whose
    first piece ends before its id (a backend writing its JSON in pieces) is never noted, so
    follow-ups on it are 404 from the gateway."""
    rid = "resp_" + "d" * 24
    body = json.dumps(
        {"id": rid, "object": "response", "status": "completed", "output": [],
         "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}}
    ).encode()  # fmt: skip

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        if request.method == "GET":
            return web.json_response({"id": rid, "object": "response"})
        response = web.StreamResponse(status=200, headers={"content-type": "application/json"})
        await response.prepare(request)
        await response.write(body[:4])
        await asyncio.sleep(0.1)
        await response.write(body[4:])
        await response.write_eof()
        return response

    async with (
        hostile(handler) as url,
        _gateway(_config([{"url": url, "name": "h", "models": ["m-h"]}]), tmp_path) as (gw, _),
        aiohttp.ClientSession() as session,
    ):
        _, made, _ = await _create(session, gw, KEY, model="m-h")
        assert made["id"] == rid
        async with session.get(f"{gw.url}/v1/responses/{rid}", headers=_bearer(KEY)) as r:
            found = r.status
    assert found == 200, "the gateway forgot a response it relayed (short first chunk)"


async def test_a_translated_answer_refused_as_invalid_is_not_billed(tmp_path: Path) -> None:
    """Regression (proxy.py ``_relay_translated_body``: ``request.usage = usage_from_body(chat)``
    is set *before* the answer is found not to be a chat completion): the client gets a 502
    and nothing else, yet the record bills the usage of the answer it never got. A request
    answered with an error the gateway made should bill nothing (as ``_relay_body`` does for
    what it does not relay)."""

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {"id": "x", "choices": [], "usage": {"prompt_tokens": 500, "completion_tokens": 700}}
        )

    async with (
        hostile(handler) as url,
        _gateway(_chat_only_config(url), tmp_path) as (gw, sink),
        aiohttp.ClientSession() as session,
    ):
        status, _ = await _post_raw(session, gw.url + "/v1/messages", json.dumps(MESSAGE).encode())
        (record,) = await _records(sink, 1)
    assert status == 502
    assert (record.prompt_tokens, record.completion_tokens) == (0, 0), record


# --------------------------------------------------------------------------------------------
# Keys, overload, the root
# --------------------------------------------------------------------------------------------


async def test_the_clients_key_never_reaches_a_backend_or_an_error(tmp_path: Path) -> None:
    """Whether the key came in ``x-api-key`` or ``Authorization`` (or both, or as
    ``x_api_key``), no spelling of it reaches the backend, plain or translated; refusals
    never quote it."""
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        seen.append(dict(request.headers))
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            }
        )

    async with (
        hostile(handler) as url,
        _gateway(_chat_only_config(url), tmp_path) as (gw, _),
        aiohttp.ClientSession() as session,
    ):
        variants = [
            {"x-api-key": KEY},
            {"authorization": f"Bearer {KEY}"},
            {"x-api-key": KEY, "authorization": f"Bearer {KEY}"},
            {"x-api-key": KEY, "x_api_key": KEY},
        ]
        for headers in variants:
            async with session.post(gw.url + "/v1/messages", json=MESSAGE, headers=headers) as r:
                assert r.status == 200, await r.read()
        wrong = "sk-redteam-wrong-secret-1234567890"
        async with session.post(
            gw.url + "/v1/messages", json=MESSAGE, headers={"x-api-key": wrong}
        ) as r:
            refusal = await r.read()
    assert len(seen) == 4
    for headers in seen:
        assert not any(KEY in value for value in headers.values()), headers
    assert wrong.encode() not in refusal


async def test_a_full_backend_is_anthropics_529_overloaded(tmp_path: Path) -> None:
    """With the only backend's one slot taken and no wait allowed, a Messages request is the
    529 ``overloaded_error`` the anthropic SDK knows to retry (the gateway's 503)."""
    async with mock_backend(models=("claude-local",), tokens=200, itl=0.01) as mock:
        config = _config(
            [{"url": mock.url, "models": ["claude-local"], "max_in_flight": 1}],
            routing={"retry": {"enabled": False}, "admission": {"timeout": "10ms"}},
        )
        async with (
            _gateway(config, tmp_path) as (gw, _),
            aiohttp.ClientSession() as session,
        ):
            long = {**MESSAGE, "max_tokens": 200, "stream": True}
            async with session.post(gw.url + "/v1/messages", json=long, headers=_headers()) as busy:
                await busy.content.readline()
                async with anthropic.AsyncAnthropic(
                    base_url=gw.url, api_key=KEY, max_retries=0
                ) as client:
                    with pytest.raises(anthropic.OverloadedError) as refused:
                        await client.messages.create(**MESSAGE)
    assert refused.value.status_code == 529
    assert _anthropic_shaped(refused.value.body, "overloaded_error")


async def test_the_root_answers_without_a_key_and_says_nothing(tmp_path: Path) -> None:
    """``HEAD /`` and ``GET /`` are 200 without a key (Claude Code's reachability check) and
    tell nothing but ``ok``; any other method there is no way past auth."""
    async with (
        mock_backend(models=("claude-local",)) as mock,
        _gateway(_mock_config(mock.url), tmp_path) as (gw, _),
        aiohttp.ClientSession() as session,
    ):
        async with session.head(gw.url + "/") as r:
            head = r.status
        async with session.get(gw.url + "/") as r:
            get = (r.status, await r.read())
        async with session.post(gw.url + "/", json=MESSAGE) as r:
            post = r.status
    assert head == 200
    assert get == (200, b'{"status":"ok"}')
    assert post in (200, 404, 405)  # answered locally, never forwarded
    assert sum(mock.stats.by_path.values()) == 0


# --------------------------------------------------------------------------------------------
# Clients leaving early are billed what they got
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("translated", [False, True], ids=["responses", "messages-translated"])
async def test_a_client_leaving_mid_stream_is_billed_what_it_got(
    tmp_path: Path, translated: bool
) -> None:
    """Cut after five deltas: the record is cancelled, counts at least the five relayed and
    far fewer than the 200 the backend would have made, and is never the backend's final
    number (there was none)."""
    async with mock_backend(name="a", models=("m-a", "claude-local"), tokens=200, itl=0.01) as mock:
        if translated:
            config = _chat_only_config(mock.url)
            path, marker = "/v1/messages", b"event: content_block_delta"
            body: dict[str, Any] = {**STREAM, "max_tokens": 200}
            headers = _headers()
        else:
            config = _config([{"url": mock.url, "name": "a", "models": ["m-a"]}])
            path, marker = "/v1/responses", b"event: response.output_text.delta"
            body = {"model": "m-a", "input": "go on", "stream": True}
            headers = _bearer(KEY)
        async with (
            _gateway(config, tmp_path) as (gw, sink),
            aiohttp.ClientSession() as session,
        ):
            received = 0
            async with session.post(gw.url + path, json=body, headers=headers) as response:
                async for line in response.content:
                    received += line.startswith(marker)
                    if received == 5:
                        break
            (record,) = await _records(sink, 1)
    assert record.cancelled
    assert 5 <= record.completion_tokens < 200, record
    assert record.usage_source in ("counted", "estimated")
    assert record.prompt_tokens > 0


async def test_a_translated_request_without_max_tokens_is_refused_like_anthropic_does(
    tmp_path: Path,
) -> None:
    """Regression (translate/_request.py ``_Request.max_tokens: ... | None = None``): Anthropic's
    API requires ``max_tokens`` (the mock's Messages endpoint, like Anthropic, answers 400),
    but for a chat-only backend the translation sends a chat request with no bound at all:
    the answer runs to the backend's own limit (the context window) while the key's limits
    reserved only ``rate_limit.default_max_tokens``. It should be the same 400
    ``invalid_request_error`` a Messages server gives, never forwarded."""
    body = {"model": "claude-local", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        mock_backend(models=("claude-local",), tokens=40) as direct_mock,
        mock_backend(models=("claude-local",), tokens=40) as chat_mock,
    ):
        direct = _config([{"url": direct_mock.url, "models": ["claude-local"]}])
        async with _gateway(direct, tmp_path / "direct") as (gw, _):
            async with aiohttp.ClientSession() as session:
                direct_answer = await _post_raw(
                    session, gw.url + "/v1/messages", json.dumps(body).encode()
                )
        async with _gateway(_chat_only_config(chat_mock.url), tmp_path / "chat") as (gw, _):
            async with aiohttp.ClientSession() as session:
                translated = await _post_raw(
                    session, gw.url + "/v1/messages", json.dumps(body).encode()
                )
    assert direct_answer[0] == 400
    assert translated[0] == 400, translated
    assert _anthropic_shaped(json.loads(translated[1]), "invalid_request_error")
    assert chat_mock.stats.by_path.get("/v1/chat/completions", 0) == 0


def test_metering_a_long_usage_event_in_small_reads_is_linear() -> None:
    """Regression (usage/events.py ``EventStreamUsage.feed``/``_hold``): an unfinished event is
    kept as ``self._tail`` and each new chunk does ``self._tail + chunk``, ``rfind`` and a
    marker search over the whole tail — quadratic in the event's size. A Responses
    ``response.completed`` holds the whole answer and may be kept up to 16 MiB: a backend
    (hostile, or pacing its writes) sending a 4 MiB one in 4 KiB pieces makes the gateway
    spend ~2 s of event-loop CPU on it (1 KiB pieces: ~8 s; 16 MiB: minutes), where the
    translation's ``SseEvents`` splits the same bytes in ~20 ms. The meter should only look
    at the new bytes (a bytearray tail, a search from where the last one stopped)."""
    import time

    from llmproxy.usage.events import RESPONSES, EventStreamUsage

    text = "x" * (4 * 1024 * 1024)
    event = {
        "type": "response.completed",
        "response": {
            "id": "resp_1",
            "status": "completed",
            "output": [{"type": "message", "content": [{"type": "output_text", "text": text}]}],
            "usage": {"input_tokens": 3, "output_tokens": 5},
        },
    }
    data = b"event: response.completed\ndata: " + json.dumps(event).encode() + b"\n\n"
    meter = EventStreamUsage(RESPONSES)
    started = time.process_time()
    for i in range(0, len(data), 4096):
        meter.feed(data[i : i + 4096])
    spent = time.process_time() - started
    usage = meter.usage(0)
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 5)
    assert spent < 0.5, f"{spent:.2f} s of CPU to meter one 4 MiB event in 4 KiB reads"


async def _raw(gw: RunningGateway, request: bytes) -> tuple[int, bytes]:
    port = int(gw.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _messages_request(line: bytes, extra: bytes = b"", body: bytes | None = None) -> bytes:
    body = json.dumps(MESSAGE).encode() if body is None else body
    return (
        line + b"\r\nhost: x\r\nx-api-key: " + KEY.encode() + b"\r\n" + extra
        + b"content-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % len(body) + body
    )  # fmt: skip


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"POST /v1/messages/%2e%2e HTTP/1.1", 400),
        (b"POST /v1/messages/ HTTP/1.1", 400),
        (b"POST /v1/messages/count_tokens/.. HTTP/1.1", 400),
        (b"PROPFIND /v1/messages HTTP/1.1", 405),
        (b"PUT /v1/messages HTTP/1.1", 405),
    ],
)
async def test_messages_requests_refused_before_parsing_are_anthropic_shaped(
    tmp_path: Path, line: bytes, status: int
) -> None:
    """A Messages request refused while its line is judged (a non-canonical path, a method the
    gateway does not serve) is still answered in Anthropic's shape."""
    async with (
        mock_backend(models=("claude-local",)) as mock,
        _gateway(_mock_config(mock.url), tmp_path) as (gw, _),
    ):
        got_status, got = await _raw(gw, _messages_request(line))
    assert got_status == status, got
    assert _anthropic_shaped(json.loads(got)), got


async def test_a_messages_path_with_a_matrix_parameter_is_refused_in_anthropics_shape(
    tmp_path: Path,
) -> None:
    """Regression (app.py ``_http``: ``is_anthropic(endpoint or str(scope["path"]).lower())`` with
    apis.py ``is_anthropic`` matching only ``/v1/messages`` or ``/v1/messages/...``):
    ``POST /v1/messages;x=1`` — refused 400 ``invalid_path`` — is answered in the OpenAI shape,
    since the raw spelling ``/v1/messages;x=1`` is neither. A path that is a Messages path up
    to its first ``;``/segment should get Anthropic's shape."""
    async with (
        mock_backend(models=("claude-local",)) as mock,
        _gateway(_mock_config(mock.url), tmp_path) as (gw, _),
    ):
        got_status, got = await _raw(gw, _messages_request(b"POST /v1/messages;x=1 HTTP/1.1"))
    assert got_status == 400, got
    assert _anthropic_shaped(json.loads(got)), got


async def test_listener_refusals_on_messages_paths_are_anthropic_shaped(tmp_path: Path) -> None:
    """Refusals the listener makes before the app runs — a header block over
    ``max_header_size`` (431), a body that does not arrive within ``read_timeout`` (408) —
    reach a client of ``/v1/messages`` in Anthropic's shape: the listener knows the request's
    path by then. (A request line the HTTP parser refuses has no path to go by: OpenAI's.)"""
    async with mock_backend(models=("claude-local",)) as mock:
        config = _config(
            [{"url": mock.url, "models": ["claude-local"]}],
            server={"max_header_size": 2048, "read_timeout": "1s"},
        )
        async with _gateway(config, tmp_path) as (gw, _):
            too_big = await _raw(
                gw,
                _messages_request(
                    b"POST /v1/messages HTTP/1.1", b"x-pad: " + b"a" * 4000 + b"\r\n"
                ),
            )
            port = int(gw.url.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            whole = _messages_request(b"POST /v1/messages HTTP/1.1")
            writer.write(whole[:-10])  # the body never ends
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            await writer.wait_closed()
            head, _, body = raw.partition(b"\r\n\r\n")
            slow = (int(head.split()[1]), body)
    results = {"431": too_big, "408": slow}
    for label, (status, body) in results.items():
        assert str(status) == label, (label, status, body)
    wrong = {
        label: body
        for label, (_, body) in results.items()
        if not _anthropic_shaped(json.loads(body))
    }
    assert not wrong, wrong


async def test_an_internal_failure_on_messages_is_an_anthropic_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (app.py ``GatewayApp._http``: the ``except Exception`` branch calls
    ``send_error(...)`` without ``anthropic=``): when anything inside the gateway fails on a
    ``/v1/messages`` request (simulated here by making the prompt estimate raise), the client
    gets the OpenAI-shaped ``{"error": {...}}`` 500; the anthropic SDK then cannot read its
    type. Every error on the Messages paths must be Anthropic's ``api_error``."""
    import llmproxy.gateway.app as app_module

    def broken(*_args: Any) -> int:
        raise RuntimeError("simulated defect")

    monkeypatch.setattr(app_module, "estimate_prompt_tokens", broken)
    async with (
        mock_backend(models=("claude-local",)) as mock,
        _gateway(_mock_config(mock.url), tmp_path) as (gw, _),
        aiohttp.ClientSession() as session,
    ):
        status, body = await _post_raw(
            session, gw.url + "/v1/messages", json.dumps(MESSAGE).encode()
        )
    assert status == 500
    assert _anthropic_shaped(json.loads(body), "api_error"), body
