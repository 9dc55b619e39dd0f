"""Key stores for the contract tests: a SQLite file, and a fresh schema of the real PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A URL whose tables live in a schema of their own (dropped afterwards): asyncpg passes the
    ``search_path`` query parameter to the server, so each test starts from an empty database."""
    schema = f"llmproxy_test_{secrets.token_hex(6)}"
    connection = await asyncpg.connect(POSTGRES)
    try:
        await connection.execute(f"CREATE SCHEMA {schema}")
        yield f"{POSTGRES}?search_path={schema}"
    finally:
        await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await connection.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """See :func:`fresh_schema`."""
    async with fresh_schema() as url:
        yield url
