"""estimate_prompt_tokens: characters of the prompt text over chars_per_token, at least 1."""

from __future__ import annotations

import msgspec
import pytest

from llmproxy.usage import estimate_prompt_tokens


def body(**fields: object) -> bytes:
    return msgspec.json.encode(fields)


def test_chat_string_content() -> None:
    """String contents of every message are counted; 12 characters at 4 per token are 3."""
    chat = body(
        model="m",
        messages=[
            {"role": "system", "content": "abcd"},
            {"role": "user", "content": "éfgh日本語x"},
            {"role": "assistant", "content": None, "tool_calls": []},
        ],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
    )
    assert estimate_prompt_tokens(chat, 4.0) == 3


def test_chat_parts_content() -> None:
    """Text parts count; image parts do not. 10 characters at 4 per token round up to 3."""
    chat = body(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hello"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "text", "text": "world"},
                ],
            }
        ]
    )
    assert estimate_prompt_tokens(chat, 4.0) == 3


@pytest.mark.parametrize(
    ("prompt", "tokens"),
    [
        ("x" * 40, 10),
        (["x" * 8, "y" * 8], 4),
        ([1, 2, 3], 3),
        ([[1, 2], [3, 4, 5]], 5),
        ("", 1),
    ],
    ids=["string", "strings", "token-ids", "token-id-lists", "empty"],
)
def test_completions_prompt(prompt: object, tokens: int) -> None:
    """A completions prompt: text over chars_per_token, one token per id, never below 1."""
    assert estimate_prompt_tokens(body(model="m", prompt=prompt), 4.0) == tokens


def test_embeddings_input() -> None:
    """An embeddings input is counted like a prompt."""
    assert estimate_prompt_tokens(body(input=["abcdef", "gh"]), 2.0) == 4


def test_chars_per_token() -> None:
    """The ratio is the operator's: 30 characters at 3.0 per token are 10."""
    assert estimate_prompt_tokens(body(messages=[{"role": "user", "content": "z" * 30}]), 3.0) == 10


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1,2]", b'{"messages":"oops"}'])
def test_unreadable_body_uses_its_length(raw: bytes) -> None:
    """A body that does not decode is estimated from its byte length (an upper bound)."""
    assert estimate_prompt_tokens(raw, 2.0) == max(1, -(-len(raw) // 2))
