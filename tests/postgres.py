"""The real PostgreSQL for tests: each test gets a fresh schema of the ``test`` database."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import asyncpg

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


async def _execute(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A URL whose tables live in a schema of their own (dropped afterwards): asyncpg passes the
    ``search_path`` query parameter to the server, so each test starts from an empty database."""
    schema = f"llmproxy_test_{secrets.token_hex(6)}"
    await _execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES}?search_path={schema}"
    finally:
        await _execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@contextmanager
def fresh_schema_sync() -> Iterator[str]:
    """:func:`fresh_schema` for a synchronous test (one that runs daemons as processes)."""
    schema = f"llmproxy_test_{secrets.token_hex(6)}"
    asyncio.run(_execute(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{POSTGRES}?search_path={schema}"
    finally:
        asyncio.run(_execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
