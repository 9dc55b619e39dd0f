"""Keeping a presented key's secret out of what providers return and raise.

Stores often keep the key next to its data (``SELECT *`` returns the ``key`` column, a webhook in
``plain`` mode may echo ``api_key``), and drivers quote query arguments in their errors (asyncpg:
``invalid input for query argument $1: 'sk-...'``). Data goes on to Lua, usage records and
forwarded headers, and errors go to logs, so both pass through here first.
"""

from __future__ import annotations

from collections.abc import Mapping

from llmproxy.apikey import PresentedKey


def without_secret(data: Mapping[str, object], key: PresentedKey) -> dict[str, object]:
    """``data`` minus every top-level entry whose value is the secret itself."""
    return {name: value for name, value in data.items() if value != key.secret}


def scrub(text: str, *secrets: str) -> str:
    """``text`` with every non-empty ``secrets`` replaced by ``***``.

    Drivers shorten long values in their messages (asyncpg keeps the first 40 characters of an
    argument's repr), so a leading part of a secret (at least ``_MIN_PREFIX`` characters) is
    hidden too.
    """
    for secret in secrets:
        if secret:
            text = _hide_prefixes(text.replace(secret, "***"), secret)
    return text


_MIN_PREFIX = 12


def _hide_prefixes(text: str, secret: str) -> str:
    if len(secret) <= _MIN_PREFIX:
        return text
    head = secret[:_MIN_PREFIX]
    start = text.find(head)
    while start != -1:
        end = start + _MIN_PREFIX
        while end < len(text) and end - start < len(secret) and text[end] == secret[end - start]:
            end += 1
        text = text[:start] + "***" + text[end:]
        start = text.find(head, start + 3)
    return text
