"""Key stores for the contract tests: a SQLite file, and a fresh schema of the real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.postgres import fresh_schema


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """See :func:`tests.postgres.fresh_schema`."""
    async with fresh_schema() as url:
        yield url
