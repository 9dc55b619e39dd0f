"""Fleet-aware strategies end to end: several mock replicas behind a real gateway."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from llmproxy.mock import MockBackend
from tests.harness import RunningGateway, gateway, make_config, mock_backend

CHAT = "/v1/chat/completions"


@contextlib.asynccontextmanager
async def _fleet(
    count: int, strategy: str, **settings: Any
) -> AsyncIterator[tuple[RunningGateway, list[MockBackend]]]:
    async with contextlib.AsyncExitStack() as stack:
        mocks = [
            await stack.enter_async_context(mock_backend(name=f"r{n}", **settings))
            for n in range(count)
        ]
        config = make_config(
            [{"url": m.url, "name": m.settings.name} for m in mocks],
            routing={
                "load_balance_strategy": strategy,
                "load_signals": {"interval": "100ms"},
            },
        )
        yield await stack.enter_async_context(gateway(config)), mocks


def _body(tenant: int, turns: int = 1, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": f"You are the assistant of tenant {tenant}. " * 60}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"question {turn}"})
    return {"model": "mock-model", "messages": messages, **extra}


async def _served_by(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    async with session.post(url + CHAT, json=body) as response:
        assert response.status == 200
        await response.read()
        return response.headers["x-mock-backend"]


async def test_a_tenant_sticks_to_one_replica_and_tenants_spread() -> None:
    async with _fleet(3, "prefix_affinity") as (gw, _mocks), aiohttp.ClientSession() as session:
        owners: dict[int, set[str]] = {}
        for tenant in range(8):
            for turns in range(1, 6):  # a conversation that grows turn by turn
                served = await _served_by(session, gw.url, _body(tenant, turns))
                owners.setdefault(tenant, set()).add(served)
    assert all(len(replicas) == 1 for replicas in owners.values()), owners
    assert len(set().union(*owners.values())) >= 2


async def test_a_hot_prefix_overflows_when_its_replica_is_full() -> None:
    """One tenant's burst fills its replica's slots (`max_in_flight`); the rest spill over."""
    async with contextlib.AsyncExitStack() as stack:
        mocks = [
            await stack.enter_async_context(
                mock_backend(name=f"r{n}", itl=0.02, tokens=20, slots=4)
            )
            for n in range(3)
        ]
        config = make_config(
            [{"url": m.url, "name": m.settings.name, "max_in_flight": 4} for m in mocks],
            routing={"load_balance_strategy": "prefix_affinity"},
        )
        gw = await stack.enter_async_context(gateway(config))
        session = await stack.enter_async_context(aiohttp.ClientSession())
        served = await asyncio.gather(
            *(_served_by(session, gw.url, _body(1, stream=True)) for _ in range(12))
        )
        peaks = [mock.stats.peak_in_flight for mock in mocks]
    shares = Counter(served)
    assert len(shares) == 3  # the tenant's replica passed requests on
    assert max(peaks) <= 4  # nobody above its slots, and nothing queued at a replica


async def test_load_aware_avoids_a_slow_replica() -> None:
    async with contextlib.AsyncExitStack() as stack:
        slow = await stack.enter_async_context(mock_backend(name="slow", itl=0.05, tokens=20))
        fast = [
            await stack.enter_async_context(mock_backend(name=f"fast{n}", itl=0.002, tokens=20))
            for n in range(2)
        ]
        config = make_config(
            [{"url": m.url, "name": m.settings.name} for m in (slow, *fast)],
            routing={"load_balance_strategy": "load_aware"},
        )
        gw = await stack.enter_async_context(gateway(config))
        session = await stack.enter_async_context(aiohttp.ClientSession())
        served: list[str] = []

        async def client() -> None:
            for _ in range(15):
                served.append(await _served_by(session, gw.url, _body(0, stream=True)))

        await asyncio.gather(*(client() for _ in range(6)))
    shares = Counter(served)
    assert shares["slow"] < 0.2 * len(served), shares


async def test_a_tenant_whose_replica_dies_fails_over_and_loses_no_request() -> None:
    async with _fleet(3, "prefix_affinity") as (gw, mocks), aiohttp.ClientSession() as session:
        home = await _served_by(session, gw.url, _body(4))
        dead = next(m for m in mocks if m.settings.name == home)
        await dead.stop()
        after = [await _served_by(session, gw.url, _body(4, turns)) for turns in range(2, 6)]
    assert home not in after
    assert len(set(after)) == 1  # the tenant settles on one other replica (its ring successor)
