"""What the key store raises besides ``ValueError`` (a bad field value)."""

from __future__ import annotations


class KeyStoreError(Exception):
    """The store cannot be used: not open, not a key store database, or a newer schema.

    The message names the file and the fix.
    """


class KeyNotFound(LookupError):
    """No key has this id; the admin API answers 404."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no key with id {key_id!r}")
        self.key_id = key_id
