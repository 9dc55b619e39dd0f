"""Fixtures: a real MockBackend on a free port, and real HTTP and SDK clients, always closed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import anthropic
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


@pytest.fixture
async def claude(mock: MockBackend) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The official Anthropic client pointed at the mock (it adds /v1 itself), no retries."""
    async with anthropic.AsyncAnthropic(base_url=mock.url, api_key="x", max_retries=0) as client:
        yield client
