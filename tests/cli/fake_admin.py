"""A stand-in for the daemon's admin API on a real Unix socket, for CLI tests.

The CLI tests need to see what each command sends (method, path, query, body) and how it renders
every kind of answer (errors included) without building a whole gateway. The server speaks plain
HTTP/1.0 over a real socket, so the CLI's httpx transport, timeouts and error mapping are the ones
used against the daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socketserver
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Answer:
    """What the fake answers to one route: JSON, or NDJSON ``lines`` (a stream that then ends)."""

    status: int = 200
    body: Any = None
    lines: list[str] | None = None


@dataclass
class Seen:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class FakeAdmin:
    """Routes ``(method, path)`` to answers and records every request.

    A route may hold several answers: each request takes the next, and the last one stays.
    """

    socket: Path
    routes: dict[tuple[str, str], list[Answer]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        status: int = 200,
        lines: list[str] | None = None,
        then: bool = False,
    ) -> None:
        """Answer ``(method, path)`` so; with ``then``, after the answers it already has."""
        answers = self.routes.setdefault((method, path), []) if then else []
        answers.append(Answer(status, body, lines))
        self.routes[(method, path)] = answers

    def error(
        self, method: str, path: str, status: int, code: str, message: str, *, then: bool = False
    ) -> None:
        """Answer with the API's error shape."""
        self.route(method, path, error_body(code, message), status=status, then=then)

    def answer(self, method: str, path: str) -> Answer | None:
        answers = self.routes.get((method, path))
        if not answers:
            return None
        return answers.pop(0) if len(answers) > 1 else answers[0]


def error_body(code: str, message: str) -> dict[str, Any]:
    """The admin API's error shape (``docs/admin-api.md``)."""
    return {"error": {"message": message, "type": "invalid_request", "code": code}}


def _handler(fake: FakeAdmin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            fake.seen.append(Seen(self.command, path, query, json.loads(raw) if raw else None))
            answer = fake.answer(self.command, path)
            if answer is None:
                answer = Answer(404, error_body("unknown_path", f"no such admin endpoint: {path}"))
            self.send_response(answer.status)
            if answer.lines is not None:
                self.send_header("Content-Type", "application/x-ndjson")
                self.end_headers()
                for line in answer.lines:
                    self.wfile.write(line.encode() + b"\n")
                    self.wfile.flush()
                return
            data = json.dumps(answer.body).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def do_PATCH(self) -> None:
            self._serve()

        def do_DELETE(self) -> None:
            self._serve()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a Unix peer has no address for the default log line

    return Handler


def short_socket_dir() -> str:
    """A directory under /tmp: pytest's tmp_path can exceed the 107 bytes a socket path may have."""
    return tempfile.mkdtemp(prefix="lpcli", dir="/tmp")


@contextlib.contextmanager
def fake_admin() -> Iterator[FakeAdmin]:
    """A :class:`FakeAdmin` serving on a fresh socket until the block ends."""
    directory = short_socket_dir()
    path = Path(directory) / "admin.sock"
    fake = FakeAdmin(path)
    server = socketserver.ThreadingUnixStreamServer(os.fspath(path), _handler(fake))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        shutil.rmtree(directory, ignore_errors=True)
