"""The pure mapping from a script's flattened answer to a LuaDecision (no Lua runtime)."""

from __future__ import annotations

import pytest

from llmproxy.auth.lua import LuaDecision, LuaRuntimeError
from llmproxy.auth.lua.decision import decision_from_values, text


def test_boolean_answer_is_a_bare_decision() -> None:
    """`return true` arrives as (True,) and becomes an allow without extras."""
    assert decision_from_values("s", (True,)) == LuaDecision(True, None, None, {})
    assert decision_from_values("s", (False,)) == LuaDecision(False, None, None, {})


def test_denial_keeps_message_status_and_metadata() -> None:
    """Bytes become text, the status an int, metadata values keep their Lua types."""
    values = (False, "余额不足".encode(), 402.0, b"user", b"u1", b"n", 3, b"r", 0.5, b"b", True)
    assert decision_from_values("s", values) == LuaDecision(
        allow=False,
        message="余额不足",
        status=402,
        metadata={"user": "u1", "n": 3, "r": 0.5, "b": True},
    )


def test_status_of_an_allow_is_dropped() -> None:
    """Only refusals carry a status."""
    assert decision_from_values("s", (True, None, 200)).status is None


@pytest.mark.parametrize("status", [200, 399, 600, -1])
def test_status_outside_error_range_is_refused(status: int) -> None:
    """A denial's status must be an HTTP error status (400-599); the error names the script."""
    with pytest.raises(LuaRuntimeError, match=rf"^s: bad return value: `status` {status} "):
        decision_from_values("s", (False, None, status))


def test_invalid_utf8_becomes_replacement_characters() -> None:
    """Bytes that are not UTF-8 never raise; they show as U+FFFD."""
    assert text(b"ok \xff") == "ok \ufffd"
    assert decision_from_values("s", (False, b"\xfe", None)).message == "\ufffd"


def test_non_string_metadata_keys_are_skipped() -> None:
    """Only string keys make it into metadata (the Lua half already refuses others)."""
    assert decision_from_values("s", (True, None, None, 1, b"x", b"k", b"v")).metadata == {"k": "v"}
