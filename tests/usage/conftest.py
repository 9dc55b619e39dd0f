"""Usage stores for the contract tests: a SQLite file, and a fresh schema of the real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmproxy.usage.store import UsageStore, open_usage_store
from tests.postgres import fresh_schema


@pytest.fixture(params=["sqlite", "postgres"])
async def usage_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[UsageStore]:
    """An open usage store of each kind, empty."""
    if request.param == "sqlite":
        store = open_usage_store("usage.db", tmp_path)
        await store.open()
        yield store
        await store.close()
        return
    async with fresh_schema() as url:
        store = open_usage_store(url, tmp_path)
        await store.open()
        yield store
        await store.close()


@pytest.fixture
async def pg_usage_url() -> AsyncIterator[str]:
    """A PostgreSQL URL whose usage tables start empty (see :func:`tests.postgres.fresh_schema`)."""
    async with fresh_schema() as url:
        yield url
