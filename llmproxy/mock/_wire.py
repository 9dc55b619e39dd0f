"""The OpenAI wire format as vLLM speaks it: the request fields read, the response bytes written.

Requests are decoded with msgspec into small structs holding only the fields that change the
answer; a wrong type becomes a 400 with msgspec's ``at `$.max_tokens``` pointer. Streamed chunks
are assembled from pre-encoded byte pieces (:class:`ChunkEncoder`), so the per-token cost is one
``bytes.join`` — the mock is the baseline the gateway's overhead is measured against.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any, Literal

import msgspec

from llmproxy.mock._text import TOKENS_JSON, estimate_tokens

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
DONE = b"data: [DONE]\n\n"

_encode = msgspec.json.encode
_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
}


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = False


class ContentPart(msgspec.Struct):
    text: str | None = None  # image and audio parts carry no text and cost no prompt tokens here


class ChatMessage(msgspec.Struct):
    role: str = ""
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content or ())


class FunctionName(msgspec.Struct):
    name: str = ""


class ChatTool(msgspec.Struct):
    """A tool offered to the model; only ``function`` tools (the usual kind) can be called."""

    type: str = "function"
    function: FunctionName | None = None


class NamedToolChoice(msgspec.Struct):
    """``tool_choice: {"type": "function", "function": {"name": ...}}``: call this one."""

    type: str = "function"
    function: FunctionName | None = None


class GenerationRequest(msgspec.Struct, kw_only=True):
    """Fields shared by chat and text completions; ``model`` may be omitted, as vLLM allows."""

    model: str | None = None
    max_tokens: PositiveInt | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(GenerationRequest, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: PositiveInt | None = None
    tools: list[ChatTool] | None = None
    tool_choice: str | NamedToolChoice | None = None

    def tool_to_call(self) -> str | None:
        """The function the answer calls, or None for a text answer.

        A model offered tools calls one, unless told not to (``tool_choice: "none"``) or the last
        message is a tool's result, which it answers in text: one round trip, like a real agent
        loop. A named ``tool_choice`` is obeyed, so a test can see which name reached the backend.
        """
        if not self.tools or self.tool_choice == "none":
            return None
        if self.messages and self.messages[-1].role == "tool":
            return None
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.function is not None:
            return choice.function.name
        return next((tool.function.name for tool in self.tools if tool.function), None)

    def prompt_tokens(self) -> int:
        chars = 0
        for message in self.messages:
            if isinstance(message.content, str):
                chars += len(message.content)
            elif message.content:
                chars += sum(len(part.text or "") for part in message.content)
        return estimate_tokens(chars)

    def prompt_text(self) -> str:
        """The prompt as the prefix cache sees it: each message's role and text, in order."""
        return "".join(f"{message.role}\x1f{message.text()}\x1e" for message in self.messages)


class CompletionRequest(GenerationRequest, kw_only=True):
    prompt: str | list[Any]

    def prompt_tokens(self) -> int:
        if isinstance(self.prompt, str):
            return estimate_tokens(len(self.prompt))
        chars = ids = 0
        for item in self.prompt:  # list[str], list[int] (token ids) or list[list[int]]
            if isinstance(item, str):
                chars += len(item)
            else:
                ids += len(item) if isinstance(item, list) else 1
        return estimate_tokens(chars, ids)

    def prompt_text(self) -> str:
        """The prompt as the prefix cache sees it; token ids become their decimal text."""
        if isinstance(self.prompt, str):
            return self.prompt
        return "\x1e".join(map(_prompt_item_text, self.prompt))


def _prompt_item_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    return ",".join(map(str, item)) if isinstance(item, list) else str(item)


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    model: str | None = None
    input: str | list[Any]
    encoding_format: str | None = "float"

    def texts(self) -> list[tuple[str, int]]:
        """Each input as (text the vector is derived from, prompt tokens it costs)."""
        items = [self.input] if isinstance(self.input, str) else self.input
        if items and all(isinstance(item, int) for item in items):
            items = [items]  # one pre-tokenized input, not several
        out = []
        for item in items:
            if isinstance(item, str):
                out.append((item, estimate_tokens(len(item))))
            else:
                out.append((" ".join(map(str, item)), max(1, len(item))))
        return out


def error_body(status: int, message: str) -> bytes:
    """The error body vLLM's OpenAI server returns, which the ``openai`` client parses."""
    error_type = _ERROR_TYPES.get(status, "InternalServerError")
    return _encode(
        {"error": {"message": message, "type": error_type, "param": None, "code": status}}
    )


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }


class ChunkEncoder:
    """Builds the ``data: ...\\n\\n`` events of one streamed completion from byte pieces.

    ``kind="chat"`` gives ``chat.completion.chunk`` events with ``delta.content`` (the first also
    carries ``delta.role``); ``kind="text"`` gives ``text_completion`` events with ``text``.
    """

    __slots__ = ("_field", "_finish", "_first_field", "_head", "_open", "_tail")

    def __init__(
        self, kind: Literal["chat", "text"], response_id: str, model: str, finish_reason: str
    ) -> None:
        chat = kind == "chat"
        obj = b"chat.completion.chunk" if chat else b"text_completion"
        self._open = b"".join(
            (
                b'data: {"id":"',
                response_id.encode(),
                b'","object":"',
                obj,
                b'","created":',
                str(int(time.time())).encode(),
                b',"model":',
                _encode(model),
            )
        )
        self._head = self._open + b',"choices":[{"index":0,'
        self._field = b'"delta":{"content":' if chat else b'"text":'
        self._first_field = b'"delta":{"role":"assistant","content":' if chat else self._field
        close = b"}," if chat else b","
        self._tail = close + b'"logprobs":null,"finish_reason":null}]}\n\n'
        self._finish = close + b'"logprobs":null,"finish_reason":"' + finish_reason.encode()
        self._finish += b'"}]}\n\n'

    def token(self, i: int, last: bool) -> bytes:
        """Event ``i``; the ``last`` one carries the finish_reason, as vLLM's does."""
        return b"".join(
            (
                self._head,
                self._first_field if i == 0 else self._field,
                TOKENS_JSON[i % len(TOKENS_JSON)],
                self._finish if last else self._tail,
            )
        )

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        """A chat event with any ``delta`` (the pieces of a tool call), off the per-token path."""
        return b"".join(
            (
                self._head,
                b'"delta":',
                _encode(delta),
                b',"logprobs":null,"finish_reason":',
                _encode(finish_reason),
                b"}]}\n\n",
            )
        )

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The ``stream_options.include_usage`` event: no choices, only ``usage``."""
        body = _encode(usage(prompt_tokens, completion_tokens))
        return self._open + b',"choices":[],"usage":' + body + b"}\n\n"
