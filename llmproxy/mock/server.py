"""The mock backend process: routing, cancellation accounting, control endpoints, lifecycle.

Built on aiohttp's low-level ``web.Server`` with ``handler_cancellation=True``: when a client
disconnects, aiohttp cancels the handler task, and :meth:`MockBackend._serve_api` turns that (or a
write into the closed socket) into exactly one ``stats.cancellations``. That counter is how the
gateway's tests prove it closes the upstream request when its own client goes away.

Control endpoints (never counted in the stats): ``GET /mock/stats``, ``POST /mock/reset`` (zero the
counters), ``POST /mock/cache/flush`` (empty the prefix cache, so a benchmark phase starts cold),
``GET``/``POST /mock/settings`` (read or change knobs at run time) and ``/mock/echo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from llmproxy.mock._endpoints import (
    APIError,
    ConnectionDroppedError,
    drop_connection,
    echo,
    error_response,
    inject_fault,
    json_response,
)
from llmproxy.mock._routes import error_body_for, find_endpoint
from llmproxy.mock._state import BackendState, ResponseStore
from llmproxy.mock.gpu import Gpu
from llmproxy.mock.settings import MockSettings, with_header_overrides
from llmproxy.mock.stats import MockStats

if TYPE_CHECKING:
    from llmproxy.mock._tracing import MockTracing

_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MockBackend:
    """A fake vLLM OpenAI server on a real socket, for tests, the demo and the benchmark::

        async with MockBackend(MockSettings(itl=0.01)) as mock:   # binds 127.0.0.1, free port
            client = openai.AsyncOpenAI(base_url=mock.url + "/v1", api_key="x")
            ...
            assert mock.stats.cancellations == 0

    ``settings`` may be reassigned while it runs; each request reads it once, on arrival, except
    the GPU's shape (``slots``, ``prefix_cache_blocks``, ``block_chars``), which changes at once
    for every request, queued ones included.

    Besides OpenAI's API as vLLM serves it, it speaks Anthropic's Messages API (``/v1/messages``,
    :mod:`llmproxy.mock._messages`) and OpenAI's Responses API (``/v1/responses``, whose stored
    objects are in ``responses``: :mod:`llmproxy.mock._responses`).
    """

    def __init__(
        self,
        settings: MockSettings | None = None,
        *,
        shutdown_timeout: float = 0.5,
        otlp_endpoint: str | None = None,
    ):
        self.stats = MockStats()
        self.gpu = Gpu(self.stats)
        self.responses = ResponseStore()
        self._state = BackendState(self.gpu, self.responses)
        self.settings = settings or MockSettings()
        self.host = "127.0.0.1"
        self.port = 0
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.ServerRunner | None = None
        self._otlp_endpoint = otlp_endpoint
        """Export a SERVER span per ``/v1`` request there (OTLP/HTTP), as a traced vLLM does."""
        self._tracing: MockTracing | None = None

    @property
    def settings(self) -> MockSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: MockSettings) -> None:
        self._settings = settings
        self.gpu.configure(settings)

    @property
    def url(self) -> str:
        """``http://host:port`` without a trailing slash; add ``/v1`` for an OpenAI client."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port``; port 0 picks a free one, readable afterwards as ``.port``."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self.host, self.port = host, sock.getsockname()[1]
        if self._otlp_endpoint is not None and self._tracing is None:
            from llmproxy.mock._tracing import MockTracing

            self._tracing = MockTracing(self._otlp_endpoint, self.settings.name)
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=self._shutdown_timeout)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, backlog=1024).start()

    async def stop(self) -> None:
        """Stop listening, let running requests end, then cancel them (bounded: aiohttp waits
        ``shutdown_timeout`` for them to finish, then as long again for the cancelled ones)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._tracing is not None:
            tracing, self._tracing = self._tracing, None
            await asyncio.to_thread(tracing.shutdown)

    async def __aenter__(self) -> MockBackend:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith("/mock/"):
            return await self._control(request, path)
        settings = self.settings
        by_path = self.stats.by_path
        by_path[path] = by_path.get(path, 0) + 1
        if path.startswith("/v1/"):
            if self._tracing is not None:
                return await self._tracing.traced(
                    request, lambda: self._serve_api(request, path, settings)
                )
            return await self._serve_api(request, path, settings)
        if path == "/metrics":
            text = self.stats.render_metrics(settings.models, settings.slots)
            headers = {"Content-Type": _METRICS_TYPE, "x-mock-backend": settings.name}
            return web.Response(text=text, headers=headers)
        if path != "/health":
            return error_response(404, f"Not Found: {request.method} {path}", settings)
        # Health answers with the faults too: a backend configured to fail looks down to probes.
        try:
            settings = with_header_overrides(settings, request.headers)
        except ValueError as exc:
            return error_response(400, str(exc), settings)
        try:
            faulty = await inject_fault(request, settings)
            if settings.fault == "reset_mid":
                raise drop_connection(request)
        except ConnectionDroppedError:
            return web.Response()  # aiohttp's write into the closed socket fails quietly
        return faulty or web.Response(headers={"x-mock-backend": settings.name})

    async def _serve_api(
        self, request: web.BaseRequest, path: str, settings: MockSettings
    ) -> web.StreamResponse:
        """Answer one ``/v1`` call and account for how it ended: completed, cancelled or dropped."""
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        response: web.StreamResponse | None = None
        try:
            response = await self._answer(request, path, settings)
            # Sending the body here, not in aiohttp after we return, lets a disconnect during the
            # send count as a cancellation and a finished send count as completed.
            await response.prepare(request)
            await response.write_eof()
        except ConnectionDroppedError:
            return web.Response()
        except (asyncio.CancelledError, ConnectionError) as exc:
            stats.cancellations += 1
            if isinstance(exc, asyncio.CancelledError):
                raise
            return response or web.Response()  # ConnectionError: aiohttp closes it quietly
        finally:
            stats.in_flight -= 1
        stats.completed += 1
        return response

    async def _answer(
        self, request: web.BaseRequest, path: str, settings: MockSettings
    ) -> web.StreamResponse:
        errors = error_body_for(path)
        key = settings.api_key
        if key is not None and not _authorized(request, key):
            return error_response(401, "Incorrect API key provided.", settings, errors)
        endpoint = find_endpoint(request.method, path)
        if endpoint is None:
            return error_response(404, f"Not Found: {request.method} {path}", settings, errors)
        try:
            settings = with_header_overrides(settings, request.headers)
        except ValueError as exc:
            return error_response(400, str(exc), settings, errors)
        try:
            faulty = await inject_fault(request, settings, errors)
            return faulty or await endpoint(request, settings, self._state)
        except APIError as exc:
            if exc.body is not None:
                return json_response(exc.status, exc.body, settings)
            return error_response(exc.status, exc.message, settings, errors)

    async def _control(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        """``/mock/*``: inspect and steer the mock from a test; never counted, faulted or gated."""
        settings, method = self.settings, request.method
        if path == "/mock/echo":
            return await echo(request, settings, self._state)
        if path == "/mock/stats" and method == "GET":
            return _json(self.stats.snapshot(), settings)
        if path == "/mock/reset" and method == "POST":
            self.stats.reset()
            return _json(self.stats.snapshot(), settings)
        if path == "/mock/cache/flush" and method == "POST":
            self.gpu.cache.flush()
            return _json({"prefix_cache_blocks_used": len(self.gpu.cache)}, settings)
        if path == "/mock/settings" and method == "GET":
            return _json(settings.as_json(), settings)
        if path == "/mock/settings" and method == "POST":
            try:
                changes = msgspec.json.decode(await request.read(), type=dict[str, Any])
                self.settings = settings.updated(changes)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                return error_response(400, f"/mock/settings: {exc}", settings)
            return _json(self.settings.as_json(), self.settings)
        return error_response(404, f"Not Found: {method} {path}", settings)


def _authorized(request: web.BaseRequest, key: str) -> bool:
    """The key as OpenAI clients send it (``Authorization: Bearer``) or Anthropic's do
    (``x-api-key``)."""
    headers = request.headers
    return headers.get("Authorization") == f"Bearer {key}" or headers.get("x-api-key") == key


def _json(data: Any, settings: MockSettings) -> web.Response:
    return json_response(200, msgspec.json.encode(data), settings)


def serve_forever(
    settings: MockSettings,
    host: str = "127.0.0.1",
    port: int = 9001,
    otlp_endpoint: str | None = None,
) -> None:
    """Run a mock backend in the foreground until SIGINT or SIGTERM (``llmproxy mock-backend``).

    Uses uvloop when it is installed, like the gateway, so a benchmark compares like with like.
    """
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory) as run:
        run.run(_serve(settings, host, port, otlp_endpoint))


async def _serve(
    settings: MockSettings, host: str, port: int, otlp_endpoint: str | None = None
) -> None:
    backend = MockBackend(settings, otlp_endpoint=otlp_endpoint)
    await backend.start(host, port)
    models = ",".join(settings.models)
    print(f"mock backend {settings.name!r} serving {models} on {backend.url}", file=sys.stderr)
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await backend.stop()
