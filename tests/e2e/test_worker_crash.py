"""A worker killed -9 mid-stream, its siblings still serving: its requests are billed as
``interrupted`` within seconds, not at the gateway's next start, and nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import textwrap
import time
from pathlib import Path

import aiohttp

from tests.e2e.daemon import LLMPROXY, free_port, running, stop, wait_until_up

STREAMS = 12
TOKENS = 150
ITL = 0.02  # 3 s per stream


async def _stream(port: int) -> tuple[int, bool]:
    """One streamed completion: the content events received, and whether it ended whole."""
    body = {"model": "mock-model", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    received, whole = 0, False
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as response,
        ):
            async for line in response.content:
                if line.startswith(b"data: {") and b'"content"' in line:
                    received += 1
                whole = whole or line.startswith(b"data: [DONE]")
    except (TimeoutError, aiohttp.ClientError):
        pass  # its worker died under it
    return received, whole


def _workers(supervisor: int) -> list[int]:
    """The supervisor's worker processes (not its resource tracker)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [
        int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def _sockets(pid: int) -> int:
    """Sockets a process has open: a worker's streams hold two each."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def _records(path: Path) -> list[dict[str, object]]:
    with sqlite3.connect(path) as db:
        return [json.loads(body) for (body,) in db.execute("SELECT body FROM usage")]


def test_a_killed_workers_streams_are_billed_by_the_workers_left(tmp_path: Path) -> None:
    backend_port, port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            listen: "127.0.0.1:{port}"
            server: {{watch_config: false, workers: 2}}
            backends: [{{url: "http://127.0.0.1:{backend_port}", models: [mock-model]}}]
            health_check: {{enabled: false}}
            usage: {{database: usage.db}}
            """
        )
    )
    command = ["mock-backend", "--port", str(backend_port), "--tokens", str(TOKENS)]
    with running([*command, "--itl", str(ITL)], f"http://127.0.0.1:{backend_port}/health"):
        gateway = subprocess.Popen(
            [*LLMPROXY, "serve", "--config", str(config)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_up(f"http://127.0.0.1:{port}/health", gateway)
            deadline = time.monotonic() + 20
            while len(_workers(gateway.pid)) < 2:
                assert time.monotonic() < deadline, "the workers never started"
                time.sleep(0.1)

            async def streams() -> list[tuple[int, bool]]:
                tasks = [asyncio.create_task(_stream(port)) for _ in range(STREAMS)]
                await asyncio.sleep(1.0)
                # The busier worker (the kernel may give one worker every connection).
                victim = max(_workers(gateway.pid), key=_sockets)
                os.kill(victim, signal.SIGKILL)
                return await asyncio.wait_for(asyncio.gather(*tasks), 20)

            results = asyncio.run(streams())
            cut = [received for received, whole in results if not whole]
            assert cut, "no stream ran on the killed worker"
            deadline = time.monotonic() + 15  # a sweep every 5 s, by a sibling or the new worker
            records = _records(tmp_path / "usage.db")
            while len(records) < STREAMS and time.monotonic() < deadline:
                time.sleep(0.2)
                records = _records(tmp_path / "usage.db")
        finally:
            stop(gateway)
    assert len(records) == STREAMS
    assert len({r["id"] for r in records}) == STREAMS
    interrupted = [r for r in records if r["status"] == "interrupted"]
    assert len(interrupted) == len(cut)
    slack = int(0.25 / ITL) + 1
    billed = sorted(int(str(r["completion_tokens"])) for r in interrupted)
    for got, billed_tokens in zip(sorted(cut), billed, strict=True):
        assert billed_tokens >= got - slack, (sorted(cut), billed)
    assert all(r["status"] == 200 for r in records if r["status"] != "interrupted")
