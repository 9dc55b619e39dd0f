"""Changes every worker of the daemon must see before its next request: counters in shared memory.

The admin socket is served by one worker; a key it revokes is written to the key store, which the
other workers would read again only at their next poll (``refresh_interval``, a second). So the
worker that made the change bumps a counter here before the admin command returns, and every
worker compares it with the value it last acted on at the start of each request (one read of
mapped memory): a changed counter makes that worker reload before it judges the request.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from pathlib import Path
from typing import Final

from llmproxy.mapped import MappedFile, attach_mapped, create_mapped

_MAGIC: Final = b"llmpntc1"
_COUNTER: Final = struct.Struct("<Q")
_SIZE: Final = 64


class Notice(IntEnum):
    """What a counter counts (its slot after the 8-byte magic)."""

    KEYS = 1
    """Writes to the key store through the admin API: keys (add, update, revoke) and teams
    (add, update, remove), which live in the same store and are reloaded with the keys."""


class DaemonNotices:
    """One worker's handle on the daemon's notice counters."""

    __slots__ = ("_file", "_map")

    def __init__(self, mapped: MappedFile) -> None:
        if mapped.size != _SIZE or mapped.map[:8] != _MAGIC:
            raise ValueError(f"{mapped.path} is not a notice table of this llmproxy")
        self._file = mapped
        self._map = mapped.map

    @staticmethod
    def create(path: Path) -> None:
        """A fresh table (owner-only), for the supervisor to hand to its workers."""
        create_mapped(path, _SIZE, _MAGIC)

    @classmethod
    def attach(cls, path: Path) -> DaemonNotices:
        return attach_mapped(path, cls)

    def read(self, notice: Notice) -> int:
        """The counter now (no lock: an aligned 8-byte read)."""
        value: int = _COUNTER.unpack_from(self._map, notice * 8)[0]
        return value

    def bump(self, notice: Notice) -> int:
        """Count one more change; returns the new value."""
        with self._file.locked() as table:
            value: int = _COUNTER.unpack_from(table, notice * 8)[0] + 1
            _COUNTER.pack_into(table, notice * 8, value)
        return value

    def close(self) -> None:
        self._file.close()
