"""The SQLite file behind ``llmproxy keys``: add, list, revoke and update the keys llmproxy issues.

Usage (sync: the admin API calls it through ``asyncio.to_thread``, the gateway never calls it on
the request path — :class:`~llmproxy.auth.providers.builtin.BuiltinProvider` serves lookups from
memory)::

    with KeyStore("/var/lib/llmproxy/keys.db") as store:
        secret, record = store.add(name="ci", user_id="team-a", models=["llama-3-8b"], rpm=60)
        print(secret)  # shown once: only its SHA-256 and display prefix are stored
        store.revoke(record.id)

The file is created with mode 0600 (its directory 0700 when missing) and runs in WAL mode, so
several processes — gateway workers, the CLI — can read and write it at once; a writer waits up to
``busy_timeout`` for another. One store object may be shared by threads: a lock serialises its one
connection.
"""

from __future__ import annotations

import builtins
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from llmproxy.apikey import display_prefix, generate_key, key_sha256
from llmproxy.keyfields import ADD_FIELDS, check_fields
from llmproxy.keystore.errors import KeyNotFound, KeyStoreError, TeamConflict, TeamNotFound
from llmproxy.keystore.record import (
    COLUMNS,
    TEAM_COLUMNS,
    KeyRecord,
    check_secret,
    column_value,
    new_key_id,
    record_from_row,
    team_columns,
    team_from_row,
    team_in_use,
    unknown_team,
)
from llmproxy.keystore.schema import migrate
from llmproxy.private_files import private_file
from llmproxy.teamfields import TEAM_ADD_FIELDS, check_team_fields
from llmproxy.teams import Team

_COLUMNS: Final = ", ".join(COLUMNS)
_TEAM_COLUMNS: Final = ", ".join(TEAM_COLUMNS)


class KeyStore:
    """The builtin key store; see the module docstring. ``open()`` before use, or ``with``."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        # PRAGMA data_version ignores this connection's own commits; counting them lets
        # data_version() report every change.
        self._own_commits = 0

    # Lifecycle -----------------------------------------------------------------------------

    def open(self) -> None:
        """Create the file if missing, switch to WAL and bring the schema up to date."""
        with self._lock:
            if self._connection is not None:
                return
            private_file(self.path)
            connection = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                self._configure(connection)
                migrate(connection, self.path)
                connection.row_factory = sqlite3.Row
            except sqlite3.DatabaseError as exc:
                connection.close()
                raise KeyStoreError(f"{self.path}: not a usable key store database: {exc}") from exc
            except BaseException:
                connection.close()
                raise
            self._connection = connection

    def _configure(self, connection: sqlite3.Connection) -> None:
        connection.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000):d}")
        (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode != "wal":
            raise KeyStoreError(
                f"{self.path}: SQLite refused WAL mode (got {mode!r}); keep the key store on a "
                "local file system"
            )
        # NORMAL is durable in WAL mode except for the last commits on power loss.
        connection.execute("PRAGMA synchronous = NORMAL")

    def close(self) -> None:
        """Close the connection; harmless when already closed."""
        with self._lock:
            connection, self._connection = self._connection, None
            if connection is not None:
                connection.close()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _connected(self) -> sqlite3.Connection:
        if self._connection is None:
            raise KeyStoreError(f"{self.path}: key store is not open (call open() first)")
        return self._connection

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._connected()

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock up front, so a read-then-write
        never fails half way with SQLITE_BUSY when another process wrote in between."""
        with self._lock:
            connection = self._connected()
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            self._own_commits += 1

    # Writes --------------------------------------------------------------------------------

    def add(self, *, name: str, **fields: object) -> tuple[str, KeyRecord]:
        """Issue a new key: returns its secret — the only time it exists — and its record.

        ``fields`` are any of :data:`~llmproxy.keyfields.ADD_FIELDS` (``user_id``, ``models``,
        ``rpm``…), checked by their rules.
        """
        secret = generate_key()
        return secret, self.import_key(secret, name=name, **fields)

    def import_key(self, secret: str, *, name: str, **fields: object) -> KeyRecord:
        """Store a key that already exists elsewhere (migrating from another store), by its hash.

        Any shape is accepted; a key claiming llmproxy's format must carry a valid checksum.
        """
        check_secret(secret)
        return self._insert(secret, check_fields({"name": name, **fields}, ADD_FIELDS))

    def _insert(self, secret: str, checked: Mapping[str, object]) -> KeyRecord:
        sha256 = key_sha256(secret)
        now = time.time()
        with self._writing() as connection:
            row = connection.execute("SELECT id FROM keys WHERE sha256 = ?", (sha256,)).fetchone()
            if row is not None:
                raise ValueError(f"key: already in the store as {row[0]}")
            self._check_team(connection, checked)
            key_id = new_key_id()
            while connection.execute("SELECT 1 FROM keys WHERE id = ?", (key_id,)).fetchone():
                key_id = new_key_id()
            values = {
                "id": key_id,
                "sha256": sha256,
                "prefix": display_prefix(secret),
                "created_at": now,
                "updated_at": now,
                **{field: column_value(field, value) for field, value in checked.items()},
            }
            connection.execute(
                f"INSERT INTO keys ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                tuple(values.values()),
            )
            return self._fetch(connection, key_id)

    def revoke(self, key_id: str) -> KeyRecord:
        """Disable a key for good (``status`` disabled, ``revoked_at`` set); idempotent."""
        now = time.time()
        with self._writing() as connection:
            record = self._fetch(connection, key_id)
            if record.revoked:
                return record
            connection.execute(
                "UPDATE keys SET status = 'disabled', revoked_at = ?, updated_at = ? WHERE id = ?",
                (now, now, key_id),
            )
            return self._fetch(connection, key_id)

    def update(self, key_id: str, **changes: object) -> KeyRecord:
        """Change fields of a key (``None`` clears an optional one); see ``SETTABLE_FIELDS``.

        Raises ``ValueError`` for a bad value, an unknown field or a revoked key, and
        :class:`KeyNotFound`.
        """
        checked = check_fields(changes)
        with self._writing() as connection:
            record = self._fetch(connection, key_id)
            if record.revoked:
                raise ValueError(f"{key_id}: revoked keys cannot be changed; add a new key")
            if not checked:
                return record
            self._check_team(connection, checked)
            values = {field: column_value(field, value) for field, value in checked.items()}
            values["updated_at"] = time.time()
            assignments = ", ".join(f"{column} = ?" for column in values)
            connection.execute(
                f"UPDATE keys SET {assignments} WHERE id = ?", (*values.values(), key_id)
            )
            return self._fetch(connection, key_id)

    @staticmethod
    def _check_team(connection: sqlite3.Connection, checked: Mapping[str, object]) -> None:
        """Refuse a key naming a team the store does not hold (in the write's transaction)."""
        team = checked.get("team")
        if (
            team
            and not connection.execute("SELECT 1 FROM teams WHERE name = ?", (team,)).fetchone()
        ):
            raise unknown_team(str(team))

    def add_usage(self, used: Mapping[str, int]) -> None:
        """Count tokens against keys' quotas (key id → tokens), in one transaction, atomically
        across processes; ids the store does not hold are skipped (a key of another provider)."""
        for tokens in used.values():
            if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
                raise ValueError(f"tokens: expected a whole number >= 0, got {tokens!r}")
        batch = [(tokens, key_id) for key_id, tokens in used.items() if tokens > 0]
        if not batch:
            return
        with self._writing() as connection:
            connection.executemany(
                "UPDATE keys SET used_quota = used_quota + ? WHERE id = ?", batch
            )
            # A team's quota used is its keys' together, counted in the same transaction.
            connection.executemany(
                "UPDATE teams SET used_quota = used_quota + ? "
                "WHERE name = (SELECT team FROM keys WHERE id = ?)",
                batch,
            )

    # Teams ---------------------------------------------------------------------------------

    def add_team(self, *, name: str, **fields: object) -> Team:
        """Add a team; ``fields`` are any of :data:`~llmproxy.teamfields.TEAM_ADD_FIELDS`.
        Raises :class:`TeamConflict` (``team_exists``) when the name is taken."""
        values = team_columns(check_team_fields({"name": name, **fields}, TEAM_ADD_FIELDS), None)
        now = time.time()
        values.update(created_at=now, updated_at=now)
        with self._writing() as connection:
            try:
                connection.execute(
                    f"INSERT INTO teams ({', '.join(values)}) "
                    f"VALUES ({', '.join('?' * len(values))})",
                    tuple(values.values()),
                )
            except sqlite3.IntegrityError:
                raise TeamConflict(
                    f"a team named {values['name']!r} exists", "team_exists"
                ) from None
            return self._team(connection, str(values["name"]))

    def update_team(self, name: str, /, **changes: object) -> Team:
        """Change fields of a team (``None`` clears an optional one); :class:`TeamNotFound`."""
        checked = check_team_fields(changes)
        with self._writing() as connection:
            current = self._team(connection, name)
            if not checked:
                return current
            values = team_columns(checked, current)
            values["updated_at"] = time.time()
            assignments = ", ".join(f"{column} = ?" for column in values)
            connection.execute(
                f"UPDATE teams SET {assignments} WHERE name = ?", (*values.values(), name)
            )
            return self._team(connection, name)

    def remove_team(self, name: str, *, force: bool = False) -> tuple[Team, int]:
        """Remove a team; answers it and how many live keys it left without a team.

        Live keys still in the team make it a :class:`TeamConflict` (``team_in_use``) unless
        ``force``, which moves them (and revoked ones) to no team first.
        """
        with self._writing() as connection:
            team = self._team(connection, name)
            (live,) = connection.execute(
                "SELECT count(*) FROM keys WHERE team = ? AND revoked_at IS NULL", (name,)
            ).fetchone()
            if live and not force:
                raise team_in_use(name, live)
            connection.execute(
                "UPDATE keys SET team = '', updated_at = ? WHERE team = ?", (time.time(), name)
            )
            connection.execute("DELETE FROM teams WHERE name = ?", (name,))
            return team, int(live)

    def _team(self, connection: sqlite3.Connection, name: str) -> Team:
        row = connection.execute(
            f"SELECT {_TEAM_COLUMNS} FROM teams WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise TeamNotFound(name)
        return team_from_row(row)

    def get_team(self, name: str) -> Team | None:
        """The team called ``name`` (case-sensitive)."""
        with self._reading() as connection:
            try:
                return self._team(connection, name)
            except TeamNotFound:
                return None

    def list_teams(self) -> builtins.list[Team]:
        """Every team, by name."""
        with self._reading() as connection:
            rows = connection.execute(f"SELECT {_TEAM_COLUMNS} FROM teams ORDER BY name").fetchall()
        return [team_from_row(row) for row in rows]

    # Reads ---------------------------------------------------------------------------------

    def _fetch(self, connection: sqlite3.Connection, key_id: str) -> KeyRecord:
        row = connection.execute(f"SELECT {_COLUMNS} FROM keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise KeyNotFound(key_id)
        return record_from_row(row)

    def get(self, key_id: str) -> KeyRecord | None:
        """The key with this id, revoked or not."""
        with self._reading() as connection:
            try:
                return self._fetch(connection, key_id)
            except KeyNotFound:
                return None

    def find_by_hash(self, sha256: str) -> KeyRecord | None:
        """The key whose secret has this SHA-256 hex digest, revoked or not."""
        with self._reading() as connection:
            row = connection.execute(
                f"SELECT {_COLUMNS} FROM keys WHERE sha256 = ?", (sha256.lower(),)
            ).fetchone()
        return None if row is None else record_from_row(row)

    def list(
        self,
        include_revoked: bool = False,
        *,
        user_id: str | None = None,
        team: str | None = None,
    ) -> builtins.list[KeyRecord]:
        """Keys oldest first, for listings; only ``user_id``'s and ``team``'s when given."""
        where = [] if include_revoked else ["revoked_at IS NULL"]
        parameters: tuple[object, ...] = ()
        if user_id is not None:
            where.append("user_id = ?")
            parameters += (user_id,)
        if team is not None:
            where.append("team = ?")
            parameters += (team,)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._reading() as connection:
            rows = connection.execute(
                f"SELECT {_COLUMNS} FROM keys{clause} ORDER BY created_at, id", parameters
            ).fetchall()
        return [record_from_row(row) for row in rows]

    def all_records(self) -> builtins.list[KeyRecord]:
        """Every key a lookup may find (not revoked), for the gateway's in-memory index."""
        with self._reading() as connection:
            rows = connection.execute(
                f"SELECT {_COLUMNS} FROM keys WHERE revoked_at IS NULL"
            ).fetchall()
        return [record_from_row(row) for row in rows]

    def data_version(self) -> int:
        """A number that changes whenever a write was committed, by this store or anyone else.

        Cheap (no table read): the gateway polls it to know when to reload its index. Compare
        values for equality only.
        """
        with self._reading() as connection:
            (version,) = connection.execute("PRAGMA data_version").fetchone()
            return int(version) + self._own_commits
