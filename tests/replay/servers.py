"""A mock backend that remembers what it was asked, and the CLI run beside it."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from aiohttp import web
from typer.testing import CliRunner, Result

from llmproxy.cli.main import app
from llmproxy.mock import MockBackend, MockSettings

CLEAN_ENV = {"LLMPROXY_KEY": None, "COLUMNS": "200", "LLMPROXY_CONFIG": None}
"""The operator's own settings must not leak into a test (None removes a variable)."""

Seen = tuple[str, str, str | None]
"""method, path, model of one API request."""


class RecordingMock(MockBackend):
    """The mock backend, noting (method, path, model) of every ``/v1`` call but the model list."""

    def __init__(self, settings: MockSettings | None = None) -> None:
        super().__init__(settings)
        self.seen: list[Seen] = []
        self.bodies: list[dict[str, Any]] = []

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path.startswith("/v1/") and request.path != "/v1/models":
            body = await request.read()  # cached: the endpoint reads it again
            decoded = json.loads(body) if body else {}
            self.bodies.append(decoded)
            self.seen.append((request.method, request.path, decoded.get("model")))
        return await super()._handle(request)

    async def __aenter__(self) -> RecordingMock:
        await self.start()
        return self


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def invoke(*args: str, env: dict[str, Any] | None = None) -> Result:
    """``llmproxy replay ARGS`` in-process; stdout and stderr apart; crashes re-raised."""
    result = CliRunner().invoke(app, ["replay", *args], env={**CLEAN_ENV, **(env or {})})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


async def cli(*args: str, env: dict[str, Any] | None = None) -> Result:
    """:func:`invoke` in a worker thread, so servers on this test's loop keep answering."""
    return await asyncio.to_thread(invoke, *args, env=env)
