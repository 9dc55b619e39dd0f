"""A receiver outage plus a kill -9 of the gateway lose no usage record."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.e2e.daemon import LLMPROXY, free_port, wait_until_up

REQUESTS = 200


class Receiver:
    """A billing receiver that fails while ``down`` and dedups records by id."""

    def __init__(self) -> None:
        self.down = True
        self.ids: set[str] = set()
        self.requests: dict[str, str] = {}  # record id -> the request it bills
        self.posts = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.posts += 1
        if self.down:
            return web.json_response({"error": "down for maintenance"}, status=503)
        for record in (await request.json())["records"]:
            self.ids.add(record["id"])
            self.requests[record["id"]] = record["request_id"]
        return web.json_response({"ok": True})


def _start(args: list[str], port: int) -> subprocess.Popen[bytes]:
    """Start ``llmproxy ARGS`` and wait until it answers on ``port``."""
    process = subprocess.Popen(
        [*LLMPROXY, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_until_up(f"http://127.0.0.1:{port}/health", process)
    return process


async def _until(check: Callable[[], bool], within: float) -> bool:
    """Poll ``check`` until it holds or ``within`` seconds pass; its last answer."""
    for _ in range(int(within / 0.05)):
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


def _outbox_depth(database: Path) -> int:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        depth: int = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    db.close()
    return depth


@contextlib.asynccontextmanager
async def _receiving() -> AsyncIterator[tuple[Receiver, int]]:
    """A :class:`Receiver` served on a free loopback port (down until told otherwise)."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/usage", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield receiver, runner.addresses[0][1]
    finally:
        await runner.cleanup()


def _write_config(
    path: Path, gateway_port: int, backend_port: int, hook_port: int, acknowledge: str
) -> None:
    path.write_text(
        textwrap.dedent(
            f"""\
            listen: "127.0.0.1:{gateway_port}"
            backends: [{{url: "http://127.0.0.1:{backend_port}"}}]
            health_check: {{enabled: false}}
            usage: {{database: usage.db, acknowledge: {acknowledge}}}
            admin: {{enabled: false}}
            usage_hook:
              enabled: true
              url: "http://127.0.0.1:{hook_port}/usage"
              secret: "s3cret"
              batch_size: 50
              batch_interval: 100ms
              backoff_initial: 100ms
              backoff_max: 300ms
            """
        )
    )


async def test_outage_and_kill_9_lose_no_record(tmp_path: Path) -> None:
    """Records of answered requests survive a down receiver and a SIGKILL, and all arrive once."""
    async with _receiving() as (receiver, hook_port):
        backend_port, gateway_port = free_port(), free_port()
        config = tmp_path / "config.yaml"
        _write_config(config, gateway_port, backend_port, hook_port, "immediate")
        await _outage_then_kill(receiver, config, backend_port, gateway_port, tmp_path)


async def _outage_then_kill(
    receiver: Receiver, config: Path, backend_port: int, gateway_port: int, tmp_path: Path
) -> None:
    mock = _start(["mock-backend", "--port", str(backend_port)], backend_port)
    gateway = None
    try:
        gateway = _start(["serve", "--config", str(config)], gateway_port)
        url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
        async with aiohttp.ClientSession() as session:

            async def one(stream: bool) -> None:
                body = {"model": "mock-model", "messages": [], "max_tokens": 3, "stream": stream}
                async with session.post(url, json=body) as response:
                    assert response.status == 200
                    await response.read()

            for start in range(0, REQUESTS, 20):
                await asyncio.gather(*(one(index % 2 == 0) for index in range(start, start + 20)))
        # Every answered request's record reaches the outbox (durable) within moments...
        database = tmp_path / "usage.db"
        assert await _until(lambda: _outbox_depth(database) == REQUESTS, 5.0)
        assert receiver.posts > 0  # delivery was tried and failed: the receiver is down
        # ...and survives the gateway being killed outright.
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(10)
        receiver.down = False
        gateway = _start(["serve", "--config", str(config)], gateway_port)
        assert await _until(lambda: len(receiver.ids) >= REQUESTS, 20.0)
        assert len(receiver.ids) == REQUESTS
        assert await _until(lambda: _outbox_depth(database) == 0, 5.0)
    finally:
        for process in (gateway, mock):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(10)


@pytest.mark.parametrize("acknowledge", ["immediate", "durable"])
async def test_kill_9_mid_run_loses_no_record_of_an_answered_request(
    tmp_path: Path, acknowledge: str
) -> None:
    """Load keeps running while the receiver is down and the gateway is SIGKILLed in the middle
    of it: every request answered before the kill is delivered after the restart, once per id,
    and no record appears twice or for a request that was never sent. With ``immediate`` the
    ~20 ms write linger before the kill is the only window; with ``durable`` there is none."""
    async with _receiving() as (receiver, hook_port):
        backend_port, gateway_port = free_port(), free_port()
        config = tmp_path / "config.yaml"
        _write_config(config, gateway_port, backend_port, hook_port, acknowledge)
        await _load_kill_restart(
            receiver, config, backend_port, gateway_port, tmp_path, acknowledge
        )


async def _load_kill_restart(
    receiver: Receiver,
    config: Path,
    backend_port: int,
    gateway_port: int,
    tmp_path: Path,
    acknowledge: str,
) -> None:
    mock = _start(["mock-backend", "--port", str(backend_port), "--itl", "0.01"], backend_port)
    gateway = None
    answered: dict[str, float] = {}  # request id -> when its last byte arrived
    sent: set[str] = set()
    try:
        gateway = _start(["serve", "--config", str(config)], gateway_port)
        url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
        stop = asyncio.Event()

        async def client(session: aiohttp.ClientSession, worker: int) -> None:
            for number in range(10_000):
                if stop.is_set():
                    return
                request_id = f"crash-{worker}-{number}"
                sent.add(request_id)
                body = {"model": "mock-model", "messages": [], "max_tokens": 8, "stream": True}
                try:
                    async with session.post(
                        url, json=body, headers={"X-Request-Id": request_id}
                    ) as response:
                        payload = await response.read()
                        if response.status == 200 and payload.rstrip().endswith(b"[DONE]"):
                            answered[request_id] = time.monotonic()
                except aiohttp.ClientError:
                    return  # the gateway is gone

        async with aiohttp.ClientSession() as session:
            clients = [asyncio.create_task(client(session, n)) for n in range(16)]
            await asyncio.sleep(2.0)
            gateway.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            gateway.wait(10)
            stop.set()
            await asyncio.gather(*clients)
        assert len(answered) > 200
        receiver.down = False
        gateway = _start(["serve", "--config", str(config)], gateway_port)
        database = tmp_path / "usage.db"
        assert await _until(lambda: _outbox_depth(database) == 0 and receiver.posts > 0, 20.0)
        delivered = dict(receiver.requests)
    finally:
        for process in (gateway, mock):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(10)
    requests = list(delivered.values())
    assert len(requests) == len(set(requests))  # one record per request, never two
    assert set(requests) <= sent
    window = 0.2 if acknowledge == "immediate" else 0.0
    settled_before_kill = {rid for rid, at in answered.items() if at < killed_at - window}
    assert settled_before_kill <= set(requests)
