"""``server.workers: 2``: the workers enforce limits for the daemon, not each its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.daemon import LLMPROXY, free_port, running

URL = "http://127.0.0.1:{port}/v1/chat/completions"
BODY = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}


def _config(tmp_path: Path, port: int, backend_port: int, limits: str, workers: int = 2) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            listen: "127.0.0.1:{port}"
            server: {{workers: {workers}}}
            backends: [{{url: "http://127.0.0.1:{backend_port}", models: [mock-model]}}]
            health_check: {{enabled: false}}
            admin: {{socket: run/admin.sock}}
            auth:
              enabled: true
              pipeline: [{{name: keys, type: static, keys: [{{key: sk-one}}]}}]
            rate_limit:
              enabled: true
              storage: memory
            """
        )
        + textwrap.indent(limits, "  ")
    )
    return path


async def _one_per_connection(port: int, count: int, headers: dict[str, str]) -> Counter[str]:
    """``count`` requests at once, each on a connection of its own (the kernel spreads new
    connections over the workers); counts statuses and which worker answered."""
    seen: Counter[str] = Counter()

    async def one() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(URL.format(port=port), json=BODY, headers=headers) as response,
        ):
            await response.read()
            seen[str(response.status)] += 1

    await asyncio.gather(*(one() for _ in range(count)))
    return seen


def _admin_socket(tmp_path: Path) -> Path:
    """The admin socket once worker 0 has bound it (worker 1 may answer /health first)."""
    socket = tmp_path / "run" / "admin.sock"
    deadline = time.monotonic() + 20
    while not socket.exists():
        assert time.monotonic() < deadline, "the admin socket never appeared"
        time.sleep(0.1)
    return socket


def _cli(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``llmproxy ARGS --config CONFIG``, as an operator runs it against the daemon."""
    return subprocess.run(
        [*LLMPROXY, *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=check,
    )


def _cli_json(config: Path, *args: str) -> dict[str, Any]:
    """The ``--json`` answer of ``llmproxy ARGS``."""
    answer: dict[str, Any] = json.loads(_cli(config, *args, "--json").stdout)
    return answer


def _all_workers_up(config: Path) -> None:
    """Wait until every worker has published on the daemon's board (all are serving)."""
    deadline = time.monotonic() + 20
    while True:
        done = _cli(config, "status", "--json", check=False)
        if done.returncode == 0 and all(w["alive"] for w in json.loads(done.stdout)["workers"]):
            return
        assert time.monotonic() < deadline, "the workers never all came up"
        time.sleep(0.2)


def _workers_of(supervisor: subprocess.Popen[bytes]) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    out = subprocess.run(
        ["pgrep", "-P", str(supervisor.pid)], capture_output=True, text=True, check=False
    ).stdout
    workers = []
    for pid in out.split():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if b"resource_tracker" not in command:
            workers.append(int(pid))
    return workers


@pytest.mark.parametrize("count", [2, 3])
def test_a_per_minute_key_limit_holds_for_the_daemon(tmp_path: Path, count: int) -> None:
    """A key allowed 10 requests a minute gets exactly 10 of 40, spread over the workers (each
    worker alone would have admitted 10: 10 × workers in all before the daemon's table)."""
    backend_port, port = free_port(), free_port()
    limits = "per_key: {enabled: true, requests_per_minute: 10, burst_size: 10}\n"
    config = _config(tmp_path, port, backend_port, limits, workers=count)
    with (
        running(
            ["mock-backend", "--port", str(backend_port), "--tokens", "1"],
            f"http://127.0.0.1:{backend_port}/health",
        ),
        running(["serve", "--config", str(config)], f"http://127.0.0.1:{port}/health") as daemon,
    ):
        workers = _workers_of(daemon)
        assert len(workers) == count
        _all_workers_up(config)  # all serve: each alone would admit the whole 10
        headers = {"Authorization": "Bearer sk-one"}
        statuses = asyncio.run(_one_per_connection(port, 40, headers))
        assert statuses == {"200": 10, "429": 30}
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
    assert not list((tmp_path / "run").glob("limits-*.table"))  # the supervisor removed it


def test_concurrency_slots_hold_for_the_daemon_and_a_killed_worker_gives_them_back(
    tmp_path: Path,
) -> None:
    """``max_concurrent: 2`` across both workers: of 8 slow requests at once 2 run. A worker
    killed with -9 while holding slots gives them back when its replacement starts."""
    backend_port, port = free_port(), free_port()
    limits = "per_key: {enabled: true, max_concurrent: 2}\n"
    config = _config(tmp_path, port, backend_port, limits)
    headers = {"Authorization": "Bearer sk-one"}
    with (
        running(
            ["mock-backend", "--port", str(backend_port), "--tokens", "20", "--itl", "0.1"],
            f"http://127.0.0.1:{backend_port}/health",
        ),
        running(["serve", "--config", str(config)], f"http://127.0.0.1:{port}/health") as daemon,
    ):
        _all_workers_up(config)
        statuses = asyncio.run(_one_per_connection(port, 8, headers))
        assert statuses == {"200": 2, "429": 6}

        async def hold_then_kill() -> Counter[str]:
            slow = asyncio.gather(
                *(_one_per_connection(port, 1, headers) for _ in range(2)),
                return_exceptions=True,
            )
            await asyncio.sleep(0.8)  # both slots taken, generations running
            for pid in _workers_of(daemon):
                os.kill(pid, signal.SIGKILL)
            await slow
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                await asyncio.sleep(0.3)
                if len(_workers_of(daemon)) == 2:
                    try:
                        got = await _one_per_connection(port, 2, headers)
                    except aiohttp.ClientError:
                        continue
                    if got.get("200") == 2:
                        return got
            raise AssertionError("the slots of the killed workers never came back")

        assert asyncio.run(hold_then_kill()) == {"200": 2}
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0


def test_max_in_flight_holds_for_the_daemon_and_waiters_keep_their_order(
    tmp_path: Path,
) -> None:
    """A backend capped at ``max_in_flight: 1`` behind 2 workers never runs 2 requests at once
    (the mock's own peak), and requests that arrive one after another on connections of their
    own (so both workers queue some) are served in arrival order."""
    backend_port, port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            listen: "127.0.0.1:{port}"
            server: {{workers: 2}}
            backends:
              - {{url: "http://127.0.0.1:{backend_port}", models: [mock-model], max_in_flight: 1}}
            health_check: {{enabled: false}}
            admin: {{socket: run/admin.sock}}
            """
        )
    )
    backend_url = f"http://127.0.0.1:{backend_port}"
    with (
        running(
            ["mock-backend", "--port", str(backend_port), "--tokens", "4", "--itl", "0.05"],
            f"{backend_url}/health",
        ),
        running(["serve", "--config", str(config)], f"http://127.0.0.1:{port}/health") as daemon,
    ):
        _all_workers_up(config)

        async def run() -> tuple[list[int], dict[str, int]]:
            finished: list[int] = []

            async def one(index: int) -> None:
                await asyncio.sleep(index * 0.04)  # arrival order: 0, 1, 2, ...
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(URL.format(port=port), json=BODY) as response,
                ):
                    await response.read()
                    assert response.status == 200
                    finished.append(index)

            # Warm both workers first (a worker's first request pays for lazy setup, which
            # would reorder arrivals 40 ms apart before the gateway sees them).
            for _ in range(8):
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(URL.format(port=port), json=BODY) as response,
                ):
                    assert response.status == 200
            finished.clear()
            async with aiohttp.ClientSession() as session:
                await session.post(f"{backend_url}/mock/reset")
                await asyncio.gather(*(one(index) for index in range(8)))
                async with session.get(f"{backend_url}/mock/stats") as response:
                    stats: dict[str, int] = await response.json()
            return finished, stats

        finished, stats = asyncio.run(run())
        assert stats["peak_in_flight"] == 1
        assert stats["requests"] == 8
        assert finished == sorted(finished)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0


def test_a_revoked_key_is_refused_by_every_worker_on_the_next_request(tmp_path: Path) -> None:
    """A key revoked through the admin socket (served by one worker) is refused by both workers
    from the very next request, not after the other worker's next poll of the key store."""
    backend_port, port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            listen: "127.0.0.1:{port}"
            server: {{workers: 2}}
            backends: [{{url: "http://127.0.0.1:{backend_port}", models: [mock-model]}}]
            health_check: {{enabled: false}}
            admin: {{socket: run/admin.sock}}
            auth:
              enabled: true
              storage: builtin
              builtin_db: run/keys.db
              builtin_refresh_interval: 30s
            """
        )
    )

    with (
        running(
            ["mock-backend", "--port", str(backend_port), "--tokens", "1"],
            f"http://127.0.0.1:{backend_port}/health",
        ),
        running(["serve", "--config", str(config)], f"http://127.0.0.1:{port}/health") as daemon,
    ):
        _admin_socket(tmp_path)
        _all_workers_up(config)
        added = _cli_json(config, "keys", "add", "--name", "leaver")
        secret = added["secret"]
        headers = {"Authorization": f"Bearer {secret}"}
        assert asyncio.run(_one_per_connection(port, 16, headers)) == {"200": 16}
        _cli(config, "keys", "revoke", "leaver", "--yes")
        assert asyncio.run(_one_per_connection(port, 16, headers)) == {"401": 16}
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0


def test_status_and_reload_speak_for_every_worker(tmp_path: Path) -> None:
    """``status`` and ``backends status`` count the streams open in both workers, ``status``
    lists each worker; ``reload`` answers once both have reloaded."""
    backend_port, port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    text = textwrap.dedent(
        f"""\
        listen: "127.0.0.1:{port}"
        server: {{workers: 2, watch_config: false}}
        backends: [{{url: "http://127.0.0.1:{backend_port}", models: [mock-model], weight: 1}}]
        health_check: {{enabled: false}}
        admin: {{socket: run/admin.sock}}
        """
    )
    config.write_text(text)

    with (
        running(
            ["mock-backend", "--port", str(backend_port), "--tokens", "60", "--itl", "0.1"],
            f"http://127.0.0.1:{backend_port}/health",
        ),
        running(["serve", "--config", str(config)], f"http://127.0.0.1:{port}/health") as daemon,
    ):

        async def streams_open() -> dict[str, Any]:
            body = {**BODY, "stream": True}

            async def one() -> None:
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(URL.format(port=port), json=body) as response,
                ):
                    await response.read()

            slow = [asyncio.create_task(one()) for _ in range(12)]
            await asyncio.sleep(1.0)  # every stream open, 5 s from their end
            # Both at once: one CLI start takes about a second on a busy 2-core machine.
            status, backends = await asyncio.gather(
                asyncio.to_thread(_cli_json, config, "status"),
                asyncio.to_thread(_cli_json, config, "backends", "status"),
            )
            await asyncio.gather(*slow)
            return {**status, "backends": backends["backends"]}

        _admin_socket(tmp_path)
        deadline = time.monotonic() + 20
        while not all(w["alive"] for w in _cli_json(config, "status")["workers"]):  # both listening
            assert time.monotonic() < deadline, "a worker never came up"
            time.sleep(0.2)
        status = asyncio.run(streams_open())
        assert status["in_flight"] == 12
        assert [b["in_flight"] for b in status["backends"]] == [12]
        workers = status["workers"]
        assert [w["index"] for w in workers] == [0, 1]
        assert all(w["alive"] for w in workers)
        assert sum(w["in_flight"] for w in workers) == 12
        assert all(w["in_flight"] > 0 for w in workers)  # both served some

        config.write_text(text.replace("weight: 1", "weight: 2"))
        reloaded = _cli_json(config, "reload")
        assert reloaded["ok"]
        assert [(w["index"], w["reloaded"], w["ok"]) for w in reloaded["workers"]] == [
            (1, True, True)
        ]
        after = _cli_json(config, "status")
        assert [w["config_version"] for w in after["workers"]] == [2, 2]
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0


def test_a_drain_applies_in_every_worker(tmp_path: Path) -> None:
    """``backends drain`` through the admin socket (one worker): no worker sends the drained
    backend a new request from then on; ``undrain`` brings it back in both."""
    first_port, second_port, port = free_port(), free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            listen: "127.0.0.1:{port}"
            server: {{workers: 2}}
            backends:
              - {{url: "http://127.0.0.1:{first_port}", name: first, models: [mock-model]}}
              - {{url: "http://127.0.0.1:{second_port}", name: second, models: [mock-model]}}
            health_check: {{enabled: false}}
            admin: {{socket: run/admin.sock}}
            """
        )
    )

    async def served_by(count: int) -> Counter[str]:
        seen: Counter[str] = Counter()

        async def one() -> None:
            async with (
                aiohttp.ClientSession() as session,
                session.post(URL.format(port=port), json=BODY) as response,
            ):
                await response.read()
                seen[response.headers["x-mock-backend"]] += 1

        await asyncio.gather(*(one() for _ in range(count)))
        return seen

    with (
        running(
            ["mock-backend", "--port", str(first_port), "--tokens", "1", "--name", "first"],
            f"http://127.0.0.1:{first_port}/health",
        ),
        running(
            ["mock-backend", "--port", str(second_port), "--tokens", "1", "--name", "second"],
            f"http://127.0.0.1:{second_port}/health",
        ),
        running(["serve", "--config", str(config)], f"http://127.0.0.1:{port}/health") as daemon,
    ):
        _admin_socket(tmp_path)
        _all_workers_up(config)
        assert set(asyncio.run(served_by(16))) == {"first", "second"}
        _cli(config, "backends", "drain", "first")
        assert asyncio.run(served_by(24)) == {"second": 24}
        _cli(config, "backends", "undrain", "first")
        assert set(asyncio.run(served_by(16))) == {"first", "second"}
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0


def test_usage_tail_shows_the_requests_of_every_worker(tmp_path: Path) -> None:
    """The admin API's live usage stream (``llmproxy usage tail``) carries a record for each
    of 16 requests spread over both workers, not only those of the worker serving the socket."""
    backend_port, port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            listen: "127.0.0.1:{port}"
            server: {{workers: 2}}
            backends: [{{url: "http://127.0.0.1:{backend_port}", models: [mock-model]}}]
            health_check: {{enabled: false}}
            admin: {{socket: run/admin.sock}}
            usage: {{database: run/usage.db}}
            """
        )
    )
    with (
        running(
            ["mock-backend", "--port", str(backend_port), "--tokens", "3"],
            f"http://127.0.0.1:{backend_port}/health",
        ),
        running(["serve", "--config", str(config)], f"http://127.0.0.1:{port}/health") as daemon,
    ):
        socket = _admin_socket(tmp_path)
        _all_workers_up(config)

        async def tail_while_serving() -> list[dict[str, Any]]:
            connector = aiohttp.UnixConnector(path=str(socket))
            seen: list[dict[str, Any]] = []
            async with (
                aiohttp.ClientSession(connector=connector) as admin,
                admin.get("http://daemon/usage/stream") as stream,
            ):
                assert stream.status == 200
                statuses = await _one_per_connection(port, 16, {})
                assert statuses == {"200": 16}
                async with asyncio.timeout(10):
                    while len(seen) < 16:
                        line = await stream.content.readline()
                        if line.strip():
                            seen.append(json.loads(line))
            return seen

        records = asyncio.run(tail_while_serving())
        assert len(records) == 16
        assert {r["completion_tokens"] for r in records} == {3}
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0


def test_prefix_affinity_sends_a_tenant_to_one_replica_from_every_worker(
    tmp_path: Path,
) -> None:
    """8 tenants, requests on connections of their own (so both workers route each tenant):
    under ``prefix_affinity`` each tenant's requests all land on one replica, and the tenants
    are spread two per replica — the daemon's homes, not each worker's."""
    ports = [free_port() for _ in range(4)]
    port = free_port()
    config = tmp_path / "gateway.yaml"
    backends = "".join(
        f'  - {{url: "http://127.0.0.1:{p}", name: gpu-{n}, models: [mock-model]}}\n'
        for n, p in enumerate(ports)
    )
    config.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        "server: {workers: 2}\n"
        f"backends:\n{backends}"
        "health_check: {enabled: false}\n"
        "admin: {socket: run/admin.sock}\n"
        "routing: {load_balance_strategy: prefix_affinity}\n"
    )
    rng = random.Random(7)
    prompts = [
        f"Tenant {t}: "
        + " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(600))
        for t in range(8)
    ]

    async def run() -> dict[int, Counter[str]]:
        served: dict[int, Counter[str]] = {t: Counter() for t in range(8)}

        async def one(tenant: int) -> None:
            body = {
                "model": "mock-model",
                "messages": [
                    {"role": "system", "content": prompts[tenant]},
                    {"role": "user", "content": "hi"},
                ],
            }
            async with (
                aiohttp.ClientSession() as session,
                session.post(URL.format(port=port), json=body) as response,
            ):
                await response.read()
                served[tenant][response.headers["x-mock-backend"]] += 1

        order = [t for t in range(8) for _ in range(6)]
        random.Random(8).shuffle(order)
        for start in range(0, len(order), 4):  # a few at a time: no replica is over its bound
            await asyncio.gather(*(one(t) for t in order[start : start + 4]))
        return served

    with contextlib.ExitStack() as stack:
        for n, p in enumerate(ports):
            stack.enter_context(
                running(
                    ["mock-backend", "--port", str(p), "--tokens", "1", "--name", f"gpu-{n}"],
                    f"http://127.0.0.1:{p}/health",
                )
            )
        daemon = stack.enter_context(
            running(["serve", "--config", str(config)], f"http://127.0.0.1:{port}/health")
        )
        _admin_socket(tmp_path)
        _all_workers_up(config)
        served = asyncio.run(run())
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
    assert all(len(replicas) == 1 for replicas in served.values()), served
    homes = Counter(next(iter(replicas)) for replicas in served.values())
    assert sorted(homes.values()) == [2, 2, 2, 2]
