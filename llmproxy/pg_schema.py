"""Versioned schema migrations on PostgreSQL, shared by every component that keeps tables there
(the builtin key store, the usage store).

Each component lists its migrations, a tuple of statements per version; :func:`migrate` applies
the missing ones in one transaction under an advisory lock, and records the version in
``llmproxy_schema`` (a row per component). Replicas starting together wait for each other on the
lock, and the later ones find the work done. Append a migration to change a schema — never edit
one that has shipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

import asyncpg

LOCK_ID: Final = 0x6C6C6D70_6B657973  # "llmpkeys": the first component's lock, kept for all

Migrations = Sequence[Sequence[str]]


class SchemaTooNew(RuntimeError):
    """The database was migrated by a later llmproxy than this one."""


async def migrate(connection: asyncpg.Connection, component: str, migrations: Migrations) -> int:
    """Bring ``component``'s tables to ``len(migrations)``; answers the version found."""
    target = len(migrations)
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", LOCK_ID)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS llmproxy_schema "
            "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        found = await connection.fetchval(
            "SELECT version FROM llmproxy_schema WHERE component = $1", component
        )
        found = int(found or 0)
        if found > target:
            raise SchemaTooNew(
                f"{component} schema version {found} is newer than this llmproxy understands "
                f"({target}); upgrade llmproxy"
            )
        for version in range(found + 1, target + 1):
            for statement in migrations[version - 1]:
                await connection.execute(statement)
        if found < target:
            await connection.execute(
                "INSERT INTO llmproxy_schema (component, version) VALUES ($1, $2) "
                "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
                component,
                target,
            )
    return found


async def migrated_pool(
    url: str,
    component: str,
    migrations: Migrations,
    *,
    min_size: int,
    max_size: int,
    wait: float,
) -> asyncpg.Pool:
    """A connection pool to ``url`` once ``component``'s tables are up to date (closed again
    if the migration fails); ``wait`` bounds each connect and each command. Raises what asyncpg
    raises, or :class:`SchemaTooNew`."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=wait,
        command_timeout=wait,
        max_inactive_connection_lifetime=300.0,
    )
    try:
        async with pool.acquire() as connection:
            await migrate(connection, component, migrations)
    except BaseException:
        await pool.close()
        raise
    return pool


async def close_pool(pool: asyncpg.Pool, grace: float) -> None:
    """Close ``pool`` gracefully within ``grace`` seconds, else at once."""
    try:
        await asyncio.wait_for(pool.close(), grace)
    except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        pool.terminate()
