"""Budgets across replicas: two gateway processes sharing Redis (limits) and PostgreSQL (usage),
one team budget, 64 concurrent requests; and the budget alerts the webhook receives once.

The team's budget covers exactly ten requests' cost (output tokens only, 0.001 each, three per
request), so every admission reserves what the request will cost and the arithmetic is exact.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis

from llmproxy.budgets import day_of, period_bounds
from llmproxy.limits import _wire
from tests.e2e.daemon import free_port, running
from tests.postgres import fresh_schema_sync

REQUESTS = 64
AFFORDABLE = 10
COST = 0.003  # three output tokens at 1000 per million
BODY = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@contextmanager
def _receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver on loopback: every JSON body it was POSTed, answered 200."""
    bodies: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            bodies.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", bodies
    finally:
        server.shutdown()
        server.server_close()


def _config(port: int, mock: int, socket: Path, prefix: str, usage: str, hook: str) -> str:
    return textwrap.dedent(
        f"""\
        listen: "127.0.0.1:{port}"
        backends: [{{url: "http://127.0.0.1:{mock}", models: [mock-model]}}]
        health_check: {{enabled: false}}
        auth: {{enabled: true, storage: builtin, builtin_db: keys.db}}
        admin: {{socket: "{socket}"}}
        rate_limit:
          enabled: true
          storage: redis
          key_prefix: "{prefix}"
          redis: {{addr: "127.0.0.1:6379"}}
        usage: {{database: "{usage}"}}
        usage_hook: {{enabled: true, url: "{hook}", batch_interval: 0.2s}}
        pricing:
          mock-model: {{input_per_million: 0, output_per_million: 1000}}
        """
    )


async def _fire(urls: list[str], secret: str) -> list[tuple[int, dict[str, Any]]]:
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(n: int) -> tuple[int, dict[str, Any]]:
            answer = await client.post(
                urls[n % 2] + "/v1/chat/completions", json=BODY, headers=headers
            )
            return answer.status_code, answer.json()

        return await asyncio.gather(*(one(n) for n in range(REQUESTS)))


def _spent(url: str, team: str) -> tuple[float, int]:
    """Cost of the team's records, and how many there are (status 200)."""

    async def fetch() -> tuple[float, int]:
        connection = await asyncpg.connect(url)
        try:
            row = await connection.fetchrow(
                "SELECT coalesce(sum((body->>'cost')::float8), 0), count(*) FROM llmproxy_usage "
                "WHERE body->>'team' = $1 AND status = '200'",
                team,
            )
            assert row is not None
            return float(row[0]), int(row[1])
        finally:
            await connection.close()

    return asyncio.run(fetch())


def test_64_concurrent_requests_across_two_gateways_spend_a_team_budget_exactly(
    tmp_path: Path,
) -> None:
    """A team budget for ten requests, 64 at once through two gateways: ten are admitted, 54
    refused with budget_exceeded; the records' cost equals what Redis counted; the next request
    is told when the month renews; the webhook gets the 80 % and 100 % alerts once each."""
    prefix = f"llmproxy-test:{uuid.uuid4().hex[:8]}:"
    socket_dir = Path(tempfile.mkdtemp(prefix="llmp-", dir="/tmp"))
    mock = free_port()
    ports = [free_port(), free_port()]
    team = f"budget-{uuid.uuid4().hex[:6]}"
    try:
        with ExitStack() as stack:
            usage = stack.enter_context(fresh_schema_sync())
            hook, received = stack.enter_context(_receiver())
            stack.enter_context(
                running(
                    ["mock-backend", "--port", str(mock), "--tokens", "3", "--ttft", "1.0"],
                    f"http://127.0.0.1:{mock}/health",
                )
            )
            for n, port in enumerate(ports):
                config = tmp_path / f"gateway-{n}.yaml"
                socket = socket_dir / f"admin-{n}.sock"
                config.write_text(_config(port, mock, socket, prefix, usage, hook))
                stack.enter_context(
                    running(["serve", "-c", str(config)], f"http://127.0.0.1:{port}/health")
                )
            transport = httpx.HTTPTransport(uds=str(socket_dir / "admin-0.sock"))
            admin = stack.enter_context(httpx.Client(transport=transport, base_url="http://admin"))
            deadline = time.monotonic() + 20
            while admin.get("/teams").status_code != 200:
                assert time.monotonic() < deadline, "the admin API never came up"
                time.sleep(0.1)
            created = admin.post("/teams", json={"name": team, "budget": AFFORDABLE * COST})
            assert created.status_code == 201, created.text
            added = admin.post("/keys", json={"name": "spender", "team": team})
            assert added.status_code == 201, added.text
            secret = added.json()["secret"]
            urls = [f"http://127.0.0.1:{port}" for port in ports]
            for url in urls:  # both gateways know the key (and its team) before the burst
                deadline = time.monotonic() + 10
                while (
                    httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {secret}"})
                ).status_code != 200:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)

            answers = asyncio.run(_fire(urls, secret))
            admitted = [body for status, body in answers if status == 200]
            refused = [body for status, body in answers if status == 429]
            assert len(admitted) == AFFORDABLE, [s for s, _ in answers]
            assert len(refused) == REQUESTS - AFFORDABLE
            assert {body["error"]["code"] for body in refused} == {"budget_exceeded"}
            assert all(f"team `{team}`" in body["error"]["message"] for body in refused)

            # Settled: the records' cost is what the shared counter holds, to the nano-unit.
            start, end = period_bounds("monthly", time.time())
            quota = _wire.key_names(prefix, f"budget:team:{team}:{day_of(start)}").quota
            client = redis.Redis(host="127.0.0.1", port=6379)
            stack.callback(client.close)
            deadline = time.monotonic() + 10
            while True:
                cost, count = _spent(usage, team)
                counted = client.hget(quota, "used")
                if count == AFFORDABLE and counted is not None and int(counted) == 30_000_000:
                    break
                assert time.monotonic() < deadline, (cost, count, counted)
                time.sleep(0.1)
            assert round(cost * 1e9) == int(counted) == round(AFFORDABLE * COST * 1e9)
            shown = admin.get(f"/teams/{team}").json()["spent"]
            assert shown["amount"] == AFFORDABLE * COST
            assert (shown["currency"], shown["period_start"]) == ("USD", start)

            after = httpx.post(
                urls[1] + "/v1/chat/completions",
                json=BODY,
                headers={"Authorization": f"Bearer {secret}"},
            )
            assert after.status_code == 429
            assert "is spent" in after.json()["error"]["message"]
            assert end is not None
            assert abs(int(after.headers["retry-after"]) - (end - time.time())) < 10

            # One alert per threshold, whichever gateway noticed first (within a refresh).
            deadline = time.monotonic() + 20
            while True:
                events = [e for body in received for e in body.get("events", [])]
                if len({e["threshold"] for e in events}) == 2:
                    break
                assert time.monotonic() < deadline, received
                time.sleep(0.2)
            time.sleep(6)  # a further refresh of both gateways raises nothing new
            events = [e for body in received for e in body.get("events", [])]
            assert sorted(e["threshold"] for e in events) == [0.8, 1.0]
            assert {(e["scope"], e["name"], e["period"]) for e in events} == {
                ("team", team, "monthly")
            }
            assert all(e["spent"] >= e["threshold"] * AFFORDABLE * COST - 1e-9 for e in events)
            records = [r for body in received for r in body.get("records", [])]
            assert all("event" not in r for r in records)
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)
        client = redis.Redis(host="127.0.0.1", port=6379)
        try:
            for name in client.scan_iter(prefix + "*"):
                client.delete(name)
        finally:
            client.close()
