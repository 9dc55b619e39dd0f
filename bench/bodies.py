"""The request each benchmarked model API is sent: its path and the fields of a small body.

The gateway serves chat completions, Anthropic Messages and OpenAI Responses; each has its own
parsing, metering and (for Messages to a chat-only backend) translation, so each is measured on
its own path with the smallest body that API accepts. wrk's script (:func:`bench.wrk.render_lua`),
the Python load generators (:func:`bench.loadgen.build_request`) and ``bench.ab`` all take their
body from here, so every target of one run gets the same bytes.
"""

from __future__ import annotations

from typing import Final, Literal

Api = Literal["chat", "messages", "responses"]

APIS: Final[tuple[Api, ...]] = ("chat", "messages", "responses")

PATHS: Final[dict[Api, str]] = {
    "chat": "/v1/chat/completions",
    "messages": "/v1/messages",
    "responses": "/v1/responses",
}

_PROMPT = "Say hello"


def prompt_fields(api: Api, tokens: int) -> dict[str, object]:
    """The fields after ``model`` (and before or without ``stream``) of ``api``'s request.

    Chat keeps the body the bench always sent (no length field: ``x-mock-tokens`` sets it), so
    chat results stay comparable with earlier runs. Messages requires ``max_tokens``; it is
    ``tokens`` rather than a roomy value because the backend may be a chat-only one the gateway
    translates for, and a chat backend (the project's mock, vLLM) answers ``max_tokens`` tokens:
    a large value would make the translated answer longer than the passed-through one and the
    two would not be comparable. Responses' ``max_output_tokens`` is set for the same reason.
    """
    message = {"role": "user", "content": _PROMPT}
    if api == "chat":
        return {"messages": [message]}
    if api == "messages":
        return {"max_tokens": tokens, "messages": [message]}
    return {"input": _PROMPT, "max_output_tokens": tokens}


def parse_apis(text: str) -> tuple[Api, ...]:
    """``chat,messages`` as a tuple of APIs, in the given order; ValueError names an unknown one."""
    chosen: list[Api] = []
    for name in text.split(","):
        api = next((known for known in APIS if known == name.strip()), None)
        if api is None:
            raise ValueError(f"unknown API {name.strip()!r}; choose from {','.join(APIS)}")
        if api not in chosen:
            chosen.append(api)
    return tuple(chosen)
