"""Priority end to end: a full fleet holds requests, and a high-priority key goes first."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from tests.harness import gateway, make_config, mock_backend

CHAT = "/v1/chat/completions"
KEYS = [
    {"key": "sk-low", "name": "batch", "priority": 10},
    {"key": "sk-high", "name": "interactive", "priority": 0},
]


def _config(url: str, **routing: Any) -> Any:
    return make_config(
        [{"url": url, "name": "gpu", "max_in_flight": 2, "send_priority": True}],
        auth={"enabled": True, "pipeline": [{"name": "k", "type": "static", "keys": KEYS}]},
        routing=routing,
    )


async def _stream(session: aiohttp.ClientSession, url: str, key: str) -> tuple[int, float]:
    body = {"model": "mock-model", "messages": [], "stream": True}
    async with session.post(
        url + CHAT, json=body, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        await response.read()
        return response.status, time.monotonic()


async def test_a_high_priority_request_overtakes_queued_low_priority_ones() -> None:
    async with (
        mock_backend(tokens=10, itl=0.03) as mock,
        gateway(_config(mock.url)) as gw,
        aiohttp.ClientSession() as session,
    ):
        low = [asyncio.create_task(_stream(session, gw.url, "sk-low")) for _ in range(6)]
        await asyncio.sleep(0.1)  # 2 run, 4 wait in the admission queue
        high = await _stream(session, gw.url, "sk-high")
        lows = await asyncio.gather(*low)
        # The backend never had more than its two slots busy.
        assert mock.stats.peak_in_flight == 2
    assert high[0] == 200
    assert all(status == 200 for status, _ in lows)
    finished_after_high = sum(1 for _, at in lows if at > high[1])
    assert finished_after_high >= 3  # it went ahead of the queued low-priority requests


async def test_a_full_admission_queue_is_a_clear_503() -> None:
    async with (
        mock_backend(tokens=10, itl=0.05) as mock,
        gateway(_config(mock.url, admission={"max_waiting": 1, "timeout": "5s"})) as gw,
        aiohttp.ClientSession() as session,
    ):
        running = [asyncio.create_task(_stream(session, gw.url, "sk-low")) for _ in range(3)]
        await asyncio.sleep(0.1)  # 2 run, 1 waits: the queue is full
        body = {"model": "mock-model", "messages": []}
        async with session.post(
            gw.url + CHAT, json=body, headers={"Authorization": "Bearer sk-low"}
        ) as response:
            status, error = response.status, await response.json()
        await asyncio.gather(*running)
    assert status == 503
    assert error["error"]["code"] == "backend_capacity"
    assert "at capacity" in error["error"]["message"]


async def test_the_keys_priority_is_sent_in_vllms_field() -> None:
    async with mock_backend() as mock, gateway(_config(mock.url)) as gw:
        async with aiohttp.ClientSession() as session:
            body = {"model": "mock-model", "priority": -50}  # a client may not pick its own
            async with session.post(
                gw.url + "/v1/echo", json=body, headers={"Authorization": "Bearer sk-high"}
            ) as response:
                echoed = await response.json()
    assert json.loads(echoed["body"])["priority"] == 0


async def test_a_clients_own_priority_is_stripped_unless_its_key_may_set_it() -> None:
    """With send_priority off, a client's "priority" does not reach vLLM, however it is spelt,
    unless its key's metadata says client_priority: true."""
    keys = [
        {"key": "sk-plain", "name": "plain"},
        {"key": "sk-trusted", "name": "trusted", "metadata": {"client_priority": True}},
    ]
    async with mock_backend() as mock:
        config = make_config(
            [{"url": mock.url, "name": "gpu"}],
            auth={"enabled": True, "pipeline": [{"name": "k", "type": "static", "keys": keys}]},
        )
        async with gateway(config) as gw, aiohttp.ClientSession() as session:

            async def sent(key: str, raw: bytes) -> dict[str, Any]:
                async with session.post(
                    gw.url + "/v1/echo",
                    data=raw,
                    headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
                ) as response:
                    echoed = await response.json()
                return json.loads(echoed["body"])  # type: ignore[no-any-return]

            for raw in (b'{"model":"m","priority":-50}', b'{"model":"m","priorit\\u0079":-50}'):
                assert "priority" not in await sent("sk-plain", raw)
            assert (await sent("sk-trusted", b'{"model":"m","priority":-50}'))["priority"] == -50


async def _first_token_after(session: aiohttp.ClientSession, url: str, key: str) -> float:
    body = {"model": "mock-model", "messages": [], "stream": True}
    started = time.monotonic()
    async with session.post(
        url + CHAT, json=body, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        assert response.status == 200
        await response.content.readline()
        first = time.monotonic() - started
        await response.read()
    return first


async def test_a_reserved_slot_serves_an_important_request_without_waiting() -> None:
    """Low-priority traffic fills every slot it may use; a reserved slot stays free for the
    high-priority key, whose first token then comes as on an idle backend."""
    admission = {"reserved_slots": 1, "reserved_priority": 0}
    async with (
        mock_backend(tokens=20, itl=0.05) as mock,  # each stream holds its slot for 1 s
        gateway(_config(mock.url, admission=admission)) as gw,
        aiohttp.ClientSession() as session,
    ):
        low = [asyncio.create_task(_stream(session, gw.url, "sk-low")) for _ in range(5)]
        await asyncio.sleep(0.2)
        assert mock.stats.in_flight == 1  # of 2 slots: the other one is reserved
        waited = await _first_token_after(session, gw.url, "sk-high")
        await asyncio.gather(*low)
    assert waited < 0.25  # no wait for a 1 s low-priority generation to end
