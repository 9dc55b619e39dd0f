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

ENDPOINT_API: Final[dict[str, Api]] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "messages",
    "/v1/responses": "responses",
}
"""The endpoints whose body names a model (routed, limited and billed by it), by the lower-case
canonical path every rule reads."""

GENERATING: Final = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/messages",
                               "/v1/responses", "/v1/embeddings"})  # fmt: skip
"""Model endpoints that consume tokens (``count_tokens`` only counts them: never billed)."""


def is_anthropic(endpoint: str) -> bool:
    """Whether ``endpoint`` is Anthropic's surface, whose clients expect Anthropic's error
    shape (``{"type": "error", "error": {...}}``) and statuses."""
    if not endpoint.startswith("/v1/messages"):
        return False
    # "/v1/messages", "/v1/messages/count_tokens", and refused spellings of them
    # ("/v1/messages;x=1", "/v1/messages?..."): answered in the shape their clients read.
    return len(endpoint) == 12 or endpoint[12] in "/;?"
