"""The daemon's admin API (``docs/admin-api.md``): what the ``llmproxy`` CLI talks to.

:func:`admin_app` builds the aiohttp application; :class:`AdminServer` serves it on the owner-only
Unix socket (``admin.socket``) and, when ``admin.listen`` is set, on a TCP listener that requires
``Authorization: Bearer <admin.token>``. It runs on the gateway's event loop, beside the request
path, and reads the same :class:`RuntimeState`: every request takes ``state.current`` afresh, so
after a reload the API sees the new backends and key store at once.

Who may call it: on the Unix socket, a peer running as the daemon's own uid (``SO_PEERCRED``; the
socket file is 0600 as well); on TCP, whoever presents the token. Both are checked before routing,
so an unauthorised caller learns nothing, not even which paths exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from llmproxy import __version__
from llmproxy.config.model import Config
from llmproxy.daemon.admin_http import (
    AdminError,
    error_response,
    invalid,
    json_object,
    json_response,
)
from llmproxy.daemon.admin_keys import KeysApi
from llmproxy.daemon.admin_socket import admin_socket_path, bind_admin_socket, peer_uid
from llmproxy.daemon.admin_teams import TeamsApi
from llmproxy.daemon.admin_usage import UsageApi
from llmproxy.daemon.board import WorkerBoard
from llmproxy.daemon.control import DaemonControl
from llmproxy.daemon.listen import parse_listen
from llmproxy.daemon.runtime import Runtime, RuntimeState
from llmproxy.routing import Backend

log = logging.getLogger("llmproxy.admin")

SHUTDOWN_TIMEOUT: Final = 2.0
"""Longest wait in :meth:`AdminServer.close` for admin requests in progress."""


RELOAD_WAIT = 10.0
"""Seconds a reload through the admin API waits for the other workers to have reloaded."""


def admin_app(
    state: RuntimeState,
    control: DaemonControl,
    *,
    token: str | None = None,
    owner_uid: int | None = None,
    board: WorkerBoard | None = None,
) -> web.Application:
    """The admin API over ``state`` and ``control`` (and, with several workers, the ``board``
    every worker publishes its numbers on).

    ``token`` is what a request arriving over TCP must present (None refuses every TCP request);
    ``owner_uid`` is the only uid let in over a Unix socket (default: this process's).
    """
    closing = asyncio.Event()
    keys = KeysApi(state)
    teams = TeamsApi(state)
    usage = UsageApi(state, closing, every_worker=board is not None)
    daemon = _DaemonApi(state, control, board)
    app = web.Application(
        middlewares=[_errors, _guard(token, os.getuid() if owner_uid is None else owner_uid)]
    )
    daemon.register(app.router)
    keys.register(app.router)
    teams.register(app.router)
    usage.register(app.router)

    async def stop_streams(_app: web.Application) -> None:
        closing.set()

    async def close_stores(_app: web.Application) -> None:
        await keys.close()

    app.on_shutdown.append(stop_streams)
    app.on_cleanup.append(close_stores)
    return app


# Middlewares -------------------------------------------------------------------------------


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as the contract's JSON error body, including aiohttp's own 404/405/413."""
    try:
        return await handler(request)
    except AdminError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    except Exception:
        log.exception("admin API: %s %s failed", request.method, request.path)
        return error_response(500, "internal error; see the daemon's log", "internal_error")


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        return error_response(404, f"no such admin endpoint: {request.path}", "unknown_path")
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return error_response(
            405,
            f"{request.method} is not allowed on {request.path} (allowed: {allowed})",
            "method_not_allowed",
            headers={"Allow": allowed},
        )
    if exc.status == 413:
        return error_response(413, "request body too large", "body_too_large")
    return error_response(exc.status, exc.reason, "http_error")


def _guard(token: str | None, owner_uid: int) -> Middleware:
    """Let in a Unix peer of ``owner_uid``, or a TCP client presenting ``token``."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        sock: Any = None if transport is None else transport.get_extra_info("socket")
        if sock is None:
            raise AdminError(403, "the connection is gone", "forbidden")
        if sock.family == socket.AF_UNIX:
            _check_peer(sock, owner_uid)
        else:
            _check_token(request, token)
        return await handler(request)

    return guard


def _check_peer(sock: Any, owner_uid: int) -> None:
    try:
        uid = peer_uid(sock)
    except OSError as exc:
        raise AdminError(403, f"cannot read the peer's credentials: {exc}", "forbidden") from None
    if uid is not None and uid != owner_uid:
        raise AdminError(
            403,
            f"uid {uid} may not use this admin socket: only the daemon's uid ({owner_uid}) may",
            "forbidden_peer",
        )


def _check_token(request: web.Request, token: str | None) -> None:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Constant time: the comparison must not tell an attacker how much of a guess was right.
    if (
        token is None
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(given.strip().encode(), token.encode())
    ):
        raise AdminError(
            401,
            "the admin API over TCP needs Authorization: Bearer <admin.token>",
            "invalid_admin_token",
            headers={"WWW-Authenticate": "Bearer"},
        )


# Status, reload, backends ------------------------------------------------------------------


def _retired(state: RuntimeState) -> set[Runtime]:
    # RuntimeState keeps no public view of its retired snapshots yet; status only counts them.
    return state._retired


class _DaemonApi:
    """``/status``, ``/reload`` and ``/backends``."""

    def __init__(
        self, state: RuntimeState, control: DaemonControl, board: WorkerBoard | None
    ) -> None:
        self._state = state
        self._control = control
        self._board = board

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/status", self.status)
        router.add_post("/reload", self.reload)
        router.add_get("/backends", self.backends)
        # A backend named by its url holds slashes: take the rest of the path up to the action.
        router.add_post(r"/backends/{name:.+}/drain", self.drain)
        router.add_post(r"/backends/{name:.+}/undrain", self.undrain)

    async def status(self, _request: web.Request) -> web.Response:
        state, control = self._state, self._control
        runtime = state.current
        retired = _retired(state)
        counts = control.reload_counts()
        sink = state.usage
        in_flight = state.in_flight()
        workers = None
        if self._board is not None:
            # Every worker's cell; this one's own numbers are live, the others' at most
            # PUBLISH_EVERY old. A gone worker is listed, never summed.
            cells = self._board.cells()
            workers = [cell.as_json() for cell in cells]
            in_flight += sum(
                cell.in_flight for cell in cells if cell.alive and cell.index != self._board.worker
            )
        return json_response(
            {
                "version": __version__,
                "pid": os.getpid(),
                "started_at": control.started_at,
                "uptime_seconds": round(time.time() - control.started_at, 3),
                "config_path": control.config_path,
                "config_version": control.config_version(),
                "listen": runtime.config.listen_address,
                "in_flight": in_flight,
                "workers": workers,
                "retired_snapshots": len(retired),
                "reloads": {
                    "ok": counts.ok,
                    "failed": counts.failed,
                    "last": None if counts.last is None else counts.last.as_json(),
                },
                "usage": None
                if sink is None
                else {
                    "queued": sink.queued,
                    "outbox_depth": sink.outbox_depth(),
                    "dead_letters": sink.dead_letters(),
                },
            }
        )

    async def reload(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        unknown = sorted(set(body) - {"dry_run"})
        if unknown:
            raise invalid(f"unknown field(s) {', '.join(unknown)}; fields: dry_run")
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise invalid(f"dry_run: expected true or false, got {dry_run!r}")
        asked_at = time.time()
        outcome = await self._control.reload(dry_run=dry_run, trigger="admin")
        if not outcome.ok:
            raise AdminError(
                422,
                outcome.error or "reload refused",
                "config_invalid",
                extra={"outcome": outcome.as_json()},
            )
        answer = outcome.as_json()
        if self._board is not None and not dry_run and outcome.changes:
            # The other workers reload on the supervisor's SIGHUP: answer once they have.
            others = await self._board.wait_for_reloads(asked_at, within=RELOAD_WAIT)
            answer["workers"] = [
                {
                    "index": cell.index,
                    "pid": cell.pid,
                    "reloaded": cell.last_reload_at >= asked_at,
                    "ok": cell.last_reload_ok,
                    "config_version": cell.config_version,
                }
                for cell in others
            ]
        return json_response(answer)

    async def backends(self, _request: web.Request) -> web.Response:
        now = asyncio.get_running_loop().time()
        runtime = self._state.current
        shares = runtime.router.affinity_shares()
        views = []
        for backend in runtime.backends:
            view = {**backend.snapshot(now), "affinity_share": _rounded(shares.get(backend.name))}
            in_flight = self._daemon_in_flight(backend)
            if in_flight is not None:
                view["in_flight"] = in_flight
            views.append(view)
        return json_response({"backends": views})

    def _daemon_in_flight(self, backend: Backend) -> int | None:
        """With several workers: this worker's live count plus what the other live workers
        last reported (at most PUBLISH_EVERY old); None with one process."""
        board, slots = self._board, self._state.fleet.shared
        if board is None or slots is None or backend.slots is None or backend.max_in_flight > 0:
            return None  # one process, or a capped backend: its snapshot counts the slots
        others = [c.index for c in board.cells() if c.alive and c.index != board.worker]
        return backend.in_flight + slots.reported(backend.slots.row, others)

    async def drain(self, request: web.Request) -> web.Response:
        return self._set_draining(request, True)

    async def undrain(self, request: web.Request) -> web.Response:
        return self._set_draining(request, False)

    def _set_draining(self, request: web.Request, draining: bool) -> web.Response:
        backend = self._backend(request.match_info["name"])
        backend.draining = draining
        if backend.slots is not None:  # several workers: every one before its next request
            backend.slots.set_draining(draining)
        log.info(
            "backend %s %s by the admin API", backend.name, "drained" if draining else "undrained"
        )
        now = asyncio.get_running_loop().time()
        return json_response({"backend": backend.snapshot(now)})

    def _backend(self, name: str) -> Backend:
        backends = self._state.current.backends
        for backend in backends:
            if backend.name == name:
                return backend
        names = ", ".join(b.name for b in backends)
        raise AdminError(404, f"no backend named {name!r}; backends: {names}", "backend_not_found")


# The server --------------------------------------------------------------------------------


class AdminServer:
    """Serves :func:`admin_app` on the admin socket (and the optional TCP listener).

    ``admin.enabled: false`` turns the whole admin API off: :meth:`start` then serves nothing.
    """

    def __init__(
        self,
        state: RuntimeState,
        control: DaemonControl,
        *,
        owner_uid: int | None = None,
        board: WorkerBoard | None = None,
    ) -> None:
        self._state = state
        self._control = control
        self._owner_uid = owner_uid
        self._board = board
        self._runner: web.AppRunner | None = None
        self._socket_path: Path | None = None
        self._socket_id: tuple[int, int] | None = None

    @property
    def socket_path(self) -> Path | None:
        """Where the Unix socket is bound (None before :meth:`start` or when disabled)."""
        return self._socket_path

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        """The TCP listener's bound host and port (the real port when ``:0`` was asked)."""
        if self._runner is None:
            return None
        for address in self._runner.addresses:
            if isinstance(address, tuple):
                return str(address[0]), int(address[1])
        return None

    async def start(
        self, config: Config, base_dir: Path, *, env: Mapping[str, str] | None = None
    ) -> None:
        """Bind the socket (``admin_socket_path`` with ``env``, default the process's) and, when
        configured, the TCP listener; raises ``AdminSocketInUse`` when another daemon answers.
        """
        admin = config.admin
        if not admin.enabled:
            return
        app = admin_app(
            self._state,
            self._control,
            token=admin.token if admin.listen else None,
            owner_uid=self._owner_uid,
            board=self._board,
        )
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        self._runner = runner
        try:
            path = admin_socket_path(admin, base_dir, os.environ if env is None else env)
            sock = await asyncio.to_thread(bind_admin_socket, path)
            info = os.stat(path)
            self._socket_path, self._socket_id = path, (info.st_dev, info.st_ino)
            try:
                await web.SockSite(runner, sock).start()
            except BaseException:
                sock.close()
                raise
            if admin.listen:
                host, port = parse_listen(admin.listen)
                await web.TCPSite(runner, host, port).start()
        except BaseException:
            await self.close()
            raise
        log.info("admin API on %s%s", path, f" and {admin.listen}" if admin.listen else "")

    async def close(self) -> None:
        """Stop serving (streams end, requests in progress get ``SHUTDOWN_TIMEOUT``), then remove
        the socket file — only if it is still the one this server bound.
        """
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        path, identity = self._socket_path, self._socket_id
        self._socket_path = self._socket_id = None
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                info = os.stat(path)
                if (info.st_dev, info.st_ino) == identity:
                    path.unlink()


def _rounded(share: float | None) -> float | None:
    return None if share is None else round(share, 4)
