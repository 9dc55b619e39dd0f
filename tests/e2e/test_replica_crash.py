"""Two replicas sharing Redis limits, a PostgreSQL key store and a PostgreSQL usage store; one is
killed -9 mid-stream."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio

from llmproxy.limits._wire import key_names
from tests.e2e.daemon import LLMPROXY, free_port, running, wait_until_up
from tests.postgres import fresh_schema_sync

LEASE_TTL = 2.0


def _replica(
    root: Path, name: str, backend_port: int, database: str, prefix: str
) -> tuple[Path, int]:
    home = root / name
    home.mkdir()
    port = free_port()
    config = home / "gateway.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            listen: "127.0.0.1:{port}"
            server: {{watch_config: false}}
            backends: [{{url: "http://127.0.0.1:{backend_port}", models: [mock-model]}}]
            health_check: {{enabled: false}}
            admin: {{socket: run/admin.sock}}
            auth: {{enabled: true, storage: builtin, builtin_db: "{database}"}}
            rate_limit:
              enabled: true
              storage: redis
              redis: {{addr: "127.0.0.1:6379"}}
              key_prefix: "{prefix}"
              lease_ttl: {LEASE_TTL}s
              instances: 2
              per_key: {{enabled: true, max_concurrent: 2}}
            usage: {{database: "{database}"}}
            """
        )
    )
    return config, port


async def _ask(port: int, secret: str) -> tuple[int, int]:
    """One short chat completion: its status and the total tokens billed."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={
                "model": "mock-model",
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "hi"}],
            },
            headers={"Authorization": f"Bearer {secret}"},
        ) as response,
    ):
        body = await response.json()
        tokens = body["usage"]["total_tokens"] if response.status == 200 else 0
        return response.status, tokens


async def _stream_until_cut(port: int, secret: str, started: asyncio.Event) -> None:
    body = {
        "model": "mock-model",
        "stream": True,
        "max_tokens": 5000,
        "messages": [{"role": "user", "content": "count"}],
    }
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
            async for _line in response.content:
                started.set()
    except (TimeoutError, aiohttp.ClientError):
        pass  # the replica died under it


def test_a_replica_killed_mid_stream_frees_its_slots_and_is_billed(tmp_path: Path) -> None:
    """Replica B holds a key's two concurrency slots (two live streams) and is killed -9: A
    refuses the key (the slots are taken) until B's leases expire, within lease_ttl, then serves
    it; B's two streams become interrupted records in the shared store — settled by A's next
    sweep, as B is gone — once, though B starts again and looks too."""
    backend_port = free_port()
    prefix = f"llmproxy:test:{secrets.token_hex(4)}:"
    with (
        fresh_schema_sync() as database,
        running(
            ["mock-backend", "--port", str(backend_port), "--tokens", "5000", "--itl", "0.02"],
            f"http://127.0.0.1:{backend_port}/health",
        ),
    ):
        (config_a, port_a), (config_b, port_b) = (
            _replica(tmp_path, name, backend_port, database, prefix) for name in "ab"
        )
        with running(
            ["serve", "--config", str(config_a)],
            f"http://127.0.0.1:{port_a}/health",
            cwd=config_a.parent,
        ):
            added = subprocess.run(
                [*LLMPROXY, "keys", "add", "--name", "shared", "--quota", "10000000", "--json",
                 "--config", str(config_a)],
                capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            secret = json.loads(added.stdout)["secret"]
            key_id = json.loads(added.stdout)["key"]["id"]
            replica_b = subprocess.Popen(
                [*LLMPROXY, "serve", "--config", str(config_b)],
                cwd=config_b.parent,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_until_up(f"http://127.0.0.1:{port_b}/health", replica_b)

                async def hold_then_kill() -> tuple[float, int]:
                    events = [asyncio.Event(), asyncio.Event()]
                    streams = [
                        asyncio.create_task(_stream_until_cut(port_b, secret, event))
                        for event in events
                    ]
                    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 10)
                    # Longer than lease_ttl: B, alive, renews its leases; the slots stay taken.
                    await asyncio.sleep(LEASE_TTL + 0.5)
                    assert (await _ask(port_a, secret))[0] == 429
                    replica_b.send_signal(signal.SIGKILL)
                    killed = time.monotonic()
                    await asyncio.wait_for(asyncio.gather(*streams), 10)
                    while (answer := await _ask(port_a, secret))[0] != 200:
                        assert time.monotonic() - killed < LEASE_TTL + 2.0, "slots never freed"
                        await asyncio.sleep(0.1)
                    return time.monotonic() - killed, answer[1]

                freed_after, probe_tokens = asyncio.run(hold_then_kill())
                assert freed_after <= LEASE_TTL + 1.0
            finally:
                replica_b.kill()
                replica_b.wait()

            # A sweeps the journal every few seconds and finds B's owner gone.
            deadline = time.monotonic() + 15
            while len(records := _interrupted(config_a)) < 2:
                assert time.monotonic() < deadline, "B's streams were never billed"
                time.sleep(0.2)
            with running(
                ["serve", "--config", str(config_b)],
                f"http://127.0.0.1:{port_b}/health",
                cwd=config_b.parent,
            ):
                time.sleep(1.0)
                assert _interrupted(config_b) == records  # settled once, seen from B too
                # The settler settled the two leases with the billed tokens: Redis's quota
                # counter has them, and A's one served probe.
                billed = sum(r["total_tokens"] for r in records)
                assert _redis_quota_used(prefix, key_id) == billed + probe_tokens
    assert [r["status"] for r in records] == ["interrupted", "interrupted"]
    assert all(r["completion_tokens"] > 0 for r in records)
    assert {r["key_name"] for r in records} == {"shared"}


def _interrupted(config: Path) -> list[dict[str, Any]]:
    """The fleet's interrupted records, as ``usage recent`` on one replica shows them."""
    done = subprocess.run(
        [*LLMPROXY, "usage", "recent", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    records: list[dict[str, Any]] = json.loads(done.stdout)["records"]
    return [r for r in records if r["status"] == "interrupted"]


def _redis_quota_used(prefix: str, key_id: str) -> int:
    async def used() -> int:
        client = redis.asyncio.Redis(host="127.0.0.1", port=6379, decode_responses=True)
        try:
            value = await client.hget(key_names(prefix, key_id).quota, "used")
            await client.delete(*[k async for k in client.scan_iter(match=f"{prefix}*")])
            return int(value or 0)
        finally:
            await client.aclose()

    return asyncio.run(used())
