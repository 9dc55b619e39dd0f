"""Replicas on one PostgreSQL key store: three gateway daemons, as on three machines.

Each daemon has its own directory, port and admin socket, and shares nothing with the others but
``auth.builtin_db`` (the real PostgreSQL, in a schema of its own). Their poll of the store is set
to 30 s, so what arrives within a second arrived by LISTEN/NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.daemon import LLMPROXY, free_port, running
from tests.postgres import fresh_schema_sync

BODY = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}


def _replica(root: Path, name: str, backend_port: int, database: str) -> tuple[Path, int]:
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
            auth:
              enabled: true
              storage: builtin
              builtin_db: "{database}"
              builtin_refresh_interval: 30s
            """
        )
    )
    return config, port


def _cli_json(config: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [*LLMPROXY, *args, "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


async def _ask(port: int, secret: str) -> tuple[int, int]:
    """One chat completion: its status and the total tokens the client was told it used."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json=BODY,
            headers={"Authorization": f"Bearer {secret}"},
        ) as response,
    ):
        body = await response.json()
        tokens = body.get("usage", {}).get("total_tokens", 0) if response.status == 200 else 0
        return response.status, tokens


def _seconds_until(port: int, secret: str, status: int, bound: float = 5.0) -> float:
    """How long until ``port`` answers ``status`` for ``secret`` (fails after ``bound``)."""
    started = time.monotonic()
    while asyncio.run(_ask(port, secret))[0] != status:
        assert time.monotonic() - started < bound, f"127.0.0.1:{port} never answered {status}"
        time.sleep(0.02)
    return time.monotonic() - started


def test_replicas_share_keys_and_quota_through_postgres(tmp_path: Path) -> None:
    """A key added through replica A works on B and C within a second; the quota used through
    all three adds up exactly in the shared store, seen from any replica; a key revoked through
    C is refused by A and B within a second."""
    backend_port = free_port()
    with (
        fresh_schema_sync() as database,
        running(
            ["mock-backend", "--port", str(backend_port), "--tokens", "3"],
            f"http://127.0.0.1:{backend_port}/health",
        ),
    ):
        replicas = [_replica(tmp_path, name, backend_port, database) for name in "abc"]
        with contextlib.ExitStack() as stack:
            for config, port in replicas:
                stack.enter_context(
                    running(
                        ["serve", "--config", str(config)],
                        f"http://127.0.0.1:{port}/health",
                        cwd=config.parent,
                    )
                )
            (config_a, port_a), (_, port_b), (config_c, port_c) = replicas

            added = _cli_json(config_a, "keys", "add", "--name", "shared", "--quota", "100000")
            secret = added["secret"]
            assert _seconds_until(port_b, secret, 200) < 1.0
            assert _seconds_until(port_c, secret, 200) < 1.0

            async def spend() -> int:
                asks = [_ask(port, secret) for port in (port_a, port_b, port_c) for _ in range(10)]
                answers = await asyncio.gather(*asks)
                assert {status for status, _ in answers} == {200}
                return sum(tokens for _, tokens in answers)

            served = asyncio.run(spend())
            assert served > 0
            # Each replica writes its count back within a second; any replica shows the sum.
            deadline = time.monotonic() + 5
            while True:
                shown = _cli_json(config_c, "keys", "show", "shared")["key"]["used_quota"]
                if shown >= served + 2 * (served // 30) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            # Every answer is the same size; the one 200 each probe of B and C got counts too.
            each = served // 30
            assert served == 30 * each
            assert shown == 32 * each
            assert _cli_json(config_a, "keys", "show", "shared")["key"]["used_quota"] == shown

            subprocess.run(
                [*LLMPROXY, "keys", "revoke", "shared", "--yes", "--config", str(config_c)],
                check=True,
                capture_output=True,
                timeout=30,
            )
            assert _seconds_until(port_a, secret, 401) < 1.0
            assert _seconds_until(port_b, secret, 401) < 1.0
