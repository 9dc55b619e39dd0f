"""SIGTERM drains the real daemon: streams in flight finish, their usage is written, exit 0.

A second SIGTERM exits at once, and the requests it cuts are still billed as cancelled.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import textwrap
import time
from pathlib import Path

import aiohttp

from tests.e2e.daemon import LLMPROXY, free_port, wait_until_up
from tests.harness import mock_backend

STREAMS = 5
BODY = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _start(
    tmp_path: Path, backend_url: str, shutdown_timeout: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            listen: "127.0.0.1:{port}"
            backends: [{{url: "{backend_url}", name: mock}}]
            health_check: {{enabled: false}}
            server: {{shutdown_timeout: {shutdown_timeout}}}
            usage: {{database: usage.db}}
            admin: {{enabled: false}}
            """
        )
    )
    process = subprocess.Popen(
        [*LLMPROXY, "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url + "/health", process)
    return process, url


async def _stream(session: aiohttp.ClientSession, url: str, started: asyncio.Event) -> bytes:
    """The whole body of one stream (what arrived before the connection ended)."""
    received = b""
    try:
        async with session.post(url + "/v1/chat/completions", json=BODY) as response:
            async for chunk in response.content.iter_any():
                received += chunk
                started.set()
    except aiohttp.ClientError:
        pass
    return received


def _stored_records(database: Path) -> list[tuple[int, int]]:
    """(completion_tokens, cancelled) of every stored usage record."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT body FROM usage").fetchall()
    db.close()
    import json

    return [
        (json.loads(body)["completion_tokens"], int(json.loads(body)["cancelled"]))
        for (body,) in rows
    ]


async def _wait_exit(process: subprocess.Popen[bytes], within: float) -> int:
    deadline = time.monotonic() + within
    while process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError(f"the daemon did not exit within {within}s")
        await asyncio.sleep(0.05)
    return process.returncode


async def test_sigterm_lets_streams_in_flight_finish_and_exits_0(tmp_path: Path) -> None:
    async with mock_backend(tokens=30, itl=0.05) as mock:
        process, url = _start(tmp_path, mock.url, "30s")
        try:
            async with aiohttp.ClientSession() as session:
                events = [asyncio.Event() for _ in range(STREAMS)]
                tasks = [asyncio.create_task(_stream(session, url, e)) for e in events]
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 10)
                process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                # Draining: the listener no longer accepts new connections.
                refused = False
                try:
                    async with aiohttp.ClientSession() as fresh, fresh.get(url + "/health") as r:
                        await r.read()
                except aiohttp.ClientError:
                    refused = True
                bodies = await asyncio.gather(*tasks)
            code = await _wait_exit(process, 15)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout:
                process.stdout.close()
    assert refused
    assert code == 0
    for body in bodies:
        assert body.rstrip().endswith(b"data: [DONE]")
        assert body.count(b'"content"') >= 30
    assert _stored_records(tmp_path / "usage.db") == [(30, 0)] * STREAMS


async def test_a_second_sigterm_exits_at_once_and_bills_the_cut_streams(tmp_path: Path) -> None:
    async with mock_backend(tokens=2000, itl=0.01) as mock:  # 20 s streams
        process, url = _start(tmp_path, mock.url, "60s")
        try:
            async with aiohttp.ClientSession() as session:
                events = [asyncio.Event() for _ in range(STREAMS)]
                tasks = [asyncio.create_task(_stream(session, url, e)) for e in events]
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 10)
                await asyncio.sleep(0.2)
                process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                assert process.poll() is None  # draining: waits for the streams
                second = time.monotonic()
                process.send_signal(signal.SIGTERM)
                code = await _wait_exit(process, 10)
                exit_seconds = time.monotonic() - second
                bodies = await asyncio.gather(*tasks)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout:
                process.stdout.close()
    assert exit_seconds < 3.0
    assert code == 0
    assert all(not body.rstrip().endswith(b"data: [DONE]") for body in bodies)
    records = _stored_records(tmp_path / "usage.db")
    assert len(records) == STREAMS
    assert all(cancelled == 1 and 0 < tokens < 2000 for tokens, cancelled in records), records
