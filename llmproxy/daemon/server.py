"""Run the gateway: uvicorn (uvloop + httptools) serving :class:`GatewayApp` on one runtime.

``serve --demo`` also starts the project's mock backend in the same process, so a fresh checkout
answers ``curl`` at once without any inference server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path
from typing import Any

import uvicorn

from llmproxy.config.model import (
    AuthConfig,
    BackendConfig,
    Config,
    HealthCheckConfig,
    UsageConfig,
)
from llmproxy.daemon.board import keep_publishing
from llmproxy.daemon.control import ReloadOutcome
from llmproxy.daemon.listen import parse_listen
from llmproxy.daemon.listener import ConnectionLimits, protocol
from llmproxy.daemon.memory import keep_trimming, tune_allocator
from llmproxy.daemon.reload import Reloader
from llmproxy.daemon.runtime import Runtime, RuntimeState
from llmproxy.daemon.tables import TablePaths, WorkerTables
from llmproxy.gateway.access_log import AccessLog
from llmproxy.gateway.app import GatewayApp
from llmproxy.metrics import GatewayMetrics
from llmproxy.record.recorder import Recorder
from llmproxy.routing.fleet import BackendFleet
from llmproxy.usage.sink import UsageSink

log = logging.getLogger("llmproxy.daemon")

DEMO_MODEL = "mock-model"

# After a second SIGTERM: how long cut requests may take to settle, and the outbox to be written.
_FORCED_EXIT_GRACE = 1.0


DEMO_KEY_STORE = "run/llmproxy-demo-keys.db"


def demo_config(listen: str, mock_url: str) -> Config:
    """The embedded default: a mock backend, keys in the builtin SQLite store, in-memory limits."""
    return Config(
        listen=listen,
        backends=(BackendConfig(url=mock_url, name="mock", models=(DEMO_MODEL,)),),
        health_check=HealthCheckConfig(interval=5.0),
        auth=AuthConfig(enabled=True, storage="builtin", builtin_db=DEMO_KEY_STORE),
        usage=UsageConfig(database="run/llmproxy-demo-usage.db"),
    )


def create_demo_key(base_dir: Path) -> str:
    """Add a fresh key named ``demo`` to the demo's key store and return it (shown once)."""
    from llmproxy.keystore import KeyStore

    store = KeyStore(base_dir / DEMO_KEY_STORE)
    store.open()
    try:
        secret, _record = store.add(name="demo", user_id="demo")
    finally:
        store.close()
    return secret


def with_listen(config: Config, listen: str) -> Config:
    """``config`` listening on ``listen`` instead of its own address."""
    return config.model_copy(
        update={"listen": listen, "server": config.server.model_copy(update={"listen": None})}
    )


def uvicorn_config(app: GatewayApp, config: Config) -> uvicorn.Config:
    """uvicorn settings from ``server.*``: the gateway's connection class (header and body
    timeouts, header size, connection cap), TLS, no access log on the hot path.

    ``proxy_headers`` is off: uvicorn would believe ``X-Forwarded-For`` from loopback; the
    gateway decides whom to believe itself (``server.trusted_proxies``).
    """
    host, port = parse_listen(config.listen_address)
    server = config.server
    tls = server.tls
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",
        http=protocol(ConnectionLimits.of(server)),
        ws="none",
        lifespan="on",
        proxy_headers=False,
        access_log=False,
        server_header=False,
        date_header=True,
        timeout_keep_alive=int(server.idle_timeout) or 5,
        timeout_graceful_shutdown=int(server.shutdown_timeout) or None,
        ssl_certfile=tls.cert_file if tls.enabled else None,
        ssl_keyfile=tls.key_file if tls.enabled else None,
        log_config=None,
    )


class GatewayServer(uvicorn.Server):
    """uvicorn's server with the gateway's signal rules.

    SIGTERM or SIGINT starts a graceful drain (stop accepting, let in-flight requests finish up to
    ``server.shutdown_timeout``) and the process then exits 0; a second signal exits at once.
    uvicorn's own handling re-raises the signal after draining, which makes a clean stop look like
    a crash to systemd and Kubernetes. SIGHUP reloads the config (when there is a reloader).
    """

    def __init__(
        self,
        config: uvicorn.Config,
        reloader: Reloader | None = None,
        state: RuntimeState | None = None,
    ) -> None:
        super().__init__(config)
        self.reloader = reloader
        self.state = state
        self._reloads: set[asyncio.Task[ReloadOutcome]] = set()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        try:
            yield
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(signum)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's drain; after a second signal, cut the requests but still bill them.

        uvicorn skips the application's shutdown when forced, which would drop the usage
        records of the very requests being cut. They are cancelled here instead (each settles
        as ``cancelled`` with what it streamed) and the records written to the outbox, within
        about a second.
        """
        await super().shutdown(sockets=sockets)
        if not self.force_exit:
            return
        tasks = list(self.server_state.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_FORCED_EXIT_GRACE)
        if self.state is not None:
            await self.state.flush(timeout=_FORCED_EXIT_GRACE)

    def _on_hangup(self) -> None:
        if self.reloader is None or self.should_exit:
            return
        log.info("SIGHUP: reloading the config")
        task = asyncio.get_running_loop().create_task(self.reloader.reload(trigger="SIGHUP"))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def _on_signal(self, signum: int) -> None:
        if self.should_exit:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            self.force_exit = True
        else:
            log.info("%s: draining in-flight requests", signal.Signals(signum).name)
            self.should_exit = True


async def serve(
    config: Config,
    base_dir: Path | None = None,
    sockets: list[socket.socket] | None = None,
    *,
    config_path: Path | None = None,
    admin: bool = True,
    reload_all: Callable[[], None] | None = None,
    listen: str | None = None,
    worker: int | None = None,
    tables: TablePaths | None = None,
) -> None:
    """Serve ``config`` until SIGINT/SIGTERM (on ``sockets`` when a supervisor bound them).

    ``base_dir`` anchors relative paths in the config (the config file's directory);
    ``config_path`` is the file reloads re-read (None: nothing to reload). ``admin`` opens the
    admin socket when the config enables it (one worker of several opens it); ``reload_all``
    tells the other workers when a reload asked of this one succeeded. ``listen`` overrides the
    config's listen address (``serve --listen``), in reloads too. ``worker`` is this process's
    index among several (``server.workers``): it records traffic to a file of its own, and
    shares limits, backend slots and key changes with the others through the daemon's
    ``tables`` (:mod:`llmproxy.daemon.tables`).
    """
    base_dir = base_dir or Path.cwd()
    if listen:
        config = with_listen(config, listen)
    tune_allocator()
    metrics = GatewayMetrics()  # the process-wide registry that /metrics serves
    shared = WorkerTables.attach(tables, worker or 0) if tables is not None else None
    state = RuntimeState(
        Runtime(
            config,
            base_dir=base_dir,
            fleet=BackendFleet(shared=shared.slots, homes=shared.homes)
            if shared is not None
            else None,
            daemon_limits=shared.limits if shared is not None else None,
            notices=shared.notices if shared is not None else None,
        ),
        metrics=metrics,
        # With several workers on one SQLite file, worker 0 alone delivers its outbox.
        usage=UsageSink(config, base_dir, deliver=not worker) if config.usage.enabled else None,
        access_log=AccessLog(config.logging.format) if config.logging.access_log else None,
        recorder=Recorder(metrics, worker=worker),
    )
    reloader = Reloader(
        state,
        config_path,
        after_reload=reload_all,
        adjust=(lambda loaded: with_listen(loaded, listen)) if listen else None,
    )
    server = GatewayServer(uvicorn_config(GatewayApp(state), config), reloader, state)
    admin_server = None
    if admin and config.admin.enabled:
        from llmproxy.daemon.admin_api import AdminServer

        # Bound before the listener: a second daemon on the same socket stops here, cleanly.
        admin_server = AdminServer(
            state, reloader, board=shared.board if shared is not None else None
        )
        await admin_server.start(config, base_dir)
    if config_path is not None and config.server.watch_config:
        reloader.watch()
    trimming = asyncio.get_running_loop().create_task(keep_trimming())
    publishing = None
    if shared is not None:
        publishing = asyncio.get_running_loop().create_task(
            keep_publishing(shared.board, state, reloader)
        )
    try:
        await server.serve(sockets=sockets)
    finally:
        trimming.cancel()
        if publishing is not None:
            publishing.cancel()
        await reloader.stop()
        if admin_server is not None:
            await admin_server.close()
        if shared is not None:
            shared.close()


async def serve_demo(listen: str, mock_port: int, base_dir: Path) -> None:
    """Start the built-in mock backend, then the gateway in front of it."""
    from llmproxy.mock import MockBackend, MockSettings

    mock = MockBackend(MockSettings(models=(DEMO_MODEL,), name="mock"))
    await mock.start("127.0.0.1", mock_port)
    try:
        await serve(demo_config(listen, mock.url), base_dir)
    finally:
        await mock.stop()


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        asyncio.run(coro)
    else:
        uvloop.run(coro)
