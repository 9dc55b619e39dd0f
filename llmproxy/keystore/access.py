"""One async interface over both key stores, so the gateway and the admin API need not know which.

``auth.builtin_db`` names the store: a SQLite path (the embedded default, one machine) or a
``postgresql://`` URL (replicas on several machines share it). :func:`open_key_store` turns the
setting into a :class:`KeyStoreAccess`:

- :class:`SqliteKeys` runs :class:`~llmproxy.keystore.store.KeyStore`'s blocking calls in a worker
  thread; its ``changes()`` is a full reload whenever ``PRAGMA data_version`` moved;
- :class:`~llmproxy.keystore.postgres.PostgresKeyStore` is asyncpg throughout; its ``changes()``
  returns only the keys changed since the caller's cursor, and ``on_change`` is LISTEN/NOTIFY.

Every failure of the database is a :class:`~llmproxy.keystore.errors.KeyStoreError` (a bad field
value stays a ``ValueError``, an unknown id a :class:`~llmproxy.keystore.errors.KeyNotFound`).
"""

from __future__ import annotations

import asyncio
import builtins
import sqlite3
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Protocol, TypeVar

from llmproxy.dsn import is_postgres_url
from llmproxy.extras import require
from llmproxy.keystore.errors import KeyStoreError
from llmproxy.keystore.record import KeyChanges, KeyRecord
from llmproxy.keystore.store import KeyStore
from llmproxy.teams import Team

_T = TypeVar("_T")


class KeyStoreAccess(Protocol):
    """What the ``builtin`` provider and the admin API ask of a key store."""

    location: str
    """The file, or the URL without its password: for messages."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def add(self, *, name: str, **fields: object) -> tuple[str, KeyRecord]: ...
    async def import_key(self, secret: str, *, name: str, **fields: object) -> KeyRecord: ...
    async def revoke(self, key_id: str) -> KeyRecord: ...
    async def update(self, key_id: str, **changes: object) -> KeyRecord: ...
    async def add_usage(self, used: Mapping[str, int]) -> None: ...
    async def get(self, key_id: str) -> KeyRecord | None: ...
    async def list(
        self,
        include_revoked: bool = False,
        *,
        user_id: str | None = None,
        team: str | None = None,
    ) -> builtins.list[KeyRecord]: ...
    async def add_team(self, *, name: str, **fields: object) -> Team: ...
    async def update_team(self, name: str, /, **changes: object) -> Team: ...
    async def remove_team(self, name: str, *, force: bool = False) -> tuple[Team, int]: ...
    async def get_team(self, name: str) -> Team | None: ...
    async def list_teams(self) -> builtins.list[Team]: ...
    async def changes(self, cursor: object | None, ids: Collection[str] = ()) -> KeyChanges: ...

    def on_change(self, callback: Callable[[str], None]) -> None:
        """Have ``callback(key_id)`` called when another process changes a key, where the store
        can tell (PostgreSQL); a store that cannot is polled by ``changes()`` alone."""


class SqliteKeys:
    """:class:`KeyStore` (SQLite, blocking) behind the async interface: one call per thread hop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        self._store = KeyStore(path)

    async def _run(self, work: Callable[[], _T]) -> _T:
        try:
            return await asyncio.to_thread(work)
        except sqlite3.Error as exc:  # locked past busy_timeout, disk full, a damaged file
            raise KeyStoreError(f"{self.location}: {exc}") from None

    async def open(self) -> None:
        try:
            await self._run(self._store.open)
        except OSError as exc:
            raise KeyStoreError(f"{self.location}: {exc}") from None

    async def close(self) -> None:
        # The close completes in its thread even if this coroutine is cancelled meanwhile.
        await asyncio.to_thread(self._store.close)

    async def add(self, *, name: str, **fields: object) -> tuple[str, KeyRecord]:
        return await self._run(lambda: self._store.add(name=name, **fields))

    async def import_key(self, secret: str, *, name: str, **fields: object) -> KeyRecord:
        return await self._run(lambda: self._store.import_key(secret, name=name, **fields))

    async def revoke(self, key_id: str) -> KeyRecord:
        return await self._run(lambda: self._store.revoke(key_id))

    async def update(self, key_id: str, **changes: object) -> KeyRecord:
        return await self._run(lambda: self._store.update(key_id, **changes))

    async def add_usage(self, used: Mapping[str, int]) -> None:
        await self._run(lambda: self._store.add_usage(used))

    async def get(self, key_id: str) -> KeyRecord | None:
        return await self._run(lambda: self._store.get(key_id))

    async def list(
        self,
        include_revoked: bool = False,
        *,
        user_id: str | None = None,
        team: str | None = None,
    ) -> builtins.list[KeyRecord]:
        return await self._run(
            lambda: self._store.list(include_revoked, user_id=user_id, team=team)
        )

    async def add_team(self, *, name: str, **fields: object) -> Team:
        return await self._run(lambda: self._store.add_team(name=name, **fields))

    async def update_team(self, name: str, /, **changes: object) -> Team:
        return await self._run(lambda: self._store.update_team(name, **changes))

    async def remove_team(self, name: str, *, force: bool = False) -> tuple[Team, int]:
        return await self._run(lambda: self._store.remove_team(name, force=force))

    async def get_team(self, name: str) -> Team | None:
        return await self._run(lambda: self._store.get_team(name))

    async def list_teams(self) -> builtins.list[Team]:
        return await self._run(self._store.list_teams)

    async def changes(self, cursor: object | None, ids: Collection[str] = ()) -> KeyChanges:
        return await self._run(lambda: self._changes(cursor))

    def _changes(self, cursor: object | None) -> KeyChanges:
        # The version first: a write landing between the two reads moves it again, so the next
        # poll reloads instead of missing the write.
        version = self._store.data_version()
        if cursor is not None and version == cursor:
            return KeyChanges(version, [], complete=False)
        return KeyChanges(
            version, self._store.all_records(), complete=True, teams=self._store.list_teams()
        )

    def on_change(self, callback: Callable[[str], None]) -> None:
        """SQLite cannot tell; the admin API of this daemon reloads after its own writes."""


def open_key_store(location: str, base_dir: Path) -> KeyStoreAccess:
    """The store ``auth.builtin_db`` names (not opened yet): PostgreSQL for a ``postgresql://``
    URL, else the SQLite file at that path (relative to the config's directory)."""
    if is_postgres_url(location):
        require("postgres", "auth.builtin_db")  # asyncpg is an extra: say which, not ImportError
        from llmproxy.keystore.postgres import PostgresKeyStore

        return PostgresKeyStore(location)
    return SqliteKeys(base_dir / location)
