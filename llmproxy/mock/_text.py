"""Deterministic stand-ins for what a model computes: text, token counts, embeddings, tool calls.

Everything is a pure function of its input, so a test can predict the exact bytes a gateway should
relay (``completion_text(5)``) and the exact ``usage`` it should bill.
"""

from __future__ import annotations

import base64
import struct
import zlib
from functools import lru_cache

import msgspec

TOKENS: tuple[str, ...] = (
    *("lorem ", "ipsum ", "dolor ", "sit ", "amet ", "consectetur ", "adipiscing ", "elit "),
    *("sed ", "do ", "eiusmod ", "tempor ", "incididunt ", "ut ", "labore ", "et "),
)
"""The filler vocabulary: token ``i`` of every completion is ``TOKENS[i % len(TOKENS)]``."""

TOKENS_JSON: tuple[bytes, ...] = tuple(msgspec.json.encode(token) for token in TOKENS)
"""The same tokens pre-encoded as JSON strings, so streaming never encodes per chunk."""


@lru_cache(maxsize=256)
def completion_text(n: int) -> str:
    """The text of an ``n``-token completion: ``"lorem ipsum dolor "`` for ``n == 3``."""
    return "".join(TOKENS[i % len(TOKENS)] for i in range(n))


def estimate_tokens(chars: int, token_ids: int = 0) -> int:
    """Prompt tokens for ``chars`` characters of text plus ``token_ids`` pre-tokenized ids.

    About four characters per token, like English BPE, rounded up and never below 1, so usage
    accounting tests can compute the expected value: ``estimate_tokens(len("hello"))`` is 2.
    """
    return max(1, (chars + 3) // 4 + token_ids)


def embedding(text: str, dim: int) -> list[float]:
    """A ``dim``-long vector in [-1, 1] that depends only on ``text`` (not on the process)."""
    seed = zlib.crc32(text.encode())
    return [((seed * (j + 1) * 2654435761) % 2001 - 1000) / 1000 for j in range(dim)]


def embedding_base64(vector: list[float]) -> str:
    """``encoding_format="base64"`` as OpenAI sends it: little-endian float32s, base64."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


TOOL_ARGUMENT_PIECES: tuple[str, ...] = ('{"query": ', '"lorem"', "}")
"""The arguments of every tool call the mock makes, whatever the tool's schema, one token a piece:
streamed as three deltas, billed as three output tokens."""

TOOL_ARGUMENTS = "".join(TOOL_ARGUMENT_PIECES)
"""``'{"query": "lorem"}'``: the arguments as one JSON string (OpenAI's ``arguments``)."""
