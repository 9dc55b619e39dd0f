"""Overload protection (``server.overload``) on the real daemon: when the event loop runs late,
new requests are shed at once with 503 ``gateway_overloaded`` and the streams already running
keep their pace."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

import httpx
import yaml

from llmproxy.auth.lua.sandbox import LuaSandbox
from llmproxy.mock import MockBackend, MockSettings
from tests.e2e.daemon import free_port, running

ITL = 0.02
TOKENS = 150
LAG_LIMIT = 0.015
"""server.overload.max_event_loop_lag of the test's gateway."""

BURN_SECONDS = LAG_LIMIT + 0.02
"""What each admitted request of the flood costs in CPU: the 10 ms probe runs late by more than
the limit even when the loop runs one request per iteration (how many it runs at once depends on
the event loop's version)."""

FLOODERS = 8
"""Clients sending the expensive requests back to back: at most this many are admitted in one
burst (before the probe sees the lag), which bounds how long a running stream can stall."""


def _burn_script(seconds: float = BURN_SECONDS) -> str:
    """A Lua decision that costs ``seconds`` of CPU on this machine (calibrated here, in the
    same sandbox: machines differ by several times)."""
    sandbox = LuaSandbox(instruction_limit=1_000_000_000, timeout=10.0)
    try:
        probe = 500_000
        script = sandbox.compile(_loop(probe), "calibration")
        started = time.perf_counter()
        script.decide(api_key="k", data={}, request={}, metadata={}, now=time.time())
        spent = time.perf_counter() - started
    finally:
        sandbox.close()
    return _loop(max(probe, int(probe * seconds / spent)))


def _loop(iterations: int) -> str:
    return f"local x = 0 for i = 1, {iterations} do x = x + i end return true"


def _config(tmp_path: Path, mock_url: str, port: int) -> Path:
    config = {
        "listen": f"127.0.0.1:{port}",
        "server": {
            "watch_config": False,
            "overload": {"max_event_loop_lag": LAG_LIMIT, "retry_after": 2},
        },
        "backends": [{"url": mock_url}],
        "health_check": {"enabled": False},
        "admin": {"enabled": False},
        "usage": {"enabled": False},
        "auth": {
            "enabled": True,
            "cache": {"enabled": False},
            "lua": {"instruction_limit": 1_000_000_000, "timeout": "5s"},
            "pipeline": [
                {"name": "streams", "type": "static", "keys": [{"key": "sk-stream"}]},
                {
                    "name": "heavy",
                    "type": "static",
                    "keys": [{"key": "sk-heavy"}],
                    "lua_script": _burn_script(),
                },
            ],
        },
    }
    path = tmp_path / "llmproxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _stream(client: httpx.AsyncClient, url: str) -> list[float]:
    """One stream's chunk arrival times (seconds)."""
    body = {"model": "mock-model", "messages": [], "stream": True, "max_tokens": TOKENS}
    arrivals: list[float] = []
    async with client.stream(
        "POST",
        url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": "Bearer sk-stream"},
    ) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: {") or line == "data: [DONE]":
                arrivals.append(time.perf_counter())
    return arrivals


async def _flood(client: httpx.AsyncClient, url: str, until: float) -> list[httpx.Response]:
    """Requests with the expensive key, back to back, until ``until``."""
    answers = []
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}
    while time.perf_counter() < until:
        answer = await client.post(
            url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": "Bearer sk-heavy"},
        )
        answers.append(answer)
        if answer.status_code == 503:
            await asyncio.sleep(0.01)
    return answers


Seen = tuple[list[list[float]], list[httpx.Response], str]


async def _run(tmp_path: Path) -> Seen:
    """Four streams, then a flood of expensive requests: what the streams, the flood and
    ``/metrics`` saw."""
    async with MockBackend(MockSettings(itl=ITL)) as mock:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config = _config(tmp_path, mock.url, port)
        with running(["serve", "--config", str(config)], url + "/health", cwd=tmp_path):
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(timeout=30, limits=limits) as client:
                streams = [asyncio.create_task(_stream(client, url)) for _ in range(4)]
                await asyncio.sleep(0.5)  # the streams are flowing
                until = time.perf_counter() + 1.5
                floods = await asyncio.gather(
                    *(_flood(client, url, until) for _ in range(FLOODERS))
                )
                arrivals = await asyncio.gather(*streams)
                metrics = (await client.get(url + "/metrics")).text
    return arrivals, [answer for flood in floods for answer in flood], metrics


def _gaps(arrivals: list[list[float]]) -> list[float]:
    return sorted(b - a for times in arrivals for a, b in itertools.pairwise(times))


async def test_overload_sheds_new_requests_and_running_streams_keep_their_pace(
    tmp_path: Path,
) -> None:
    arrivals, answers, metrics = await _run(tmp_path)
    shed = [answer for answer in answers if answer.status_code == 503]
    assert shed, "the flood never made the gateway shed"
    error = shed[0].json()["error"]
    assert error["code"] == "gateway_overloaded"
    assert shed[0].headers["retry-after"] == "2"
    assert all(answer.status_code in (200, 503) for answer in answers)
    assert any(answer.status_code == 200 for answer in answers)  # shedding is not refusing all
    for times in arrivals:
        assert len(times) >= TOKENS  # every token, and [DONE]
    # Running streams keep their pace: the flood's admitted requests each cost 35 ms of CPU,
    # yet no stream waits much past the threshold for a chunk, and none takes much longer.
    gaps = _gaps(arrivals)
    p99, worst = gaps[int(len(gaps) * 0.99)], gaps[-1]
    assert p99 < 0.15, f"chunks came late: p99 gap {p99:.3f} s"
    assert worst < 0.4, f"a running stream stalled for {worst:.3f} s"
    for times in arrivals:
        assert times[-1] - times[0] < 1.5 * ITL * TOKENS
    lines = [line for line in metrics.splitlines() if not line.startswith("#")]
    assert any(line.startswith("llmproxy_event_loop_lag_seconds ") for line in lines)
    rejected = [line for line in lines if line.startswith("llmproxy_limit_rejections_total")]
    assert any('kind="overload"' in line and float(line.split()[-1]) > 0 for line in rejected)
    print(json.dumps({"shed": len(shed), "answers": len(answers), "p99_gap_s": p99}))
