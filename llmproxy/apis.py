"""The model APIs the gateway speaks, by name: one definition that routing, billing, usage
records, metrics and the config's ``backends[].apis`` all read.

Two spellings of one set: records, metrics and ``usage summary`` say ``chat``; the config names
what a backend speaks after the OpenAI surface it serves (``chat_completions``).
"""

from __future__ import annotations

from typing import Final, Literal

Api = Literal["chat", "completions", "embeddings", "messages", "responses"]

APIS: Final[tuple[Api, ...]] = ("chat", "completions", "embeddings", "messages", "responses")

CONFIG_NAMES: Final[dict[Api, str]] = {
    "chat": "chat_completions",
    "completions": "completions",
    "embeddings": "embeddings",
    "messages": "messages",
    "responses": "responses",
}
"""``backends[].apis`` spells each API as this."""

CHAT: Final = "/v1/chat/completions"
COMPLETIONS: Final = "/v1/completions"
EMBEDDINGS: Final = "/v1/embeddings"
MESSAGES: Final = "/v1/messages"
COUNT_TOKENS: Final = "/v1/messages/count_tokens"
RESPONSES: Final = "/v1/responses"

ENDPOINT_API: Final[dict[str, Api]] = {
    CHAT: "chat",
    COMPLETIONS: "completions",
    EMBEDDINGS: "embeddings",
    MESSAGES: "messages",
    COUNT_TOKENS: "messages",
    RESPONSES: "responses",
}
"""The endpoints whose body names a model (routed, limited and billed by it), by the lower-case
canonical path every rule reads."""

GENERATING: Final = frozenset({CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES, RESPONSES})
"""Model endpoints that consume tokens (``count_tokens`` only counts them: never billed)."""

ASKS_FOR_USAGE: Final = frozenset({CHAT, COMPLETIONS})
"""Where a stream reports its usage only when asked (``stream_options.include_usage``): the
gateway and replay ask there. Messages and Responses streams always report it, and their
servers may refuse the member."""


def is_anthropic(endpoint: str) -> bool:
    """Whether ``endpoint`` is Anthropic's surface, whose clients expect Anthropic's error
    shape (``{"type": "error", "error": {...}}``) and statuses."""
    if not endpoint.startswith("/v1/messages"):
        return False
    # "/v1/messages", "/v1/messages/count_tokens", and refused spellings of them
    # ("/v1/messages;x=1", "/v1/messages?..."): answered in the shape their clients read.
    return len(endpoint) == 12 or endpoint[12] in "/;?"
