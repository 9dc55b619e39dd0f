"""Fixtures: a real MockBackend on a free port, and real HTTP clients that are always closed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from llmproxy.mock import MockBackend


@pytest.fixture
async def mock() -> AsyncIterator[MockBackend]:
    async with MockBackend() as backend:
        yield backend


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def client(mock: MockBackend) -> AsyncIterator[openai.AsyncOpenAI]:
    # No retries: a test of an error status must see the error, not a retried success.
    async with openai.AsyncOpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0) as oai:
        yield oai
