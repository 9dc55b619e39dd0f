"""Recording files for the tests, written with the recorder's own line encoder."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llmproxy.record.format import (
    MessageShape,
    Outcome,
    RecordedRequest,
    RequestShape,
    encode_line,
)


def chat_body(model: str = "mock-model", *, stream: bool = True, tokens: int = 4) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hello there"}],
        "stream": stream,
        "max_tokens": tokens,
    }


def with_body(offset: float, body: dict[str, Any], endpoint: str = "/v1/chat/completions"):
    return RecordedRequest(
        offset=offset,
        endpoint=endpoint,
        model=str(body.get("model", "")),
        stream=bool(body.get("stream")),
        body=body,
    )


def with_shape(
    offset: float,
    endpoint: str = "/v1/chat/completions",
    *,
    model: str = "mock-model",
    stream: bool = False,
    messages: tuple[tuple[str, int], ...] = (("system", 40), ("user", 200)),
    prompt_chars: int = 0,
    max_tokens: int | None = None,
    completion_tokens: int = 0,
) -> RecordedRequest:
    return RecordedRequest(
        offset=offset,
        endpoint=endpoint,
        model=model,
        stream=stream,
        shape=RequestShape(
            messages=tuple(MessageShape(role, chars) for role, chars in messages),
            prompt_chars=prompt_chars,
            max_tokens=max_tokens,
        ),
        outcome=Outcome(status=200, completion_tokens=completion_tokens),
    )


def write(path: Path, lines: Iterable[RecordedRequest | bytes | str]) -> Path:
    """A recording file: recorded requests encoded, raw bytes/str lines written as they are."""
    with path.open("wb") as out:
        for line in lines:
            if isinstance(line, RecordedRequest):
                out.write(encode_line(line))
            else:
                raw = line.encode() if isinstance(line, str) else line
                out.write(raw if raw.endswith(b"\n") else raw + b"\n")
    return path
