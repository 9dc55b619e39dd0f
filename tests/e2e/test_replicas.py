"""Replicas on one PostgreSQL: three gateway daemons, as on three machines.

Each daemon has its own directory, port and admin socket, and shares nothing with the others but
``auth.builtin_db`` and ``usage.database`` (the real PostgreSQL, in a schema of its own). Their
poll of the key store is set to 30 s, so what arrives within a second arrived by LISTEN/NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import aiohttp

from tests.e2e.daemon import LLMPROXY, free_port, running
from tests.postgres import fresh_schema_sync

BODY = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}


def _replica(
    root: Path, name: str, backend_port: int, database: str, hook: str = ""
) -> tuple[Path, int]:
    home = root / name
    home.mkdir()
    port = free_port()
    config = home / "gateway.yaml"
    usage_hook = (
        f"{{enabled: true, url: '{hook}', batch_size: 7, batch_interval: 0.05s,"
        " backoff_initial: 0.05s, backoff_max: 0.3s, max_attempts: 10000}"
        if hook
        else "{enabled: false}"
    )
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
            usage: {{database: "{database}"}}
            usage_hook: {usage_hook}
            """
        )
    )
    return config, port


@contextlib.contextmanager
def _fleet(replicas: list[tuple[Path, int]]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for config, port in replicas:
            stack.enter_context(
                running(
                    ["serve", "--config", str(config)],
                    f"http://127.0.0.1:{port}/health",
                    cwd=config.parent,
                )
            )
        yield


class _Tail:
    """``llmproxy usage tail --json`` against one replica, its lines gathered by a thread."""

    def __init__(self, config: Path) -> None:
        self.lines: list[dict[str, Any]] = []
        self._process = subprocess.Popen(
            [*LLMPROXY, "usage", "tail", "--json", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            if line.strip():
                self.lines.append(json.loads(line))

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)
        self._reader.join(10)
        if self._process.stdout is not None:
            self._process.stdout.close()


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


def test_replicas_share_keys_quota_and_usage_through_postgres(tmp_path: Path) -> None:
    """A key added through replica A works on B and C within a second; the quota used through
    all three adds up exactly in the shared store, seen from any replica; `usage summary` on any
    replica is the sum of what the clients were told, and `usage tail` on one follows all
    three; a key revoked through C is refused by A and B within a second."""
    backend_port = free_port()
    with (
        fresh_schema_sync() as database,
        running(
            ["mock-backend", "--port", str(backend_port), "--tokens", "3"],
            f"http://127.0.0.1:{backend_port}/health",
        ),
    ):
        replicas = [_replica(tmp_path, name, backend_port, database) for name in "abc"]
        with _fleet(replicas):
            (config_a, port_a), (config_b, port_b), (config_c, port_c) = replicas

            added = _cli_json(config_a, "keys", "add", "--name", "shared", "--quota", "100000")
            secret = added["secret"]
            assert _seconds_until(port_b, secret, 200) < 1.0
            assert _seconds_until(port_c, secret, 200) < 1.0

            async def spend() -> int:
                asks = [_ask(port, secret) for port in (port_a, port_b, port_c) for _ in range(10)]
                answers = await asyncio.gather(*asks)
                assert {status for status, _ in answers} == {200}
                return sum(tokens for _, tokens in answers)

            tail = _Tail(config_a)
            time.sleep(1.0)  # the tail is following before the spending starts
            try:
                served = asyncio.run(spend())
                deadline = time.monotonic() + 5
                while len(tail.lines) < 30 and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                tail.stop()
            assert served > 0
            assert len(tail.lines) == 30  # A served 10 of them: the tail follows the fleet
            assert sum(line["total_tokens"] for line in tail.lines) == served
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
            for config in (config_a, config_b, config_c):
                rows = _cli_json(config, "usage", "summary")["rows"]
                assert sum(row["requests"] for row in rows) == 32
                assert sum(row["total_tokens"] for row in rows) == shown

            subprocess.run(
                [*LLMPROXY, "keys", "revoke", "shared", "--yes", "--config", str(config_c)],
                check=True,
                capture_output=True,
                timeout=30,
            )
            assert _seconds_until(port_a, secret, 401) < 1.0
            assert _seconds_until(port_b, secret, 401) < 1.0


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.extend(record["id"] for record in body["records"])
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_replicas_deliver_every_record_once_through_one_outbox(tmp_path: Path) -> None:
    """Three replicas share one webhook outbox; the receiver is down while they serve, then up:
    it receives every record exactly once, though all three were trying to deliver."""
    backend_port, hook_port = free_port(), free_port()
    hook = f"http://127.0.0.1:{hook_port}/usage"
    with (
        fresh_schema_sync() as database,
        running(
            ["mock-backend", "--port", str(backend_port), "--tokens", "3"],
            f"http://127.0.0.1:{backend_port}/health",
        ),
    ):
        replicas = [_replica(tmp_path, name, backend_port, database, hook) for name in "abc"]
        with _fleet(replicas):
            config_a = replicas[0][0]
            secret = _cli_json(config_a, "keys", "add", "--name", "billed")["secret"]
            for _, port in replicas:
                _seconds_until(port, secret, 200)

            async def serve() -> None:
                asks = [_ask(port, secret) for _, port in replicas for _ in range(20)]
                assert {status for status, _ in await asyncio.gather(*asks)} == {200}

            asyncio.run(serve())
            time.sleep(1.0)  # every replica has failed attempts against the dead receiver
            records = _cli_json(config_a, "usage", "recent", "--limit", "1000")["records"]
            assert len(records) == 63
            _Receiver.received = []
            receiver = ThreadingHTTPServer(("127.0.0.1", hook_port), _Receiver)
            threading.Thread(target=receiver.serve_forever, daemon=True).start()
            try:
                deadline = time.monotonic() + 15
                while len(set(_Receiver.received)) < 63 and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(1.0)  # anything sent twice would arrive by now
            finally:
                receiver.shutdown()
                receiver.server_close()
    assert sorted(_Receiver.received) == sorted(record["id"] for record in records)
