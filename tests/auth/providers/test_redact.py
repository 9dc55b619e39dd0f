"""Keeping the secret out of provider data and error messages."""

from __future__ import annotations

from llmproxy.apikey import PresentedKey
from llmproxy.auth.providers._redact import scrub, without_secret

SECRET = "sk-llmp-0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"


def test_scrub_hides_the_whole_secret():
    """Every copy of the secret in a message becomes ***."""
    assert scrub(f"bad key {SECRET} and {SECRET}!", SECRET) == "bad key *** and ***!"


def test_scrub_hides_a_truncated_secret():
    """A secret a driver cut short (asyncpg keeps 40 characters of a repr) is hidden too."""
    message = f"invalid input for query argument $1: {repr(SECRET)[:40]}... (expected int)"
    assert scrub(message, SECRET) == "invalid input for query argument $1: '***... (expected int)"


def test_scrub_leaves_short_fragments_and_empty_secrets_alone():
    """Short common fragments are left readable, and an empty password scrubs nothing."""
    assert scrub("prefix sk-llmp-01 shown", SECRET, "") == "prefix sk-llmp-01 shown"


def test_scrub_hides_short_passwords_exactly():
    """A short password is replaced where it appears whole."""
    assert scrub("auth failed for pw hunter2", "hunter2") == "auth failed for pw ***"


def test_without_secret_drops_entries_holding_the_secret():
    """Top-level values equal to the secret are dropped; everything else stays."""
    key = PresentedKey.of(SECRET)
    data = {"key": SECRET, "status": "active", "nested": {"key": "x"}, "n": 1}
    assert without_secret(data, key) == {"status": "active", "nested": {"key": "x"}, "n": 1}
