"""SSE streams as vLLM's OpenAI server writes them, each with the usage a test must find in it.

vLLM serialises with pydantic (``model_dump_json(exclude_unset=True)``): compact JSON, non-ASCII
text as raw UTF-8, ``"logprobs":null,"finish_reason":null`` in every choice, ``stop_reason`` next
to a non-null ``finish_reason``, and with ``stream_options.include_usage`` a last event with
``"choices":[]`` and the ``usage``. :func:`event` builds the same bytes with msgspec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CREATED = 1718000000
DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


def usage_obj(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }


def chat_event(
    delta: dict[str, Any],
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
    logprobs: Any = None,
) -> bytes:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": logprobs}
    choice["finish_reason"] = finish_reason
    if finish_reason is not None:
        choice["stop_reason"] = None
    payload: dict[str, Any] = {
        "id": "chatcmpl-8f3c0b7e5a2d4c1b9e6f0a3d2c1b4e5f",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [choice],
    }
    if usage is not None:
        payload["usage"] = usage
    return event(payload)


def text_event(text: str, finish_reason: str | None = None) -> bytes:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    choice["stop_reason"] = None
    payload = {
        "id": "cmpl-5d1f0c2b9a8e4f7d",
        "object": "text_completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [choice],
    }
    return event(payload)


def usage_event(prompt: int, completion: int, obj: str = "chat.completion.chunk") -> bytes:
    payload = {
        "id": "chatcmpl-8f3c0b7e5a2d4c1b9e6f0a3d2c1b4e5f",
        "object": obj,
        "created": CREATED,
        "model": MODEL,
        "choices": [],
        "usage": usage_obj(prompt, completion),
    }
    return event(payload)


@dataclass(frozen=True)
class Stream:
    """The events of one stream, which of them is the usage-only event, and what to expect."""

    name: str
    events: tuple[bytes, ...]
    usage_index: int | None  # the usage-only event, stripped when the gateway asked for it
    prompt_tokens: int | None  # from the backend, None if it sent no usage
    completion_tokens: int  # the backend's, or the count of content events
    finish_reason: str | None
    data_events: int  # data events, without [DONE]
    done: bool = True
    content_events: int = field(default=0)

    @property
    def raw(self) -> bytes:
        return b"".join(self.events)

    @property
    def stripped(self) -> bytes:
        return b"".join(e for i, e in enumerate(self.events) if i != self.usage_index)

    def crlf(self) -> Stream:
        """The same stream with CRLF line ends (JSON holds no raw newline, so all are framing)."""
        events = tuple(e.replace(b"\n", b"\r\n") for e in self.events)
        return Stream(
            self.name + "-crlf",
            events,
            self.usage_index,
            self.prompt_tokens,
            self.completion_tokens,
            self.finish_reason,
            self.data_events,
            self.done,
            self.content_events,
        )


CHAT_TOKENS = ("Hello", ",", " world", "!")

CHAT = Stream(
    "chat",
    (
        chat_event({"role": "assistant", "content": ""}),
        *(chat_event({"content": t}) for t in CHAT_TOKENS[:-1]),
        chat_event({"content": CHAT_TOKENS[-1]}, finish_reason="stop"),
        usage_event(12, 4),
        DONE,
    ),
    usage_index=5,
    prompt_tokens=12,
    completion_tokens=4,
    finish_reason="stop",
    data_events=6,
    content_events=4,
)

SHORT = Stream(
    "short",
    (
        chat_event({"role": "assistant", "content": ""}),
        chat_event({"content": "Hi"}, finish_reason="length"),
        usage_event(3, 1),
        DONE,
    ),
    usage_index=2,
    prompt_tokens=3,
    completion_tokens=1,
    finish_reason="length",
    data_events=3,
    content_events=1,
)
"""Short enough to split at every position, and at every pair of positions."""

COMPLETIONS = Stream(
    "completions",
    (
        *(text_event(t) for t in (" The", " quick", " brown")),
        text_event(" fox", finish_reason="length"),
        usage_event(5, 4, obj="text_completion"),
        DONE,
    ),
    usage_index=4,
    prompt_tokens=5,
    completion_tokens=4,
    finish_reason="length",
    data_events=5,
    content_events=4,
)

CONTINUOUS = Stream(
    "continuous-usage-stats",
    (
        chat_event({"role": "assistant", "content": ""}, usage=usage_obj(9, 0)),
        chat_event({"content": "One"}, usage=usage_obj(9, 1)),
        chat_event({"content": " two"}, usage=usage_obj(9, 2)),
        chat_event({"content": " three"}, finish_reason="stop", usage=usage_obj(9, 3)),
        usage_event(9, 3),
        DONE,
    ),
    usage_index=4,
    prompt_tokens=9,
    completion_tokens=3,
    finish_reason="stop",
    data_events=5,
    content_events=3,
)

TOOL_CALLS = Stream(
    "tool-calls",
    (
        chat_event({"role": "assistant", "content": ""}),
        chat_event(
            {
                "tool_calls": [
                    {
                        "id": "chatcmpl-tool-4e1c",
                        "type": "function",
                        "index": 0,
                        "function": {"name": "get_weather"},
                    }
                ]
            }
        ),
        chat_event({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "'}}]}),
        chat_event({"tool_calls": [{"index": 0, "function": {"arguments": 'Paris"}'}}]}),
        chat_event({"tool_calls": [{"index": 0, "function": {"arguments": ""}}]}),
        chat_event({"content": ""}, finish_reason="tool_calls"),
        usage_event(40, 11),
        DONE,
    ),
    usage_index=6,
    prompt_tokens=40,
    completion_tokens=11,
    finish_reason="tool_calls",
    data_events=7,
    content_events=3,  # the name, and the two non-empty argument deltas
)

TRICKY_TEXT = (
    'he said "hi"',  # escaped quotes
    "café ☕ 日本語",  # raw UTF-8
    "\n\ndata: [DONE]\n\n",  # SSE framing inside a string: escaped, never a real boundary
    '"content":"" "usage":{"prompt_tokens":1} "finish_reason":"stop"',  # keys inside text
    "\\",  # a lone backslash: the string ends in an escaped backslash
    '"',  # content that is only a quote
)

TRICKY = Stream(
    "escapes-unicode-reasoning-logprobs",
    (
        chat_event({"role": "assistant", "content": ""}),
        chat_event({"reasoning_content": "Let me think."}),
        # Python's json.dumps style: ASCII-escaped non-ASCII text.
        b'data: {"id":"chatcmpl-x","object":"chat.completion.chunk","created":1718000000,'
        b'"model":"m","choices":[{"index":0,"delta":{"content":"caf\\u00e9"},'
        b'"logprobs":null,"finish_reason":null}]}\n\n',
        *(chat_event({"content": t}) for t in TRICKY_TEXT),
        chat_event(
            {"content": "Hi"},
            logprobs={"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}]},
        ),
        chat_event({"content": None}),
        chat_event({"content": ""}, finish_reason="stop"),
        usage_event(21, 9),
        DONE,
    ),
    usage_index=12,
    prompt_tokens=21,
    completion_tokens=9,
    finish_reason="stop",
    data_events=13,
    content_events=9,
)

STREAMS = (CHAT, SHORT, COMPLETIONS, CONTINUOUS, TOOL_CALLS, TRICKY)
ALL_STREAMS = STREAMS + tuple(s.crlf() for s in STREAMS)
