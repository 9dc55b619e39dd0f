"""Start real servers on loopback for end-to-end tests: mock backends and the gateway itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from llmproxy.config.model import Config, ServerConfig
from llmproxy.daemon.runtime import Runtime, RuntimeState
from llmproxy.daemon.server import uvicorn_config
from llmproxy.gateway.app import GatewayApp
from llmproxy.mock import MockBackend, MockSettings


@dataclass
class RunningGateway:
    """A gateway serving on 127.0.0.1 in this event loop."""

    url: str
    state: RuntimeState
    server: uvicorn.Server

    @property
    def runtime(self) -> Runtime:
        return self.state.current


ECHO_PROXY_PATHS = (*ServerConfig().proxy_paths, "/v1/echo")
"""The default forwarded paths plus the mock's ``/v1/echo`` (it answers with what it got)."""


def make_config(backends: list[dict[str, Any]], **sections: Any) -> Config:
    """A config for tests: given backends, health checks off unless asked, fast retries, and
    the mock's ``/v1/echo`` forwarded."""
    data: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "server": {"proxy_paths": ECHO_PROXY_PATHS},
        "backends": backends,
        "health_check": {"enabled": False},
        "routing": {"retry": {"initial_wait": "1ms", "max_wait": "5ms"}},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Config.model_validate(data)


@contextlib.asynccontextmanager
async def gateway(config: Config) -> AsyncIterator[RunningGateway]:
    """Serve ``config`` with the real ASGI server until the block ends."""
    async with serve_state(RuntimeState(Runtime(config))) as running:
        yield running


@contextlib.asynccontextmanager
async def serve_state(state: RuntimeState) -> AsyncIterator[RunningGateway]:
    """Serve an already built runtime state (own metrics registry, usage sink...)."""
    config = state.current.config
    server = uvicorn.Server(uvicorn_config(GatewayApp(state), config))
    server.config.timeout_graceful_shutdown = 2
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningGateway(f"http://127.0.0.1:{port}", state, server)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def mock_backend(**settings: Any) -> AsyncIterator[MockBackend]:
    """A mock backend on a free loopback port."""
    backend = MockBackend(MockSettings(**settings))
    await backend.start("127.0.0.1", 0)
    try:
        yield backend
    finally:
        await backend.stop()
