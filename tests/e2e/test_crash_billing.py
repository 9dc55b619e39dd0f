"""A gateway killed -9 mid-stream bills what its clients received, at its next start."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import asyncpg
import pytest

from llmproxy.keystore import KeyStore
from llmproxy.usage.filejournal import FileJournal
from llmproxy.usage.slots import SUFFIX, read_rows
from tests.e2e.daemon import LLMPROXY, free_port, running, wait_until_up
from tests.postgres import fresh_schema_sync

STREAMS = 20
INPUT_PRICE, OUTPUT_PRICE = 2.0, 8.0


def _config(tmp_path: Path, port: int, backend_port: int, usage_db: str, synchronous: str) -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            listen: "127.0.0.1:{port}"
            server: {{watch_config: false}}
            backends: [{{url: "http://127.0.0.1:{backend_port}", models: [mock-model]}}]
            health_check: {{enabled: false}}
            auth: {{enabled: true, storage: builtin, builtin_db: keys.db}}
            usage: {{database: "{usage_db}", synchronous: {synchronous}}}
            pricing:
              mock-model: {{input_per_million: {INPUT_PRICE}, output_per_million: {OUTPUT_PRICE}}}
            """
        )
    )
    return config


async def _stream(port: int, secret: str, received: list[int]) -> None:
    """One streamed chat completion; counts the content events it received until cut."""
    body = {
        "model": "mock-model",
        "stream": True,
        "max_tokens": 2000,
        "messages": [{"role": "user", "content": "count"}],
    }
    slot = len(received)
    received.append(0)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {secret}"},
            ) as response,
        ):
            assert response.status == 200
            async for line in response.content:
                if line.startswith(b"data: {") and b'"content"' in line:
                    received[slot] += 1
    except (TimeoutError, aiohttp.ClientError):
        pass  # the gateway died under it


@pytest.mark.parametrize("store", ["sqlite", "sqlite-full", "postgres"])
def test_kill_9_with_live_streams_bills_every_one_at_the_next_start(
    tmp_path: Path, store: str
) -> None:
    """20 live streams, the gateway killed -9: after the restart there are 20 records with
    ``status: "interrupted"``, each billed for at least what its client received minus
    250 ms of tokens (the checkpoint interval), and none twice; the key's used quota counts
    them, and each record's cost is its tokens at the configured prices. With the usage store
    in a SQLite file (journalled in a file per process; with
    ``synchronous: full``, in the database) and in PostgreSQL."""
    with contextlib.ExitStack() as stack:
        if store.startswith("sqlite"):
            usage_db = "usage.db"
            usage: _UsageTables = _SqliteUsage(tmp_path / usage_db)
        else:
            usage_db = stack.enter_context(fresh_schema_sync())
            usage = _PostgresUsage(usage_db)
        synchronous = "full" if store == "sqlite-full" else "normal"
        _kill_and_restart(tmp_path, usage_db, usage, synchronous)


def _kill_and_restart(tmp_path: Path, usage_db: str, usage: _UsageTables, synchronous: str) -> None:
    backend_port, port = free_port(), free_port()
    config = _config(tmp_path, port, backend_port, usage_db, synchronous)
    with KeyStore(tmp_path / "keys.db") as keys:
        secret, key = keys.add(name="crash")
    itl = 0.02  # 50 tokens/s: 250 ms is 12.5 tokens
    with running(
        ["mock-backend", "--port", str(backend_port), "--tokens", "2000", "--itl", str(itl)],
        f"http://127.0.0.1:{backend_port}/health",
    ):
        gateway = subprocess.Popen(
            [*LLMPROXY, "serve", "--config", str(config)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        received: list[int] = []

        async def stream_then_kill() -> None:
            tasks = [asyncio.create_task(_stream(port, secret, received)) for _ in range(STREAMS)]
            await asyncio.sleep(1.5)
            gateway.send_signal(signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*tasks), 10)

        try:
            wait_until_up(f"http://127.0.0.1:{port}/health", gateway)
            asyncio.run(stream_then_kill())
        finally:
            gateway.kill()
            gateway.wait()
        assert len(received) == STREAMS
        assert min(received) > 20  # every stream was well under way

        with running(
            ["serve", "--config", str(config)], f"http://127.0.0.1:{port}/health", cwd=tmp_path
        ):
            records = usage.records()
            deadline = time.monotonic() + 5
            while len(records) < STREAMS and time.monotonic() < deadline:
                time.sleep(0.1)
                records = usage.records()
            journal_left = usage.journal_rows()
            billed_total = sum(r["total_tokens"] for r in records)
            deadline = time.monotonic() + 5  # quota use is written back once a second
            while _used_quota(tmp_path / "keys.db", key.id) < billed_total:
                assert time.monotonic() < deadline, "the interrupted tokens never reached the key"
                time.sleep(0.1)
            assert _used_quota(tmp_path / "keys.db", key.id) == billed_total

    assert len(records) == STREAMS
    assert {r["status"] for r in records} == {"interrupted"}
    assert len({r["request_id"] for r in records}) == STREAMS
    assert {r["key_name"] for r in records} == {"crash"}
    slack = int(0.25 / itl) + 1
    billed = sorted(r["completion_tokens"] for r in records)
    for got, billed_tokens in zip(sorted(received), billed, strict=True):
        assert billed_tokens >= got - slack, (sorted(received), billed)
    assert all(r["prompt_tokens"] > 0 for r in records)
    # Priced when settled: the tokens billed at the configured prices.
    for r in records:
        nanos = round(
            r["prompt_tokens"] * INPUT_PRICE * 1000 + r["completion_tokens"] * OUTPUT_PRICE * 1000
        )
        assert r["cost"] == nanos / 1e9, r
    assert journal_left == 0


class _UsageTables(Protocol):
    def records(self) -> list[dict[str, Any]]: ...
    def journal_rows(self) -> int: ...


class _SqliteUsage:
    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        with sqlite3.connect(self.path) as db:
            return [json.loads(body) for (body,) in db.execute("SELECT body FROM usage")]

    def journal_rows(self) -> int:
        """Rows of the database journal and live slots of the file journal."""
        with sqlite3.connect(self.path) as db:
            (count,) = db.execute("SELECT count(*) FROM journal").fetchone()
        files = FileJournal.directory_for(self.path).glob(f"*{SUFFIX}")
        return int(count) + sum(len(read_rows(f.read_bytes(), "")) for f in files)


class _PostgresUsage:
    def __init__(self, url: str) -> None:
        self.url = url

    def _fetch(self, query: str) -> list[Any]:
        async def fetch() -> list[Any]:
            connection = await asyncpg.connect(self.url)
            try:
                return [row[0] for row in await connection.fetch(query)]
            finally:
                await connection.close()

        try:
            return asyncio.run(fetch())
        except asyncpg.UndefinedTableError:
            return []  # the gateway has not created its tables yet

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(body) for body in self._fetch("SELECT body::text FROM llmproxy_usage")]

    def journal_rows(self) -> int:
        return int(self._fetch("SELECT count(*) FROM llmproxy_usage_journal")[0])


def _used_quota(path: Path, key_id: str) -> int:
    with KeyStore(path) as keys:
        record = keys.get(key_id)
    assert record is not None
    return record.used_quota
