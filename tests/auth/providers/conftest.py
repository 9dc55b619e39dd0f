"""Fixtures for the providers: a pool registry that is always closed, and unique names per run."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from llmproxy.apikey import PresentedKey
from llmproxy.connections import ConnectionPools

POSTGRES_DSN = "postgres://postgres@127.0.0.1:5432/test"
MYSQL_DSN = "mysql://root@127.0.0.1:3306/test"
DOWN_ADDR = "127.0.0.1:1"  # nothing listens on port 1: connections are refused at once


@pytest.fixture
async def pools() -> AsyncIterator[ConnectionPools]:
    registry = ConnectionPools()
    try:
        yield registry
    finally:
        await registry.close()


@pytest.fixture
def run_id() -> str:
    """A short id that keeps this test's keys and tables apart from every other run."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def key(run_id: str) -> PresentedKey:
    return PresentedKey.of(f"sk-test-{run_id}-{uuid.uuid4().hex}")
