"""Usage of Anthropic Messages and OpenAI Responses streams, read as they are relayed: the bytes
pass unchanged, however the stream is cut, and the bill is the backend's where it sent one."""

from __future__ import annotations

import json

import pytest

from llmproxy.usage import EventStreamUsage
from llmproxy.usage.events import MESSAGES, RESPONSES, Dialect


def _event(kind: str, data: dict[str, object], *, spaced: bool = False) -> bytes:
    separators = (", ", ": ") if spaced else (",", ":")
    payload = json.dumps({"type": kind, **data}, separators=separators)
    return f"event: {kind}\ndata: {payload}\n\n".encode()


def _messages(tokens: int, *, end: bool = True) -> bytes:
    events = [
        _event(
            "message_start",
            {
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "m",
                    "stop_reason": None,
                    "usage": {
                        "input_tokens": 20,
                        "output_tokens": 1,
                        "cache_creation_input_tokens": 5,
                        "cache_read_input_tokens": 100,
                    },
                }
            },
        ),
        _event("ping", {}),
        _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
    ]
    for i in range(tokens):
        # Text that looks like the markers, as a model may write it: escaped, never counted.
        text = '"content_block_delta" "type":"error"' if i == 0 else "tok "
        events.append(
            _event(
                "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}}
            )
        )
    if end:
        events += [
            _event("content_block_stop", {"index": 0}),
            _event(
                "message_delta",
                {
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": tokens},
                },
            ),
            _event("message_stop", {}),
        ]
    return b"".join(events)


def _responses(tokens: int, *, end: bool = True) -> bytes:
    events = [_event("response.created", {"response": {"id": "resp_1", "status": "in_progress"}})]
    for i in range(tokens):
        events.append(_event("response.output_text.delta", {"item_id": "m", "delta": f"t{i} "}))
    if end:
        usage = {"input_tokens": 30, "output_tokens": tokens, "total_tokens": 30 + tokens}
        events.append(
            _event(
                "response.completed",
                {
                    "response": {
                        "id": "resp_1",
                        "status": "completed",
                        "usage": usage,
                        "output": [{"type": "message", "content": [{"text": "x" * 70000}]}],
                    }
                },
            )
        )
    return b"".join(events)


def _relay(dialect: Dialect, stream: bytes, cuts: list[int]) -> tuple[bytes, EventStreamUsage]:
    meter = EventStreamUsage(dialect)
    out, start = [], 0
    for cut in [*cuts, len(stream)]:
        out.append(meter.feed(stream[start:cut]))
        start = cut
    out.append(meter.finish())
    return b"".join(out), meter


@pytest.mark.parametrize(
    ("dialect", "stream", "prompt", "completion", "reason"),
    [
        (MESSAGES, _messages(7), 125, 7, "end_turn"),
        (RESPONSES, _responses(9), 30, 9, "completed"),
    ],
)
def test_a_whole_stream_is_billed_as_the_backend_says_however_it_is_cut(
    dialect: Dialect, stream: bytes, prompt: int, completion: int, reason: str
) -> None:
    step = max(1, len(stream) // 300)
    for size in (len(stream), 1, 7, 64, 1000):
        cuts = list(range(size, len(stream), size)) if size < len(stream) else []
        relayed, meter = _relay(dialect, stream, cuts[::step] if size == 1 else cuts)
        assert relayed == stream
        usage = meter.usage(prompt_estimate=3)
        assert (usage.prompt_tokens, usage.completion_tokens, usage.source) == (
            prompt,
            completion,
            "backend",
        )
        assert usage.finish_reason == reason
        assert meter.done
        assert meter.error is None
        assert meter.events == completion


def test_a_cut_messages_stream_bills_the_backends_prompt_and_the_deltas_relayed() -> None:
    _, meter = _relay(MESSAGES, _messages(5, end=False), [100, 333])
    usage = meter.usage(prompt_estimate=3)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.source) == (125, 5, "counted")
    assert not meter.done
    assert meter.counted(3) == (125, 5)


def test_a_cut_responses_stream_bills_the_estimate_and_the_deltas() -> None:
    _, meter = _relay(RESPONSES, _responses(4, end=False), [50])
    usage = meter.usage(prompt_estimate=11)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.source) == (11, 4, "estimated")


def test_an_error_event_is_noted() -> None:
    stream = _messages(2, end=False) + _event(
        "error", {"error": {"type": "overloaded_error", "message": "busy"}}, spaced=True
    )
    _, meter = _relay(MESSAGES, stream, [])
    assert meter.error is not None
    assert not meter.done
