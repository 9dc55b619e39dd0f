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


class TeamNotFound(LookupError):
    """No team has this name; the admin API answers 404."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no team named {name!r}")
        self.name = name


class TeamConflict(Exception):
    """A team write that the store's other rows forbid: the name is taken (``team_exists``),
    or live keys still belong to it (``team_in_use``). The admin API answers 409."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code
