"""Hostile backends: whatever a backend answers, the client gets an honest answer and the
gateway keeps its memory.

An answer the gateway cannot relay faithfully becomes a 502 in the OpenAI shape; one that
breaks after its status line was sent is cut off (the client never takes it for complete); a
huge non-streamed answer is relayed as it arrives, its usage still read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.daemon import Daemon, base_config, capture_backend, daemon, free_port, until
from tests.security.wire import http_request, response

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


@contextlib.contextmanager
def _gateway(tmp_path: Path, answer: bytes, *, close: bool = True) -> Iterator[Daemon]:
    """The daemon in front of a backend that gives every request ``answer``."""
    with capture_backend(respond=lambda _request: answer, close_after=close) as backend:
        config = base_config(
            backend.url,
            free_port(),
            backends=[{"url": backend.url, "name": "hostile", "first_byte_timeout": "3s"}],
            routing={"retry": {"enabled": False}},
        )
        with daemon(tmp_path, config) as running:
            yield running


CHAT = http_request("POST", b"/v1/chat/completions", BODY)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 999 Weird\r\ncontent-length: 2\r\n\r\n{}",
        b"HTTP/1.1 600 X\r\ncontent-length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 100_000 + b"\r\ncontent-length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nnot chunked\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"",
        b"HTTP/1.1 200 OK\r\nx-a: a\x01b\r\ncontent-length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nx-a: a\x7fb\r\ncontent-length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-a: \x0b\r\n\r\n",
    ],
    ids=[
        "status-999",
        "status-600",
        "huge-header",
        "bad-chunks",
        "two-lengths",
        "garbage",
        "empty",
        "control-char-header",
        "del-in-header",
        "control-char-sse",
    ],
)
def test_unrelayable_answers_are_502(tmp_path: Path, answer: bytes) -> None:
    """An invalid status, an oversized header block, malformed framing or no answer at all is a
    502 in the OpenAI shape, never a dropped connection or a traceback."""
    with _gateway(tmp_path, answer) as running:
        reply = running.request(CHAT)
        assert reply.status == 502
        assert reply.error_code() in {
            "upstream_invalid_response",
            "upstream_unreachable",
            "upstream_reset",
        }
        assert "Traceback" not in running.log_text()


def test_answer_cut_after_its_status_line_is_cut_for_the_client(tmp_path: Path) -> None:
    """A body shorter than its Content-Length is not passed off as complete: the client gets
    the status, the bytes that came, and a closed connection."""
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"
    answer += b'{"partial": '
    with _gateway(tmp_path, answer) as running:
        with pytest.raises(asyncio.IncompleteReadError) as cut:
            running.request(CHAT)
        assert cut.value.partial == b'{"partial": '
        assert "broke off its answer" in running.log_text()
        assert "Traceback" not in running.log_text()


def _embeddings(count: int) -> bytes:
    vector = ",".join(["0.0123456789"] * 256)
    data = ",".join(
        f'{{"object":"embedding","index":{i},"embedding":[{vector}]}}' for i in range(count)
    )
    usage = '{"prompt_tokens":4321,"total_tokens":4321}'
    return f'{{"object":"list","model":"m","data":[{data}],"usage":{usage}}}'.encode()


def test_huge_answer_is_relayed_not_held(tmp_path: Path) -> None:
    """A 50 MB non-streamed answer reaches the client whole, the daemon's memory grows by far
    less than the answer, and the usage at its end is still read and recorded."""
    body = _embeddings(16_000)
    assert len(body) > 50_000_000
    answer = response(200, body)
    with _gateway(tmp_path, answer, close=False) as running:
        running.request(CHAT)  # warm up
        before = running.rss_kib()
        reply = running.request(
            http_request("POST", b"/v1/embeddings", b'{"model":"m","input":"x"}'), timeout=60
        )
        grown = running.rss_kib() - before
        assert reply.status == 200
        assert reply.body == body
        assert grown < 20 * 1024, f"RSS grew {grown} KiB relaying {len(body)} bytes"

        def recorded() -> list[dict[str, object]]:
            with sqlite3.connect(running.directory / "usage.db") as db:
                rows = db.execute("SELECT body FROM usage").fetchall()
            return [json.loads(row[0]) for row in rows]

        assert until(lambda: any(r["endpoint"] == "/v1/embeddings" for r in recorded()), 10)
        record = next(r for r in recorded() if r["endpoint"] == "/v1/embeddings")
        assert (record["prompt_tokens"], record["usage_source"]) == (4321, "backend")
