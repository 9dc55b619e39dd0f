"""A small synchronous client of the daemon's admin API (``docs/admin-api.md``).

The CLI is short-lived and does one request (or follows one stream), so a blocking ``httpx.Client``
is all it needs. Every failure leaves this module as one of two exceptions, so that each command
maps it to the same message and exit code (:mod:`llmproxy.cli.output`):

- :class:`DaemonUnreachable`: nothing answers (socket missing, connection refused, timeout, the
  daemon went away mid-answer) — the operator has to start the daemon or point at the right socket;
- :class:`AdminError`: the daemon answered with an error body — it refused the operation.

httpx is imported here and nowhere else in the CLI, and this module only when a command talks to
the daemon, so ``llmproxy --help`` and shell completion stay fast.
"""

from __future__ import annotations

import json
import socket as socket_module
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpcore
import httpx
from httpcore._backends.sync import SyncStream

JSONObject = dict[str, Any]
"""A decoded JSON object as the API returns it."""

SOCKET_BASE_URL = "http://llmproxy"
"""Host part of requests over the Unix socket; the daemon ignores it."""

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=3.0)
"""A reload builds a whole runtime, so answers may take seconds; connecting never should."""

STREAM_READ_TIMEOUT = 45.0
"""The usage stream sends an empty line every 15 s; three missed ones mean the daemon is gone."""


class DaemonUnreachable(Exception):
    """No daemon answers at ``where`` (a socket path or an admin URL)."""

    def __init__(self, where: str, *, over_socket: bool, reason: str = "") -> None:
        self.where = where
        self.over_socket = over_socket
        self.reason = reason
        super().__init__(self.message)

    @property
    def message(self) -> str:
        if self.over_socket:
            text = (
                "no daemon answers on the admin socket: is `llmproxy serve` running? "
                f"socket: {self.where}"
            )
        else:
            text = (
                "no daemon answers on the admin URL: is `llmproxy serve` running? "
                f"url: {self.where}"
            )
        return f"{text} ({self.reason})" if self.reason else text


class AdminError(Exception):
    """The daemon answered ``status`` with an error: ``code`` and ``message`` from its body.

    ``body`` is the whole decoded answer (for a refused reload it holds the ``outcome``), so that
    ``--json`` can print it for scripts.
    """

    def __init__(self, status: int, code: str, message: str, body: JSONObject | None = None):
        self.status = status
        self.code = code
        self.message = message
        self.body: JSONObject = body if body is not None else {}
        super().__init__(f"{status} {code}: {message}")


def error_from_response(status: int, content: bytes) -> AdminError:
    """The :class:`AdminError` for an error answer, whether or not it has the API's error shape."""
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = str(error.get("code") or error.get("type") or f"http_{status}")
        message = str(error.get("message") or f"HTTP {status}")
        return AdminError(status, code, message, body)
    # Not the API's shape: an older daemon, or something else listening on the socket.
    text = content.decode("utf-8", "replace").strip()[:200]
    return AdminError(status, f"http_{status}", text or f"HTTP {status}", None)


def _socket_reason(error: httpx.TransportError) -> str:
    """Why connecting failed, when it is worth more than the standard message."""
    cause: BaseException | None = error.__context__
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__context__
    if isinstance(cause, PermissionError):
        return "permission denied: the daemon runs as another user, or the socket is private"
    return ""


class _ClosingUnixBackend(httpcore.SyncBackend):
    """httpcore's backend, but a Unix socket whose connect fails is closed.

    httpcore 1.0 leaves it open — a ``ResourceWarning`` and a leaked descriptor each time the
    daemon is not running, which is exactly the case the CLI must handle cleanly.
    """

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        sock = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(timeout)
            sock.connect(path)
        except TimeoutError as error:
            sock.close()
            raise httpcore.ConnectTimeout(str(error)) from error
        except OSError as error:
            sock.close()
            raise httpcore.ConnectError(str(error)) from error
        return SyncStream(sock)


class _UnixTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport(uds=path)`` on :class:`_ClosingUnixBackend`."""

    def __init__(self, path: str) -> None:
        super().__init__(uds=path)
        self._pool = httpcore.ConnectionPool(uds=path, network_backend=_ClosingUnixBackend())


class AdminClient:
    """Requests to one daemon, over its Unix socket or the optional TCP admin listener.

    Give ``socket`` (a path) or ``url`` (``http://host:port``, with ``token``); ``transport``
    replaces the network for tests.
    """

    def __init__(
        self,
        *,
        socket: Path | None = None,
        url: str | None = None,
        token: str | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if (socket is None) == (url is None):
            raise ValueError("give exactly one of socket and url")
        headers = {"Accept": "application/json"}
        if url is not None:
            self.where = url
            self.over_socket = False
            base_url = url.rstrip("/")
            if token:
                headers["Authorization"] = f"Bearer {token}"
        else:
            assert socket is not None
            self.where = str(socket)
            self.over_socket = True
            base_url = SOCKET_BASE_URL
            transport = transport or _UnixTransport(str(socket))
        self._http = httpx.Client(
            transport=transport, base_url=base_url, headers=headers, timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _unreachable(self, error: httpx.TransportError) -> DaemonUnreachable:
        reason = _socket_reason(error) if self.over_socket else ""
        return DaemonUnreachable(self.where, over_socket=self.over_socket, reason=reason)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | float] | None = None,
        body: Mapping[str, object] | None = None,
    ) -> JSONObject:
        """One call; the decoded JSON object of a 2xx answer, else :class:`AdminError`."""
        try:
            response = self._http.request(method, path, params=params, json=body)
        except httpx.TransportError as error:
            raise self._unreachable(error) from None
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.content)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise AdminError(
                response.status_code, "bad_answer", f"the daemon's answer to {path} is not JSON"
            )
        return data

    def get(self, path: str, params: Mapping[str, str | int | float] | None = None) -> JSONObject:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Mapping[str, object] | None = None) -> JSONObject:
        return self.request("POST", path, body=body if body is not None else {})

    def patch(self, path: str, body: Mapping[str, object]) -> JSONObject:
        return self.request("PATCH", path, body=body)

    def delete(
        self, path: str, params: Mapping[str, str | int | float] | None = None
    ) -> JSONObject:
        return self.request("DELETE", path, params=params)

    def stream(
        self,
        path: str,
        params: Mapping[str, str | int | float] | None = None,
        *,
        on_open: Callable[[], object] | None = None,
    ) -> Iterator[JSONObject]:
        """Follow an NDJSON stream: one object per line, skipping the keep-alive empty lines.

        ``on_open`` is called once the daemon has accepted the stream (before any record), so a
        header is printed only when there will be rows under it. Ends when the daemon ends the
        stream; raises :class:`DaemonUnreachable` when the connection breaks or stays silent past
        :data:`STREAM_READ_TIMEOUT`.
        """
        timeout = httpx.Timeout(STREAM_READ_TIMEOUT, connect=DEFAULT_TIMEOUT.connect)
        try:
            with self._http.stream("GET", path, params=params, timeout=timeout) as response:
                if response.status_code >= 400:
                    raise error_from_response(response.status_code, response.read())
                if on_open is not None:
                    on_open()
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        raise AdminError(
                            response.status_code, "bad_answer", f"not a JSON line: {line[:200]!r}"
                        ) from None
                    if isinstance(record, dict):
                        yield record
        except httpx.TransportError as error:
            raise self._unreachable(error) from None
