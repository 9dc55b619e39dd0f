"""Finding the key in the request headers."""

from __future__ import annotations

from llmproxy.auth.extract import extract_key, header_order

NAMES = header_order(["Authorization", "X-API-Key"])


def test_bearer_token() -> None:
    """Authorization: Bearer <key> yields the key, whatever the scheme's case."""
    assert extract_key([(b"authorization", b"Bearer sk-1")], NAMES) == "sk-1"
    assert extract_key([(b"authorization", b"bearer  sk-2 ")], NAMES) == "sk-2"


def test_x_api_key_and_order() -> None:
    """X-API-Key works; with both, the configured order decides."""
    assert extract_key([(b"x-api-key", b"sk-3")], NAMES) == "sk-3"
    both = [(b"x-api-key", b"sk-b"), (b"authorization", b"Bearer sk-a")]
    assert extract_key(both, NAMES) == "sk-a"
    assert extract_key(both, header_order(["X-API-Key", "Authorization"])) == "sk-b"


def test_missing_or_other_schemes() -> None:
    """No header, an empty one, or Basic credentials yield no key."""
    assert extract_key([], NAMES) is None
    assert extract_key([(b"authorization", b"Bearer ")], NAMES) is None
    assert extract_key([(b"authorization", b"Basic dXNlcjpwYXNz")], NAMES) is None
    assert extract_key([(b"x-api-key", b"  ")], NAMES) is None


def test_bare_authorization_value_is_the_key() -> None:
    """An Authorization header without a scheme is taken as the key itself."""
    assert extract_key([(b"authorization", b"sk-raw")], NAMES) == "sk-raw"
