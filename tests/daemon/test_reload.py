"""Hot reload in process: real gateway, real mock backends, a config file edited on disk."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client import CollectorRegistry

from llmproxy.config.loader import load_config
from llmproxy.daemon.reload import Reloader
from llmproxy.daemon.runtime import Runtime, RuntimeState
from llmproxy.metrics import GatewayMetrics
from llmproxy.mock import MockBackend
from llmproxy.usage.sink import UsageSink
from tests.harness import RunningGateway, mock_backend, serve_state

CHAT = "/v1/chat/completions"
KEY = "sk-reload-test-key"
LUA = 'return {allow = true, metadata = {generation = "%s"}}'


def _write(path: Path, data: dict[str, Any]) -> None:
    # Written to a temporary name and renamed over the file, as editors do.
    temporary = path.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump(data), encoding="utf-8")
    temporary.replace(path)


def _data(*mocks: MockBackend, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "backends": [{"url": mock.url, "name": mock.settings.name} for mock in mocks],
        "health_check": {"enabled": False},
        "server": {"watch_config": False},
        "admin": {"enabled": False},
        "auth": {
            "enabled": True,
            "pipeline": [
                {
                    "name": "static",
                    "type": "static",
                    "keys": [{"key": KEY, "name": "tester"}],
                    "lua_script_file": "decide.lua",
                }
            ],
        },
        "usage": {"database": "usage.db"},
    }
    data.update(sections)
    return data


@contextlib.asynccontextmanager
async def _daemon(
    path: Path, data: dict[str, Any], lua: str = LUA % 1
) -> AsyncIterator[tuple[RunningGateway, Reloader, UsageSink]]:
    (path.parent / "decide.lua").write_text(lua, encoding="utf-8")
    _write(path, data)
    config = load_config(path)
    sink = UsageSink(config, path.parent)
    state = RuntimeState(
        Runtime(config, base_dir=path.parent), GatewayMetrics(CollectorRegistry()), sink
    )
    reloader = Reloader(state, path)
    async with serve_state(state) as running:
        try:
            yield running, reloader, sink
        finally:
            await reloader.stop()


async def _chat(
    session: aiohttp.ClientSession, url: str, **body: Any
) -> tuple[int, str, dict[str, Any]]:
    payload = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], **body}
    headers = {"Authorization": f"Bearer {KEY}"}
    async with session.post(url + CHAT, json=payload, headers=headers) as response:
        return response.status, response.headers.get("x-mock-backend", ""), await response.json()


async def test_a_backend_change_is_applied_by_the_next_request(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    async with (
        mock_backend(name="one") as one,
        mock_backend(name="two") as two,
        _daemon(path, _data(one)) as (gw, reloader, _sink),
        aiohttp.ClientSession() as session,
    ):
        assert (await _chat(session, gw.url))[:2] == (200, "one")
        before = gw.state.current
        _write(path, _data(two))
        outcome = await reloader.reload()
        assert outcome.ok, outcome.error
        assert outcome.changes == (
            f"backend removed: one ({one.url})",
            f"backend added: two ({two.url})",
        )
        assert outcome.config_version == 2
        assert gw.state.current is not before
        assert (await _chat(session, gw.url))[:2] == (200, "two")
        assert reloader.reload_counts().ok == 1
        assert gw.state.metrics.config_reloads.labels("success")._value.get() == 1


async def test_a_broken_config_is_refused_and_the_old_one_keeps_serving(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    async with (
        mock_backend(name="one") as one,
        _daemon(path, _data(one)) as (gw, reloader, _sink),
        aiohttp.ClientSession() as session,
    ):
        before = gw.state.current
        path.write_text(path.read_text() + "routing:\n  load_balance_strategy: fastest\n")
        outcome = await reloader.reload()
        assert not outcome.ok
        assert outcome.error is not None
        assert f"{path}:" in outcome.error
        assert "routing.load_balance_strategy" in outcome.error
        assert gw.state.current is before
        assert reloader.config_version() == 1
        assert (await _chat(session, gw.url))[:2] == (200, "one")
        counts = reloader.reload_counts()
        assert (counts.ok, counts.failed) == (0, 1)
        assert counts.last is outcome
        assert gw.state.metrics.config_reloads.labels("failure")._value.get() == 1


async def test_broken_lua_is_refused_and_fixed_lua_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    async with (
        mock_backend(name="one") as one,
        _daemon(path, _data(one)) as (gw, reloader, sink),
        aiohttp.ClientSession() as session,
    ):
        before = gw.state.current
        (tmp_path / "decide.lua").write_text("return {allow = ", encoding="utf-8")
        refused = await reloader.reload()
        assert not refused.ok
        assert refused.error is not None
        assert "decide.lua" in refused.error
        assert refused.changes == (f"file changed: {tmp_path / 'decide.lua'}",)
        assert gw.state.current is before
        (tmp_path / "decide.lua").write_text(LUA % 2, encoding="utf-8")
        applied = await reloader.reload()
        assert applied.ok, applied.error
        assert (await _chat(session, gw.url))[0] == 200
        records = await _records(sink, 1)
        assert records[0]["metadata"]["generation"] == "2"


async def test_a_listener_change_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    async with mock_backend(name="one") as one, _daemon(path, _data(one)) as (gw, reloader, _):
        _write(
            path,
            _data(
                one, listen="127.0.0.1:1", routing={"load_balance_strategy": "least_connections"}
            ),
        )
        outcome = await reloader.reload()
        assert not outcome.ok
        assert outcome.error is not None
        assert "need a restart" in outcome.error
        assert "listen address: 127.0.0.1:0 → 127.0.0.1:1" in outcome.error
        assert gw.state.current.config.routing.load_balance_strategy == "round_robin"


async def test_dry_run_reports_changes_and_swaps_nothing(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    async with mock_backend(name="one") as one, _daemon(path, _data(one)) as (gw, reloader, _):
        before = gw.state.current
        _write(path, _data(one, routing={"load_balance_strategy": "least_connections"}))
        outcome = await reloader.reload(dry_run=True)
        assert outcome.ok
        assert outcome.dry_run
        assert outcome.changes == (
            "routing.load_balance_strategy: 'round_robin' → 'least_connections'",
        )
        assert gw.state.current is before
        assert reloader.config_version() == 1
        assert reloader.reload_counts().last is None


async def test_an_unchanged_file_reloads_as_no_change(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    async with mock_backend(name="one") as one, _daemon(path, _data(one)) as (gw, reloader, _):
        before = gw.state.current
        outcome = await reloader.reload(trigger="SIGHUP")
        assert outcome.ok
        assert outcome.changes == ()
        assert gw.state.current is before


async def test_editing_the_file_reloads_it(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    async with (
        mock_backend(name="one") as one,
        mock_backend(name="two") as two,
        _daemon(path, _data(one)) as (gw, reloader, _sink),
        aiohttp.ClientSession() as session,
    ):
        reloader.watch()
        await asyncio.sleep(0.3)  # the watcher is running
        _write(path, _data(two))
        await _until(lambda: reloader.config_version() == 2)
        assert (await _chat(session, gw.url))[:2] == (200, "two")
        last = reloader.reload_counts().last
        assert last is not None
        assert last.trigger == "file change"
        (tmp_path / "decide.lua").write_text(LUA % 3, encoding="utf-8")
        await _until(lambda: reloader.config_version() == 3)


async def test_backend_health_and_memory_limits_survive_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    limits = {
        "enabled": True,
        "global": {"enabled": True, "requests_per_minute": 60, "burst_size": 3},
    }
    async with (
        mock_backend(name="one") as one,
        _daemon(path, _data(one, rate_limit=limits)) as (gw, reloader, _sink),
        aiohttp.ClientSession() as session,
    ):
        statuses = [(await _chat(session, gw.url))[0] for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        gw.state.current.backends[0].ejected_until = time.monotonic() + 60
        _write(
            path,
            _data(one, rate_limit=limits, routing={"load_balance_strategy": "least_connections"}),
        )
        outcome = await reloader.reload()
        assert outcome.ok, outcome.error
        # The bucket is still empty: a reload does not hand out a fresh burst.
        assert (await _chat(session, gw.url))[0] == 429
        assert gw.state.current.backends[0].ejected_until > time.monotonic() + 50


async def test_a_stream_started_before_a_reload_finishes_on_its_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    async with (
        mock_backend(name="slow", tokens=20, itl=0.02) as slow,
        mock_backend(name="two") as two,
        _daemon(path, _data(slow)) as (gw, reloader, sink),
        aiohttp.ClientSession() as session,
    ):
        old = gw.state.current
        headers = {"Authorization": f"Bearer {KEY}"}
        body = {
            "model": "mock-model",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        }
        async with session.post(gw.url + CHAT, json=body, headers=headers) as response:
            first = await response.content.readline()
            _write(path, _data(two))
            assert (await reloader.reload()).ok
            assert old.in_flight == 1  # retired, still serving this stream
            rest = await response.content.read()
        assert first.startswith(b"data: ")
        assert rest.rstrip().endswith(b"data: [DONE]")
        await _until(
            lambda: old.clients["slow"]._session is None or old.clients["slow"]._session.closed
        )
        records = await _records(sink, 1)
        assert records[0]["backend"] == "slow"
        assert records[0]["completion_tokens"] == 20


async def test_200_streams_survive_10_reloads(tmp_path: Path) -> None:
    """Backends, limits and Lua change ten times under 200 concurrent streams: none is dropped,
    every one is billed once, with the generation of the snapshot it started on.
    """
    path = tmp_path / "config.yaml"
    streams = 200
    async with (
        mock_backend(name="a", tokens=40, itl=0.025) as a,
        mock_backend(name="b", tokens=40, itl=0.025) as b,
    ):
        layouts = [(a,), (b,), (a, b)]

        def generation(n: int) -> dict[str, Any]:
            return _data(
                *layouts[n % 3],
                rate_limit={
                    "enabled": True,
                    "global": {"enabled": True, "requests_per_second": 1000 + n},
                },
                routing={"load_balance_strategy": ["round_robin", "least_connections"][n % 2]},
            )

        async with _daemon(path, generation(0)) as (gw, reloader, sink):
            connector = aiohttp.TCPConnector(limit=streams)
            async with aiohttp.ClientSession(connector=connector) as session:
                tasks: list[asyncio.Task[tuple[int, int, bool]]] = []
                outcomes = []
                for n in range(1, 11):
                    # 20 more streams start on each generation; all 200 overlap (each lasts 1 s).
                    tasks += [asyncio.create_task(_stream(session, gw.url)) for _ in range(20)]
                    await asyncio.sleep(0.08)
                    (tmp_path / "decide.lua").write_text(LUA % (n + 1), encoding="utf-8")
                    _write(path, generation(n))
                    outcomes.append(await reloader.reload())
                results = await asyncio.gather(*tasks)
            assert all(outcome.ok for outcome in outcomes), [o.error for o in outcomes]
            assert reloader.config_version() == 11
            assert results == [(200, 40, True)] * streams
            records = await _records(sink, streams)
    assert len({record["request_id"] for record in records}) == streams
    assert {record["completion_tokens"] for record in records} == {40}
    generations = {record["metadata"]["generation"] for record in records}
    assert len(generations) > 1  # the streams really started on different snapshots


async def _stream(session: aiohttp.ClientSession, url: str) -> tuple[int, int, bool]:
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    tokens, done = 0, False
    async with session.post(url + CHAT, json=body, headers=headers) as response:
        async for line in response.content:
            if line.startswith(b"data: [DONE]"):
                done = True
            elif line.startswith(b"data: "):
                event = json.loads(line[6:])
                if event.get("choices") and event["choices"][0]["delta"].get("content"):
                    tokens += 1
        return response.status, tokens, done


async def _records(sink: UsageSink, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        records = await sink.store.recent(count + 10)
        if len(records) >= count or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert len(records) == count
    return [json.loads(record.to_json()) for record in records]


async def _until(condition: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_a_configmap_style_symlink_swap_is_reloaded(tmp_path: Path) -> None:
    """Kubernetes mounts config.yaml -> ..data/config.yaml and swaps `..data` on an update;
    the daemon follows the link's directory, not the one the link pointed at first."""
    mount = tmp_path / "mount"
    mount.mkdir()

    def publish(version: str, data: dict[str, Any]) -> None:
        folder = mount / f"..{version}"
        folder.mkdir()
        (folder / "config.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
        (folder / "decide.lua").write_text(LUA % 1, encoding="utf-8")
        link = mount / "..data_tmp"
        link.symlink_to(folder.name)
        link.replace(mount / "..data")

    async with mock_backend(name="one") as one, mock_backend(name="two") as two:
        publish("v1", _data(one))
        (mount / "config.yaml").symlink_to("..data/config.yaml")
        (mount / "decide.lua").symlink_to("..data/decide.lua")
        path = mount / "config.yaml"
        config = load_config(path)
        state = RuntimeState(Runtime(config, base_dir=mount), GatewayMetrics(CollectorRegistry()))
        reloader = Reloader(state, path)
        async with serve_state(state) as gw, aiohttp.ClientSession() as session:
            reloader.watch()
            try:
                await asyncio.sleep(0.3)
                publish("v2", _data(two))
                await _until(lambda: reloader.config_version() == 2)
                assert (await _chat(session, gw.url))[:2] == (200, "two")
                # And an explicit reload reads the new target, not the old directory's file.
                publish("v3", _data(one))
                outcome = await reloader.reload()
                assert outcome.ok, outcome.error
            finally:
                await reloader.stop()


async def test_a_file_providers_key_file_is_read_and_reloaded(tmp_path: Path) -> None:
    """`type: file` with `path`: keys live in their own file, edits to it are applied by a
    reload, and a broken key file is refused with its path."""
    path = tmp_path / "config.yaml"
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump([{"key": "sk-file-one", "name": "one"}]), encoding="utf-8")
    data = _data(
        auth={"enabled": True, "pipeline": [{"name": "f", "type": "file", "path": "keys.yaml"}]}
    )

    async def status(session: aiohttp.ClientSession, url: str, key: str) -> int:
        body = {"model": "mock-model", "messages": []}
        async with session.post(
            url + CHAT, json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response:
            await response.read()
            return response.status

    async with (
        mock_backend(name="one") as one,
        _daemon(path, {**data, "backends": [{"url": one.url, "name": "one"}]}) as (gw, reloader, _),
        aiohttp.ClientSession() as session,
    ):
        assert await status(session, gw.url, "sk-file-one") == 200
        assert await status(session, gw.url, "sk-file-two") == 401
        keys.write_text(yaml.safe_dump({"api_keys": [{"key": "sk-file-two"}]}), encoding="utf-8")
        outcome = await reloader.reload()
        assert outcome.ok, outcome.error
        assert outcome.changes == (f"file changed: {keys}",)
        assert await status(session, gw.url, "sk-file-one") == 401
        assert await status(session, gw.url, "sk-file-two") == 200
        keys.write_text("- {key: sk-x, status: [not, a, status]}\n", encoding="utf-8")
        refused = await reloader.reload()
        assert not refused.ok
        assert refused.error is not None
        assert str(keys) in refused.error
        assert "entry 1" in refused.error
        assert await status(session, gw.url, "sk-file-two") == 200


async def test_a_reload_keeps_the_slots_and_the_queue(tmp_path: Path) -> None:
    """With max_in_flight 1, one request streaming and two waiting: a reload in between does not
    hand out a second slot (the backend is the same object, its in-flight count too), the
    waiters keep their order in the process's queue, and a reload that turns health probes off
    clears a probe verdict that would otherwise keep the backend out."""
    path = tmp_path / "config.yaml"
    limited = {"max_in_flight": 1}
    async with (
        mock_backend(name="gpu", tokens=15, itl=0.02) as gpu,
        _daemon(path, _data(gpu)) as (gw, reloader, _sink),
        aiohttp.ClientSession() as session,
    ):
        data = _data(gpu)
        data["backends"][0].update(limited)
        _write(path, data)
        assert (await reloader.reload()).ok
        backend = gw.state.current.backends[0]
        finished: list[str] = []

        async def stream(name: str) -> None:
            headers = {"Authorization": f"Bearer {KEY}"}
            body = {"model": "mock-model", "messages": [], "stream": True}
            async with session.post(gw.url + CHAT, json=body, headers=headers) as response:
                assert response.status == 200
                await response.read()
            finished.append(name)

        first = asyncio.create_task(stream("first"))
        await asyncio.sleep(0.1)
        waiting = [asyncio.create_task(stream(name)) for name in ("second", "third")]
        await asyncio.sleep(0.1)
        assert backend.in_flight == 1
        assert gw.state.current.admission.waiting == 2
        data["routing"] = {"load_balance_strategy": "least_connections"}
        _write(path, data)
        assert (await reloader.reload()).ok
        assert gw.state.current.backends[0] is backend  # the same live backend
        peak = 0
        while not all(task.done() for task in (first, *waiting)):
            peak = max(peak, backend.in_flight)
            await asyncio.sleep(0.005)
        assert peak == 1
        assert finished == ["first", "second", "third"]

        backend.probe_healthy = False  # a verdict from probes of an earlier config
        data["health_check"] = {"enabled": False}
        data["routing"] = {}
        _write(path, data)
        assert (await reloader.reload()).ok
        assert backend.probe_healthy
