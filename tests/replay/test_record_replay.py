"""Record through the gateway, then replay the file: against the gateway and against the mock."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from llmproxy.mock import MockSettings
from llmproxy.record.format import decode_line
from tests.harness import gateway, make_config
from tests.replay.servers import RecordingMock, cli

MODELS = ("llama", "qwen")


def _read(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


async def _lines(path: Path, count: int) -> list[bytes]:
    deadline = time.monotonic() + 10
    while True:
        lines = await asyncio.to_thread(_read, path)
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.05)


async def test_a_recording_made_by_the_gateway_replays_the_same_requests(tmp_path: Path) -> None:
    recording = tmp_path / "traffic.jsonl"
    sent: Counter[tuple[str, str]] = Counter()
    async with RecordingMock(MockSettings(models=MODELS)) as source:
        config = make_config(
            [{"url": source.url}], record={"enabled": True, "path": str(recording)}
        )
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            for number in range(12):
                model = MODELS[number % 2]
                body: dict[str, Any]
                if number % 3 == 2:
                    endpoint, body = "/v1/completions", {"model": model, "prompt": "once upon"}
                else:
                    endpoint = "/v1/chat/completions"
                    body = {
                        "model": model,
                        "messages": [{"role": "user", "content": f"turn {number}"}],
                        "stream": number % 2 == 0,
                    }
                async with session.post(gw.url + endpoint, json=body) as response:
                    assert response.status == 200
                    await response.read()
                sent[(endpoint, model)] += 1
            lines = await _lines(recording, 12)
    recorded = [decode_line(line) for line in lines]
    assert Counter((r.endpoint, r.model) for r in recorded) == sent
    assert all(r.outcome is not None and r.outcome.status == 200 for r in recorded)

    # Replayed through a gateway, and straight at a backend: the same requests arrive.
    async with RecordingMock(MockSettings(models=MODELS)) as target:
        async with gateway(make_config([{"url": target.url}])) as gw:
            through = await cli(str(recording), "--target", gw.url + "/v1", "--speed", "20", "-q")
        assert through.exit_code == 0, through.output
        assert Counter((path, model) for _, path, model in target.seen) == sent
        target.seen.clear()
        direct = await cli(str(recording), "--target", target.url + "/v1", "--speed", "20", "-q")
        assert direct.exit_code == 0, direct.output
        assert Counter((path, model) for _, path, model in target.seen) == sent
