"""Passive ejection that a client cannot trigger.

A request the backend chokes on (a 5xx only that request gets) must not take the backend away
from everyone else; a backend that fails everyone is still taken out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from tests.security.daemon import Daemon, base_config, capture_backend, daemon, free_port
from tests.security.wire import CaptureBackend, Received, chat_answer, http_request, response

ATTACKER = "sk-attacker-0123456789"
VICTIMS = [f"sk-victim-{n}-0123456789" for n in range(3)]


def _poisoned(request: Received) -> bytes:
    """A backend that fails any request whose prompt says "poison", and serves the rest."""
    if b"poison" in request.body:
        return response(500, b'{"error": {"message": "internal error"}}')
    return chat_answer(request)


async def _slow_when_long(request: Received) -> bytes:
    """A vLLM-like backend answering a non-streamed request only when generation ends: a
    request for thousands of tokens takes long, whoever sends it."""
    if b'"max_tokens": 5000' in request.body:
        await asyncio.sleep(2.5)
    return chat_answer(request)


def _broken(_request: Received) -> bytes:
    return response(503, b'{"error": {"message": "overloaded"}}')


def _chat(key: str, prompt: str) -> bytes:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}]})
    return http_request(
        "POST", b"/v1/chat/completions", body.encode(), {"authorization": f"Bearer {key}"}
    )


def _config(urls: list[str]) -> dict[str, object]:
    keys = [{"key": key} for key in (ATTACKER, *VICTIMS)]
    return base_config(
        urls[0],
        free_port(),
        backends=[{"url": url, "name": f"b{n}"} for n, url in enumerate(urls)],
        health_check={"enabled": False, "passive": {"failure_threshold": 3}},
        auth={"enabled": True, "pipeline": [{"name": "keys", "type": "static", "keys": keys}]},
    )


@contextlib.contextmanager
def _run(tmp_path: Path, backends: list[CaptureBackend]) -> Iterator[Daemon]:
    with daemon(tmp_path, _config([b.url for b in backends])) as running:
        yield running


def test_one_key_cannot_eject_the_only_backend(tmp_path: Path) -> None:
    """One key sending 30 requests that make the backend answer 500 gets its 500s (relayed, not
    disguised); the other keys are served throughout and after."""
    with capture_backend(respond=_poisoned) as backend:
        with _run(tmp_path, [backend]) as running:
            for _ in range(30):
                assert running.request(_chat(ATTACKER, "poison")).status == 500
            for key in VICTIMS * 5:
                assert running.request(_chat(key, "hello")).status == 200


def test_a_request_that_fails_everywhere_counts_nowhere(tmp_path: Path) -> None:
    """A request that fails on both backends is the common factor: neither is taken out."""
    with capture_backend(respond=_poisoned) as one, capture_backend(respond=_poisoned) as two:
        with _run(tmp_path, [one, two]) as running:
            for _ in range(20):
                assert running.request(_chat(ATTACKER, "poison")).status == 500
            assert one.received
            assert two.received
            before = (len(one.received), len(two.received))
            for key in VICTIMS * 4:
                assert running.request(_chat(key, "hello")).status == 200
            assert len(one.received) > before[0]
            assert len(two.received) > before[1]


def test_long_generations_of_one_client_eject_nothing(tmp_path: Path) -> None:
    """Requests that time out because of what they ask for (a long non-streamed generation)
    are the request's doing: tried on both backends, counted against neither, and the other
    clients are served at once throughout."""
    with (
        capture_backend(respond=_slow_when_long) as one,
        capture_backend(respond=_slow_when_long) as two,
    ):
        config = _config([one.url, two.url])
        backends = config["backends"]
        assert isinstance(backends, list)
        for backend in backends:
            backend["first_byte_timeout"] = "1s"
        with daemon(tmp_path, config) as running:
            long = json.dumps({"model": "m", "messages": [], "max_tokens": 5000}).encode()
            request = http_request(
                "POST", b"/v1/chat/completions", long, {"authorization": f"Bearer {ATTACKER}"}
            )
            for _ in range(4):
                reply = running.request(request, timeout=30)
                assert (reply.status, reply.error_code()) == (504, "upstream_timeout")
            for key in VICTIMS * 2:
                assert running.request(_chat(key, "hello")).status == 200
            assert "ejected" not in running.log_text().lower()


def test_a_backend_failing_everyone_is_still_ejected(tmp_path: Path) -> None:
    """5xx answers met by several clients take the backend out: after the run, requests are
    refused at once without reaching it."""
    with capture_backend(respond=_broken) as backend:
        with _run(tmp_path, [backend]) as running:
            for key in VICTIMS:
                running.request(_chat(key, "hello"))
            reached = len(backend.received)
            reply = running.request(_chat(ATTACKER, "hello"))
            assert (reply.status, reply.error_code()) == (503, "no_backend_available")
            assert len(backend.received) == reached


def test_a_backend_failing_where_another_serves_is_ejected(tmp_path: Path) -> None:
    """A request that fails on one backend and is served by the other proves the first at
    fault: it is counted and taken out, whoever sent the request."""
    with capture_backend(respond=_broken) as bad, capture_backend() as good:
        with _run(tmp_path, [bad, good]) as running:
            for _ in range(12):
                assert running.request(_chat(ATTACKER, "hello")).status == 200
            reached = len(bad.received)
            for _ in range(10):
                assert running.request(_chat(ATTACKER, "hello")).status == 200
            assert len(bad.received) == reached
