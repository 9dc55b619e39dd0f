"""The builtin key store on PostgreSQL (``auth.builtin_db: "postgresql://..."``), for replicas.

Several gateways on several machines share one table of keys. It has the SQLite store's columns
and rules (:mod:`llmproxy.keystore.record`: hashed secrets, display prefixes, the checked fields of
:mod:`llmproxy.keyfields`), plus ``change_seq``, which a trigger takes from a sequence on every
insert and update. The same trigger sends ``NOTIFY llmproxy_keys, '<key id>'`` at commit, so:

- every gateway LISTENs and fetches a changed key by its id the moment another one commits it
  (a key added on one machine works on the others within milliseconds, a revoked one is refused);
- every ``refresh_interval`` a gateway also asks for the rows whose ``change_seq`` passed the
  highest it has seen — the net under a notification lost with a dropped connection;
- a periodic full load (``resync_interval``) is the net under both (a row deleted by hand, a
  transaction that committed a lower ``change_seq`` after a higher one).

Migrations are versioned (:mod:`llmproxy.pg_schema`), so replicas starting together create the
schema once. Append a migration to change the schema — never edit one that has shipped.

Quota used is written back in batches (:meth:`PostgresKeyStore.add_usage`, one statement for many
keys); each write is a change like any other, so every replica sees the new ``used_quota``.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Final

import asyncpg

from llmproxy import pg_schema
from llmproxy.apikey import display_prefix, generate_key, key_sha256
from llmproxy.dsn import postgres_dsn, scrub_dsn
from llmproxy.keyfields import ADD_FIELDS, FIELDS, check_fields
from llmproxy.keystore.errors import KeyNotFound, KeyStoreError, TeamConflict, TeamNotFound
from llmproxy.keystore.record import (
    COLUMNS,
    TEAM_COLUMNS,
    KeyChanges,
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
from llmproxy.teamfields import TEAM_ADD_FIELDS, check_team_fields
from llmproxy.teams import Team

log = logging.getLogger("llmproxy.keystore")

CHANNEL: Final = "llmproxy_keys"
"""The NOTIFY channel; the payload is the changed key's id."""

_COMPONENT: Final = "keys"
_SELECT: Final = f"SELECT {', '.join(COLUMNS)}, change_seq FROM llmproxy_keys"
_TEAMS: Final = f"SELECT {', '.join(TEAM_COLUMNS)} FROM llmproxy_teams"
TEAM_CHANGED: Final = "team:"
"""The NOTIFY payload of a change to the teams (a key id never starts with it)."""
_TIME_FIELDS: Final = frozenset(name for name, field in FIELDS.items() if field.kind == "time")

_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: the keys table (SQLite's columns; times are Unix seconds, lists and metadata JSON text),
    #    its change sequence, and the trigger that numbers and announces every change.
    (
        "CREATE SEQUENCE llmproxy_keys_change_seq",
        """
        CREATE TABLE llmproxy_keys (
            id TEXT NOT NULL PRIMARY KEY,
            sha256 TEXT NOT NULL UNIQUE CHECK (length(sha256) = 64),
            prefix TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            user_id TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'active',
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION,
            revoked_at DOUBLE PRECISION,
            models TEXT NOT NULL DEFAULT '[]',
            allowed_ips TEXT NOT NULL DEFAULT '[]',
            total_quota BIGINT,
            used_quota BIGINT NOT NULL DEFAULT 0,
            rpm BIGINT,
            tpm BIGINT,
            max_concurrent BIGINT,
            priority BIGINT,
            metadata TEXT NOT NULL DEFAULT '{}',
            change_seq BIGINT NOT NULL DEFAULT nextval('llmproxy_keys_change_seq')
        )
        """,
        "CREATE INDEX llmproxy_keys_user_id ON llmproxy_keys (user_id)",
        "CREATE INDEX llmproxy_keys_by_change_seq ON llmproxy_keys (change_seq)",
        """
        CREATE FUNCTION llmproxy_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE' THEN
                NEW.change_seq := nextval('llmproxy_keys_change_seq');
            END IF;
            PERFORM pg_notify('llmproxy_keys', NEW.id);
            RETURN NEW;
        END
        $$
        """,
        """
        CREATE TRIGGER llmproxy_keys_changed BEFORE INSERT OR UPDATE ON llmproxy_keys
        FOR EACH ROW EXECUTE FUNCTION llmproxy_keys_changed()
        """,
    ),
    # 2: teams (llmproxy.teamfields), and a key's team and own budget. A team's changes take
    #    their change_seq from the keys' sequence, so one cursor follows both, and are announced
    #    on the keys' channel as 'team:' (a removal too: it has no row left to find).
    (
        "ALTER TABLE llmproxy_keys ADD COLUMN team TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE llmproxy_keys ADD COLUMN budget DOUBLE PRECISION",
        "ALTER TABLE llmproxy_keys ADD COLUMN budget_period TEXT NOT NULL DEFAULT 'monthly'",
        "CREATE INDEX llmproxy_keys_team ON llmproxy_keys (team)",
        """
        CREATE TABLE llmproxy_teams (
            name TEXT NOT NULL PRIMARY KEY,
            description TEXT NOT NULL DEFAULT '',
            budget DOUBLE PRECISION,
            period TEXT NOT NULL DEFAULT 'monthly',
            rpm BIGINT,
            tpm BIGINT,
            max_concurrent BIGINT,
            total_quota BIGINT,
            used_quota BIGINT NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            change_seq BIGINT NOT NULL DEFAULT nextval('llmproxy_keys_change_seq')
        )
        """,
        """
        CREATE FUNCTION llmproxy_teams_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('llmproxy_keys', 'team:');
            IF TG_OP = 'DELETE' THEN
                RETURN OLD;
            END IF;
            IF TG_OP = 'UPDATE' THEN
                NEW.change_seq := nextval('llmproxy_keys_change_seq');
            END IF;
            RETURN NEW;
        END
        $$
        """,
        """
        CREATE TRIGGER llmproxy_teams_changed BEFORE INSERT OR UPDATE OR DELETE
        ON llmproxy_teams FOR EACH ROW EXECUTE FUNCTION llmproxy_teams_changed()
        """,
    ),
    # 3: a key's own burst (the size of its request bucket; NULL: the rate's own).
    ("ALTER TABLE llmproxy_keys ADD COLUMN burst BIGINT",),
)

SCHEMA_VERSION: Final = len(_MIGRATIONS)
"""The key store's schema version on PostgreSQL (``llmproxy_schema``, component ``keys``)."""

_ERRORS: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
"""What a PostgreSQL call may raise when the server, the network or the schema is the problem."""


def _argument(field: str, value: object) -> object:
    """A checked value as asyncpg binds it: JSON text for lists, floats for times."""
    value = column_value(field, value)
    if field in _TIME_FIELDS and value is not None:
        return float(value)  # type: ignore[arg-type]
    return value


def _teams(rows: builtins.list[asyncpg.Record]) -> builtins.list[Team]:
    return [team_from_row(row) for row in rows]


async def _check_team(connection: asyncpg.Connection, checked: Mapping[str, object]) -> None:
    """Refuse a key naming a team the store does not hold (in the write's transaction; the
    team row is locked so a concurrent removal waits for it)."""
    team = checked.get("team")
    if team and not await connection.fetchval(
        "SELECT 1 FROM llmproxy_teams WHERE name = $1 FOR SHARE", team
    ):
        raise unknown_team(str(team))


class PostgresKeyStore:
    """The key store in a PostgreSQL database; an :class:`~llmproxy.keystore.access.KeyStoreAccess`.

    ``open()`` connects (a small pool of its own, and one more connection that LISTENs once
    :meth:`on_change` has a callback) and migrates; every failure of the server is a
    :class:`KeyStoreError` naming the database without its password.
    """

    def __init__(self, dsn: str, *, pool_size: int = 4, timeout: float = 5.0) -> None:
        self._url = postgres_dsn(dsn)
        self.location = scrub_dsn(self._url)
        self._pool_size = pool_size
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._callback: Callable[[str], None] | None = None
        self._listening: asyncio.Task[None] | None = None

    # Lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and bring the schema up to date."""
        if self._pool is not None:
            return
        try:
            self._pool = await pg_schema.migrated_pool(
                self._url,
                _COMPONENT,
                _MIGRATIONS,
                min_size=0,
                max_size=self._pool_size,
                wait=self._timeout,
            )
        except pg_schema.SchemaTooNew as exc:
            raise KeyStoreError(str(exc)) from None
        except _ERRORS as exc:
            raise self._failure(exc) from None

    async def close(self) -> None:
        """Stop listening and close every connection; harmless when already closed."""
        task, self._listening = self._listening, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._drop_listener()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pg_schema.close_pool(pool, self._timeout)

    def on_change(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(key_id)`` whenever any process commits a change to a key (LISTEN, on
        a connection of its own, reconnected with a back-off when it drops)."""
        self._callback = callback
        if self._listening is None:
            self._listening = asyncio.create_task(self._listen(), name="llmproxy.keystore.listen")

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                if self._listener is None or self._listener.is_closed():
                    connection = await asyncpg.connect(self._url, timeout=self._timeout)
                    await connection.add_listener(CHANNEL, self._notified)
                    self._listener = connection
                    delay = 0.1
                    # Whatever changed while nobody listened is found by the next poll.
                    if self._callback is not None:
                        self._callback("")
                await asyncio.sleep(1.0)
            except _ERRORS as exc:
                log.warning("key store %s: cannot listen for changes: %s", self.location, exc)
                await self._drop_listener()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _notified(self, connection: object, pid: int, channel: str, payload: str) -> None:
        if self._callback is not None:
            self._callback(payload)

    async def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            try:
                await asyncio.wait_for(listener.close(), self._timeout)
            except (TimeoutError, *_ERRORS):
                listener.terminate()

    def _connected(self) -> asyncpg.Pool:
        if self._pool is None:
            raise KeyStoreError(f"{self.location}: key store is not open (call open() first)")
        return self._pool

    def _failure(self, exc: BaseException) -> KeyStoreError:
        text = str(exc).replace(self._url, self.location) or type(exc).__name__
        return KeyStoreError(f"{self.location}: {text}")

    # Writes --------------------------------------------------------------------------------

    async def add(self, *, name: str, **fields: object) -> tuple[str, KeyRecord]:
        """Issue a new key; see :meth:`~llmproxy.keystore.store.KeyStore.add`."""
        secret = generate_key()
        return secret, await self.import_key(secret, name=name, **fields)

    async def import_key(self, secret: str, *, name: str, **fields: object) -> KeyRecord:
        """Store a key that exists elsewhere, by its hash."""
        check_secret(secret)
        checked = check_fields({"name": name, **fields}, ADD_FIELDS)
        sha256 = key_sha256(secret)
        now = time.time()
        values: dict[str, object] = {
            "id": new_key_id(),
            "sha256": sha256,
            "prefix": display_prefix(secret),
            "created_at": now,
            "updated_at": now,
            **{field: _argument(field, value) for field, value in checked.items()},
        }
        columns = ", ".join(values)
        placeholders = ", ".join(f"${n}" for n in range(1, len(values) + 1))
        try:
            async with self._connected().acquire() as connection, connection.transaction():
                await _check_team(connection, checked)
                row = await connection.fetchrow(
                    f"INSERT INTO llmproxy_keys ({columns}) VALUES ({placeholders}) "
                    "ON CONFLICT (sha256) DO NOTHING "
                    f"RETURNING {', '.join(COLUMNS)}",
                    *values.values(),
                )
                if row is None:
                    existing = await connection.fetchval(
                        "SELECT id FROM llmproxy_keys WHERE sha256 = $1", sha256
                    )
                    raise ValueError(f"key: already in the store as {existing}")
        except asyncpg.UniqueViolationError:  # the random id taken: vanishingly rare, try again
            return await self.import_key(secret, name=name, **fields)
        except _ERRORS as exc:
            raise self._failure(exc) from None
        return record_from_row(row)

    async def revoke(self, key_id: str) -> KeyRecord:
        """Disable a key for good; idempotent."""
        now = time.time()
        try:
            async with self._connected().acquire() as connection:
                row = await connection.fetchrow(
                    "UPDATE llmproxy_keys SET status = 'disabled', revoked_at = $1, "
                    "updated_at = $1 WHERE id = $2 AND revoked_at IS NULL "
                    f"RETURNING {', '.join(COLUMNS)}",
                    now,
                    key_id,
                )
                if row is None:
                    row = await connection.fetchrow(f"{_SELECT} WHERE id = $1", key_id)
        except _ERRORS as exc:
            raise self._failure(exc) from None
        if row is None:
            raise KeyNotFound(key_id)
        return record_from_row(row)

    async def update(self, key_id: str, **changes: object) -> KeyRecord:
        """Change fields of a key (``None`` clears an optional one); revoked keys refuse."""
        checked = check_fields(changes)
        try:
            async with self._connected().acquire() as connection, connection.transaction():
                row = await connection.fetchrow(f"{_SELECT} WHERE id = $1 FOR UPDATE", key_id)
                if row is None:
                    raise KeyNotFound(key_id)
                if row["revoked_at"] is not None:
                    raise ValueError(f"{key_id}: revoked keys cannot be changed; add a new key")
                if not checked:
                    return record_from_row(row)
                await _check_team(connection, checked)
                values = {field: _argument(field, value) for field, value in checked.items()}
                values["updated_at"] = time.time()
                row = await connection.fetchrow(
                    _update("llmproxy_keys", values, "id", COLUMNS), *values.values(), key_id
                )
        except _ERRORS as exc:
            raise self._failure(exc) from None
        return record_from_row(row)

    async def add_usage(self, used: Mapping[str, int]) -> None:
        """Count tokens against several keys' quotas in one statement; unknown ids are skipped."""
        batch = {key_id: tokens for key_id, tokens in used.items() if tokens > 0}
        if not batch:
            return
        try:
            async with self._connected().acquire() as connection:
                ids, tokens = builtins.list(batch), builtins.list(batch.values())
                async with connection.transaction():
                    await connection.execute(
                        "UPDATE llmproxy_keys AS k SET used_quota = k.used_quota + u.tokens "
                        "FROM unnest($1::text[], $2::bigint[]) AS u(id, tokens) WHERE k.id = u.id",
                        ids,
                        tokens,
                    )
                    # A team's quota used is its keys' together, in the same transaction.
                    await connection.execute(
                        "UPDATE llmproxy_teams AS t SET used_quota = t.used_quota + s.tokens "
                        "FROM (SELECT k.team, sum(u.tokens) AS tokens "
                        "      FROM unnest($1::text[], $2::bigint[]) AS u(id, tokens) "
                        "      JOIN llmproxy_keys AS k ON k.id = u.id WHERE k.team <> '' "
                        "      GROUP BY k.team) AS s "
                        "WHERE t.name = s.team",
                        ids,
                        tokens,
                    )
        except _ERRORS as exc:
            raise self._failure(exc) from None

    # Teams ---------------------------------------------------------------------------------

    async def add_team(self, *, name: str, **fields: object) -> Team:
        """Add a team; see :meth:`~llmproxy.keystore.store.KeyStore.add_team`."""
        values = team_columns(check_team_fields({"name": name, **fields}, TEAM_ADD_FIELDS), None)
        now = time.time()
        values.update(created_at=now, updated_at=now)
        placeholders = ", ".join(f"${n}" for n in range(1, len(values) + 1))
        row = await self._fetchrow(
            f"INSERT INTO llmproxy_teams ({', '.join(values)}) VALUES ({placeholders}) "
            f"ON CONFLICT (name) DO NOTHING RETURNING {', '.join(TEAM_COLUMNS)}",
            *values.values(),
        )
        if row is None:
            raise TeamConflict(f"a team named {values['name']!r} exists", "team_exists")
        return team_from_row(row)

    async def update_team(self, name: str, /, **changes: object) -> Team:
        """Change fields of a team (``None`` clears an optional one)."""
        checked = check_team_fields(changes)
        try:
            async with self._connected().acquire() as connection, connection.transaction():
                row = await connection.fetchrow(f"{_TEAMS} WHERE name = $1 FOR UPDATE", name)
                if row is None:
                    raise TeamNotFound(name)
                if not checked:
                    return team_from_row(row)
                values = team_columns(checked, team_from_row(row))
                values["updated_at"] = time.time()
                row = await connection.fetchrow(
                    _update("llmproxy_teams", values, "name", TEAM_COLUMNS), *values.values(), name
                )
        except _ERRORS as exc:
            raise self._failure(exc) from None
        return team_from_row(row)

    async def remove_team(self, name: str, *, force: bool = False) -> tuple[Team, int]:
        """Remove a team; see :meth:`~llmproxy.keystore.store.KeyStore.remove_team`."""
        try:
            async with self._connected().acquire() as connection, connection.transaction():
                row = await connection.fetchrow(f"{_TEAMS} WHERE name = $1 FOR UPDATE", name)
                if row is None:
                    raise TeamNotFound(name)
                live = int(
                    await connection.fetchval(
                        "SELECT count(*) FROM llmproxy_keys WHERE team = $1 AND revoked_at IS NULL",
                        name,
                    )
                )
                if live and not force:
                    raise team_in_use(name, live)
                await connection.execute(
                    "UPDATE llmproxy_keys SET team = '', updated_at = $1 WHERE team = $2",
                    time.time(),
                    name,
                )
                await connection.execute("DELETE FROM llmproxy_teams WHERE name = $1", name)
        except _ERRORS as exc:
            raise self._failure(exc) from None
        return team_from_row(row), live

    async def get_team(self, name: str) -> Team | None:
        """The team called ``name`` (case-sensitive)."""
        row = await self._fetchrow(f"{_TEAMS} WHERE name = $1", name)
        return None if row is None else team_from_row(row)

    async def list_teams(self) -> builtins.list[Team]:
        """Every team, by name."""
        return [team_from_row(row) for row in await self._fetch(f"{_TEAMS} ORDER BY name")]

    # Reads ---------------------------------------------------------------------------------

    async def get(self, key_id: str) -> KeyRecord | None:
        """The key with this id, revoked or not."""
        row = await self._fetchrow(f"{_SELECT} WHERE id = $1", key_id)
        return None if row is None else record_from_row(row)

    async def list(
        self,
        include_revoked: bool = False,
        *,
        user_id: str | None = None,
        team: str | None = None,
    ) -> builtins.list[KeyRecord]:
        """Keys oldest first; only ``user_id``'s and ``team``'s when given."""
        where = [] if include_revoked else ["revoked_at IS NULL"]
        arguments: tuple[object, ...] = ()
        if user_id is not None:
            arguments += (user_id,)
            where.append(f"user_id = ${len(arguments)}")
        if team is not None:
            arguments += (team,)
            where.append(f"team = ${len(arguments)}")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._fetch(f"{_SELECT}{clause} ORDER BY created_at, id", *arguments)
        return [record_from_row(row) for row in rows]

    async def changes(self, cursor: object | None, ids: Collection[str] = ()) -> KeyChanges:
        """Every live key when ``cursor`` is None (``complete``), else the keys changed since
        ``cursor`` or named in ``ids``, revoked ones included so the reader drops them.

        Every team comes too when any changed since ``cursor`` (or ``ids`` holds
        :data:`TEAM_CHANGED`: a removal leaves no row to find)."""
        try:
            async with self._connected().acquire() as connection:
                if cursor is None:
                    # The high mark first: a change committed between the two reads is above it
                    # and comes again with the next poll rather than being missed.
                    mark = await connection.fetchval(
                        "SELECT greatest((SELECT max(change_seq) FROM llmproxy_keys), "
                        "(SELECT max(change_seq) FROM llmproxy_teams))"
                    )
                    rows = await connection.fetch(f"{_SELECT} WHERE revoked_at IS NULL")
                    records = [record_from_row(row) for row in rows]
                    teams = await connection.fetch(_TEAMS)
                    return KeyChanges(int(mark or 0), records, complete=True, teams=_teams(teams))
                rows = await connection.fetch(
                    f"{_SELECT} WHERE change_seq > $1 OR id = ANY($2::text[])",
                    cursor,
                    builtins.list(ids),
                )
                team_mark = await connection.fetchval(
                    "SELECT max(change_seq) FROM llmproxy_teams WHERE change_seq > $1", cursor
                )
                teams = None
                if team_mark is not None or TEAM_CHANGED in ids:
                    teams = _teams(await connection.fetch(_TEAMS))
        except _ERRORS as exc:
            raise self._failure(exc) from None
        mark = max((int(row["change_seq"]) for row in rows), default=0)
        return KeyChanges(
            max(mark, int(team_mark or 0), int(cursor)),  # type: ignore[call-overload]
            [record_from_row(row) for row in rows],
            complete=False,
            teams=teams,
        )

    async def _fetchrow(self, query: str, *arguments: object) -> asyncpg.Record | None:
        try:
            async with self._connected().acquire() as connection:
                return await connection.fetchrow(query, *arguments)
        except _ERRORS as exc:
            raise self._failure(exc) from None

    async def _fetch(self, query: str, *arguments: object) -> builtins.list[asyncpg.Record]:
        try:
            async with self._connected().acquire() as connection:
                return builtins.list(await connection.fetch(query, *arguments))
        except _ERRORS as exc:
            raise self._failure(exc) from None


def _update(table: str, values: Mapping[str, object], key: str, columns: Sequence[str]) -> str:
    """``UPDATE`` of ``values``' columns (``$1``…) of the row whose ``key`` is the next
    argument, returning ``columns``: a key's and a team's changes alike."""
    assignments = ", ".join(f"{column} = ${n}" for n, column in enumerate(values, start=1))
    return (
        f"UPDATE {table} SET {assignments} WHERE {key} = ${len(values) + 1} "
        f"RETURNING {', '.join(columns)}"
    )
