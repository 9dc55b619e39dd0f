"""Scanning a streamed answer: content events, usage, a whole or broken stream."""

from __future__ import annotations

import json

import pytest

from llmproxy.replay.sse import StreamScan, body_output_tokens


def _event(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _chat(content: str | None, **delta) -> bytes:
    return _event({"choices": [{"index": 0, "delta": {"content": content, **delta}}]})


ROLE = _event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
USAGE = _event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 42}})
DONE = b"data: [DONE]\n\n"


def _scan(pieces: list[tuple[bytes, float]]) -> StreamScan:
    scan = StreamScan()
    for data, now in pieces:
        scan.feed(data, now)
    return scan


def test_first_content_not_the_role_chunk_is_the_first_token() -> None:
    scan = _scan(
        [(ROLE, 1.0), (_chat("Hel"), 1.2), (_chat("lo"), 1.3), (_chat("!"), 1.6), (DONE, 1.7)]
    )
    assert scan.first_content == 1.2
    assert scan.last_content == 1.6
    assert scan.content_events == 3
    assert scan.mean_gap == pytest.approx(0.2)
    assert scan.output_tokens == 3  # no usage event: content events are counted
    assert scan.complete


def test_the_usage_event_gives_the_token_count() -> None:
    scan = _scan([(_chat("a"), 1.0), (_chat("b"), 1.1), (USAGE, 1.2), (DONE, 1.2)])
    assert scan.output_tokens == 42
    assert scan.content_events == 2


def test_events_split_anywhere_are_reassembled() -> None:
    stream = ROLE + _chat("x") + b": keep-alive\n\n" + _chat("y") + USAGE + DONE
    for size in (1, 2, 3, 7, 50):
        pieces = [(stream[i : i + size], float(i)) for i in range(0, len(stream), size)]
        scan = _scan(pieces)
        assert (scan.content_events, scan.output_tokens, scan.complete) == (2, 42, True), size


def test_crlf_line_ends() -> None:
    stream = (_chat("x") + _chat("y") + DONE).replace(b"\n", b"\r\n")
    pieces = [(stream[i : i + 5], 0.0) for i in range(0, len(stream), 5)]
    scan = _scan(pieces)
    assert (scan.content_events, scan.complete) == (2, True)


def test_completion_text_reasoning_and_tool_calls_are_content() -> None:
    scan = _scan(
        [
            (_event({"choices": [{"index": 0, "text": "abc"}]}), 1.0),
            (_chat(None, reasoning_content="hmm"), 2.0),
            (_chat(None, tool_calls=[{"index": 0, "function": {"name": "f"}}]), 3.0),
        ]
    )
    assert scan.content_events == 3


def test_a_stream_without_done_is_broken() -> None:
    scan = _scan([(_chat("a"), 1.0)])
    assert not scan.complete
    assert scan.error is None


def test_an_error_event_breaks_the_stream() -> None:
    error = b'event: error\ndata: {"error": {"message": "backend went away"}}\n\n'
    scan = _scan([(_chat("a"), 1.0), (error, 1.1), (DONE, 1.2)])
    assert not scan.complete
    assert "backend went away" in (scan.error or "")


def test_an_error_object_in_data_breaks_the_stream() -> None:
    scan = _scan([(_event({"error": {"message": "overloaded"}}), 1.0), (DONE, 1.0)])
    assert not scan.complete


def test_unknown_payloads_are_ignored() -> None:
    scan = _scan([(b"data: not json\n\n", 1.0), (_event([1, 2]), 1.0), (DONE, 1.1)])
    assert (scan.content_events, scan.complete) == (0, True)


def test_one_event_has_no_gap() -> None:
    assert _scan([(_chat("a"), 1.0)]).mean_gap is None


def test_body_output_tokens() -> None:
    assert body_output_tokens(b'{"usage": {"completion_tokens": 5}}') == 5
    assert body_output_tokens(b'{"data": []}') is None
    assert body_output_tokens(b"<html>") is None
