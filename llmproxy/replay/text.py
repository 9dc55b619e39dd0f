"""Made-up text of a given size, different for every request.

A recording without bodies keeps only sizes; synthetic load has only sizes to begin with. The
text stands in for the prompt, so it must cost the server what the original did: about the same
number of tokens (:data:`CHARS_PER_TOKEN`, English-like words) and *no* shared prefix between
requests — identical prompts would be answered from a prefix cache and flatter the server. Every
text therefore starts with its request's own number, and continues from a different place in a
fixed pool of words. Slicing one pool keeps the cost per request a few microseconds at any size.
"""

from __future__ import annotations

import random
from typing import Final

CHARS_PER_TOKEN: Final = 4
"""Characters per token of English text under common BPE tokenizers (and the mock's estimate)."""

# A sentence of words reads better than 150 quoted ones.
_WORDS: Final = (  # noqa: SIM905
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there been one all we their has would when if so no will "
    "time can more other about many then them these may some could into two first water people "
    "long after words called just made over did down only way find use very through work where "
    "much before line right too means old any same tell boy follow came want show also around "
    "form three small set put end does another well large must big even such because turn here "
    "why ask went men read need land different home us move try kind hand picture again change "
    "off play spell air away animal house point page letter mother answer found study still learn"
).split()

_POOL_CHARS: Final = 1 << 16


def _pool() -> str:
    rng = random.Random(0x11_3D_0F)
    words: list[str] = []
    size = 0
    while size < _POOL_CHARS:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


_POOL: Final = _pool()
_STRIDE: Final = 7919  # a prime: consecutive requests start far apart in the pool


def made_up_text(chars: int, salt: int) -> str:
    """``chars`` characters of words, beginning with ``salt`` (the request's number).

    Deterministic: the same ``(chars, salt)`` always gives the same text.

    >>> made_up_text(12, 7)[:2]
    '7 '
    """
    if chars <= 0:
        return ""
    head = f"{salt} "
    if chars <= len(head):
        return head[:chars]
    need = chars - len(head)
    start = (salt * _STRIDE) % len(_POOL)
    parts = [head]
    while need > 0:
        piece = _POOL[start : start + need]
        parts.append(piece)
        need -= len(piece)
        start = 0
    return "".join(parts)


def chars_for_tokens(tokens: int) -> int:
    """Characters of made-up text that cost about ``tokens`` prompt tokens."""
    return max(1, tokens) * CHARS_PER_TOKEN
