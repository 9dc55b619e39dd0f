"""llmproxy's key format: checksums catch made-up keys, the secret never shows."""

from __future__ import annotations

from llmproxy.apikey import (
    KEY_LENGTH,
    PresentedKey,
    display_prefix,
    generate_key,
    has_valid_checksum,
    is_llmproxy_key,
    key_sha256,
)


def test_generated_keys_have_the_format_and_a_valid_checksum() -> None:
    """A new key is sk-llmp- + base62, of fixed length, and passes its own checksum."""
    keys = {generate_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert key.startswith("sk-llmp-")
        assert len(key) == KEY_LENGTH
        assert key[8:].isalnum()
        assert has_valid_checksum(key)


def test_any_single_character_change_breaks_the_checksum() -> None:
    """Changing one character anywhere after the prefix is detected."""
    key = generate_key()
    for index in range(8, len(key)):
        replacement = "A" if key[index] != "A" else "B"
        assert not has_valid_checksum(key[:index] + replacement + key[index + 1 :])


def test_wrong_shapes_are_not_valid() -> None:
    """Too short, too long, foreign characters: all invalid."""
    key = generate_key()
    assert not has_valid_checksum(key[:-1])
    assert not has_valid_checksum(key + "0")
    assert not has_valid_checksum(key[:20] + "-" + key[21:])
    assert not has_valid_checksum("sk-xxx")


def test_other_key_shapes_are_not_llmproxy_keys() -> None:
    """Keys operators already have (the seed's sk-xxx) are not held to the checksum."""
    assert not is_llmproxy_key("sk-xxx")
    assert is_llmproxy_key(generate_key())


def test_presented_key_hides_the_secret() -> None:
    """repr/str of a presented key show only the display prefix."""
    secret = generate_key()
    presented = PresentedKey.of(secret)
    assert presented.sha256 == key_sha256(secret)
    assert secret not in repr(presented)
    assert secret not in str(presented)
    assert presented.prefix == display_prefix(secret)
    assert len(presented.prefix) < len(secret) // 2
    assert display_prefix("sk-my-own-long-secret-key") == "sk-my-ow…"  # a third at most
