"""The API keys llmproxy issues, and what the gateway keeps of any key it is shown.

A key llmproxy issues is ``sk-llmp-`` + 43 base62 characters (32 random bytes) + a 6-character
base62 CRC32 checksum of the part before it. The checksum lets the gateway refuse a mistyped or
made-up key before asking any provider (no Redis or SQL round trip for garbage), and lets secret
scanners recognise a leaked key. Keys of any other shape (the seed's ``sk-xxx``, keys operators
already keep in their own stores) are accepted as they are.

The secret itself never leaves this module's callers: stores keep the SHA-256 hex digest, logs and
metrics use the short display prefix.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass

PREFIX = "sk-llmp-"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LENGTH = 43  # 62**43 > 2**256: 32 random bytes always fit
_CHECKSUM_LENGTH = 6  # 62**6 > 2**32: a CRC32 always fits
KEY_LENGTH = len(PREFIX) + _BODY_LENGTH + _CHECKSUM_LENGTH
DISPLAY_PREFIX_LENGTH = 12
_SHAPE = re.compile(re.escape(PREFIX) + f"[0-9A-Za-z]{{{_BODY_LENGTH + _CHECKSUM_LENGTH}}}")


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits)).rjust(width, "0")


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), _CHECKSUM_LENGTH)


def generate_key() -> str:
    """A new random key in llmproxy's format."""
    body = PREFIX + _base62(int.from_bytes(secrets.token_bytes(32), "big"), _BODY_LENGTH)
    return body + _checksum(body)


def is_llmproxy_key(key: str) -> bool:
    """True when ``key`` claims llmproxy's format (and so must carry a valid checksum)."""
    return key.startswith(PREFIX)


def has_valid_checksum(key: str) -> bool:
    """True when ``key`` is well-formed: right length, alphabet and checksum."""
    if _SHAPE.fullmatch(key) is None:
        return False
    body, checksum = key[:-_CHECKSUM_LENGTH], key[-_CHECKSUM_LENGTH:]
    return hmac.compare_digest(_checksum(body), checksum)


def looks_like_secret(ref: str) -> bool:
    """True when ``ref`` (a CLI or admin API key reference) is, or was meant to be, a secret.

    Longer than a display prefix and starting like one of llmproxy's keys: such a text must be
    matched by its hash and never echoed, even when mistyped (:func:`has_valid_checksum` tells).
    """
    return ref.startswith(PREFIX) and len(ref) > DISPLAY_PREFIX_LENGTH + 2


def key_sha256(key: str) -> str:
    """The hex SHA-256 digest under which stores keep a key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def display_prefix(key: str) -> str:
    """The short, non-secret start of a key shown in listings, logs and usage records."""
    if is_llmproxy_key(key):
        return key[: DISPLAY_PREFIX_LENGTH + 2]
    return key[: min(DISPLAY_PREFIX_LENGTH, max(len(key) // 3, 3))] + "…"


def digests_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two digests (or keys)."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class PresentedKey:
    """A key as a client presented it: the secret, its digest and its display prefix.

    ``repr`` hides the secret so a stray log line or traceback cannot leak it.
    """

    secret: str
    sha256: str
    prefix: str

    @classmethod
    def of(cls, secret: str) -> PresentedKey:
        return cls(secret=secret, sha256=key_sha256(secret), prefix=display_prefix(secret))

    def __repr__(self) -> str:
        return f"PresentedKey(prefix={self.prefix!r})"

    __str__ = __repr__
