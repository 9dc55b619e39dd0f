"""Recording end to end: a real gateway, real HTTP requests, the file read back line by line."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from llmproxy.apikey import key_sha256
from llmproxy.config.loader import load_config
from llmproxy.config.model import Config
from llmproxy.daemon.reload import Reloader
from llmproxy.daemon.runtime import Runtime, RuntimeState
from llmproxy.record.format import RecordedRequest, decode_line
from tests.harness import RunningGateway, make_config, mock_backend, serve_state

KEY = "sk-record-test-secret-key-4f2a9c"
KEY_ID = "sha256:" + key_sha256(KEY)[:12]
HEADERS = {"Authorization": f"Bearer {KEY}"}
CHAT = "/v1/chat/completions"
AUTH = {
    "enabled": True,
    "pipeline": [{"name": "keys", "type": "static", "keys": [{"key": KEY, "name": "team"}]}],
}


def _config(mock_url: str, **record: Any) -> Config:
    return make_config(
        [{"url": mock_url, "models": ["mock-model"]}],
        auth=AUTH,
        record={"enabled": True, "path": "rec/traffic.jsonl", **record},
    )


@contextlib.asynccontextmanager
async def _gateway(config: Config, base_dir: Path) -> AsyncIterator[RunningGateway]:
    async with serve_state(RuntimeState(Runtime(config, base_dir=base_dir))) as running:
        yield running


def _lines(path: Path) -> list[RecordedRequest]:
    return [decode_line(line) for line in path.read_bytes().splitlines()]


async def _post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[int, bytes]:
    async with session.post(url, json=body, headers=HEADERS) as response:
        return response.status, await response.read()


def _usage(answer: bytes) -> tuple[int, int]:
    """(prompt, completion) tokens from a plain answer or from an SSE stream's usage event."""
    if answer.startswith(b"data: "):
        for event in answer.split(b"\n\n"):
            data = event.removeprefix(b"data: ")
            if data.startswith(b"{") and b'"usage":{' in data:
                usage = json.loads(data)["usage"]
                return usage["prompt_tokens"], usage["completion_tokens"]
        raise AssertionError("no usage event")
    usage = json.loads(answer)["usage"]
    return usage["prompt_tokens"], usage.get("completion_tokens", 0)


REQUESTS: list[tuple[str, dict[str, Any]]] = [
    (
        CHAT,
        {
            "model": "mock-model",
            "messages": [{"role": "user", "content": "plain chat, please"}],
            "max_tokens": 5,
        },
    ),
    (
        CHAT,
        {
            "model": "mock-model",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "a stream that did not ask for usage"},
            ],
            "max_tokens": 7,
            "stream": True,
        },
    ),
    (
        "/v1/completions",
        {"model": "mock-model", "prompt": "Once upon a time", "max_tokens": 3, "stream": True},
    ),
    ("/v1/embeddings", {"model": "mock-model", "input": ["embed this", "and this"]}),
]


async def test_requests_are_recorded_as_the_client_sent_them(tmp_path: Path) -> None:
    """Endpoints, models, stream flags, bodies (no include_usage added), tokens as the backend
    counted them, the key id; a 404 model too; the secret nowhere in the file."""
    async with mock_backend() as mock:
        async with (
            _gateway(_config(mock.url), tmp_path) as gw,
            aiohttp.ClientSession() as session,
        ):
            expected: list[tuple[int, int]] = []
            for endpoint, body in REQUESTS:
                # The backend's own count, asked directly (with usage in the stream).
                direct = dict(body)
                if body.get("stream"):
                    direct["stream_options"] = {"include_usage": True}
                status, answer = await _post(session, mock.url + endpoint, direct)
                assert status == 200
                expected.append(_usage(answer))
                status, _ = await _post(session, gw.url + endpoint, body)
                assert status == 200
            missing = {"model": "no-such-model", "messages": [{"role": "user", "content": "?"}]}
            status, _ = await _post(session, gw.url + CHAT, missing)
            assert status == 404
            async with session.get(gw.url + "/v1/models", headers=HEADERS) as response:
                assert response.status == 200
            recorder = gw.state.recorder
        # The gateway has stopped: the recorder wrote what was queued and closed the file.
    path = tmp_path / "rec" / "traffic.jsonl"
    raw = path.read_bytes()
    assert KEY.encode() not in raw
    assert b"authorization" not in raw.lower()
    lines = _lines(path)
    assert [(line.endpoint, line.model, line.stream) for line in lines] == [
        (CHAT, "mock-model", False),
        (CHAT, "mock-model", True),
        ("/v1/completions", "mock-model", True),
        ("/v1/embeddings", "mock-model", False),
        (CHAT, "no-such-model", False),
    ]
    assert [line.body for line in lines] == [body for _, body in REQUESTS] + [missing]
    assert all(line.key_id == KEY_ID for line in lines)
    outcomes = [line.outcome for line in lines]
    assert all(outcome is not None for outcome in outcomes)
    assert [(o.status, o.prompt_tokens, o.completion_tokens) for o in outcomes if o] == [
        (200, *tokens) for tokens in expected
    ] + [(404, 0, 0)]
    streamed = [line.outcome for line in lines if line.stream]
    assert all(o is not None and o.ttft_ms is not None and o.ttft_ms >= 0 for o in streamed)
    assert all(o is not None and o.duration_ms > 0 and not o.cancelled for o in outcomes)
    offsets = [line.offset for line in lines]
    assert offsets == sorted(offsets)
    assert offsets[0] >= 0
    assert (recorder.written, recorder.dropped) == (5, 0)


async def test_shapes_and_redaction_keep_sizes_without_text(tmp_path: Path) -> None:
    """bodies: false records shapes; redact: true records bodies whose texts are all x's."""
    chat = {
        "model": "mock-model",
        "messages": [{"role": "user", "content": "confidential words"}],
        "max_tokens": 4,
        "stream": True,
    }
    async with mock_backend() as mock:
        for name, record in (("shape", {"bodies": False}), ("redact", {"redact": True})):
            config = _config(mock.url, path=f"{name}.jsonl", **record)
            async with _gateway(config, tmp_path) as gw, aiohttp.ClientSession() as session:
                assert (await _post(session, gw.url + CHAT, chat))[0] == 200
    for name in ("shape", "redact"):
        assert b"confidential" not in (tmp_path / f"{name}.jsonl").read_bytes()
    (shape,) = _lines(tmp_path / "shape.jsonl")
    assert shape.body is None
    assert shape.shape is not None
    assert [(m.role, m.chars) for m in shape.shape.messages] == [("user", 18)]
    assert shape.shape.max_tokens == 4
    (redacted,) = _lines(tmp_path / "redact.jsonl")
    assert redacted.body == {**chat, "messages": [{"role": "user", "content": "x" * 18}]}


async def test_a_reload_turns_recording_on_and_off(tmp_path: Path) -> None:
    """``record`` is no restart-only key: a reload starts recording, another stops it."""
    path = tmp_path / "config.yaml"
    chat = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}
    async with mock_backend() as mock:
        data: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "backends": [{"url": mock.url}],
            "health_check": {"enabled": False},
            "server": {"watch_config": False},
            "admin": {"enabled": False},
            "usage": {"enabled": False},
            "auth": AUTH,
        }
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        state = RuntimeState(Runtime(load_config(path), base_dir=tmp_path))
        reloader = Reloader(state, path)
        async with serve_state(state) as gw, aiohttp.ClientSession() as session:
            assert (await _post(session, gw.url + CHAT, {**chat, "max_tokens": 1}))[0] == 200
            data["record"] = {"enabled": True, "path": "on.jsonl"}
            path.write_text(yaml.safe_dump(data), encoding="utf-8")
            outcome = await reloader.reload()
            assert outcome.ok, outcome.error
            assert "record.enabled: False → True" in outcome.changes
            assert (await _post(session, gw.url + CHAT, {**chat, "max_tokens": 2}))[0] == 200
            data["record"] = {"enabled": False, "path": "on.jsonl"}
            path.write_text(yaml.safe_dump(data), encoding="utf-8")
            assert (await reloader.reload()).ok
            assert (await _post(session, gw.url + CHAT, {**chat, "max_tokens": 3}))[0] == 200
            await reloader.stop()
    (line,) = _lines(tmp_path / "on.jsonl")
    assert line.body is not None
    assert line.body["max_tokens"] == 2
