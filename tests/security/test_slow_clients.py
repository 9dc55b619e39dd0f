"""Slow, silent and endless clients are cut off by their own clock, and leave nothing behind.

Real sockets against the real daemon: each kind of client is closed within its timeout, with an
OpenAI-style error where it said enough to deserve one, and the daemon's open files and memory
come back to where they were.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.daemon import (
    Daemon,
    base_config,
    behind_gateway,
    capture_backend,
    closed,
    daemon,
    free_port,
    static_auth,
    until,
)
from tests.security.wire import CaptureBackend, Received, http_request, response

HEADER_TIMEOUT = 1.0
READ_TIMEOUT = 1.0
MAX_HEADER = 8 * 1024
MAX_CONNECTIONS = 300
KEY = "sk-slow-0123456789"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, CaptureBackend]]:
    with behind_gateway(
        tmp_path_factory.mktemp("slow"),
        server={
            "header_timeout": f"{HEADER_TIMEOUT}s",
            "read_timeout": f"{READ_TIMEOUT}s",
            "idle_timeout": "2s",
            "max_header_size": MAX_HEADER,
            "max_connections": MAX_CONNECTIONS,
        },
        auth=static_auth({"key": KEY}),
    ) as (running, backend):
        _ok(running)  # warm: pools, code paths, first allocations
        yield running, backend


def _ok(running: Daemon) -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    answer = running.request(
        http_request("POST", b"/v1/chat/completions", body, {"authorization": f"Bearer {KEY}"})
    )
    assert answer.status == 200


def _connect(running: Daemon) -> socket.socket:
    return socket.create_connection(("127.0.0.1", running.port))


def _answer(sock: socket.socket, within: float) -> bytes:
    """Everything the daemon sends until it closes the connection (or ``within`` passes)."""
    sock.settimeout(within)
    data = b""
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionError):
        pass
    return data


_unread: dict[int, bytes] = {}
"""Bytes read past the end of a response, per socket: pipelined answers can arrive in one
read (on a loaded machine they often do), and the next call must start from them."""


def _response(sock: socket.socket, within: float = 5) -> bytes:
    """One whole response (head and its content-length body), without waiting for a close."""
    sock.settimeout(within)
    data = _unread.pop(sock.fileno(), b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    if len(body) > length:
        _unread[sock.fileno()] = body[length:]
    return head + b"\r\n\r\n" + body[:length]


def _status_and_code(raw: bytes) -> tuple[int, str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), raw[:300]
    return int(head.split(b" ")[1]), json.loads(body)["error"]["code"]


def _baseline(running: Daemon) -> tuple[int, int]:
    assert until(lambda: running.connections() < 20, 10)
    return running.open_fds(), running.rss_kib()


def test_silent_connections_are_closed_and_fds_come_back(
    setup: tuple[Daemon, CaptureBackend],
) -> None:
    """200 connections that never send a byte are all closed within header_timeout; the
    daemon's open files return to the baseline."""
    running, _ = setup
    fds, _ = _baseline(running)
    sockets = [_connect(running) for _ in range(200)]
    try:
        assert until(lambda: running.open_fds() >= fds + 150, 5)
        started = time.monotonic()
        assert all(closed(sock, HEADER_TIMEOUT + 3) for sock in sockets)
        assert time.monotonic() - started < HEADER_TIMEOUT + 3
    finally:
        for sock in sockets:
            sock.close()
    assert until(lambda: running.open_fds() <= fds + 2, 5), (running.open_fds(), fds)


def test_slowloris_headers_get_408(setup: tuple[Daemon, CaptureBackend]) -> None:
    """Headers sent a byte at a time are cut off header_timeout after the first byte, with a
    408 in the OpenAI shape."""
    running, _ = setup
    request = http_request("GET", b"/v1/models", headers={"authorization": f"Bearer {KEY}"})
    with _connect(running) as sock:
        started = time.monotonic()
        sock.settimeout(0.1)
        for byte in request[:-4]:
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.05)
            if time.monotonic() - started > HEADER_TIMEOUT + 2:
                break
        raw = _answer(sock, 3)
    assert _status_and_code(raw) == (408, "timeout")
    assert time.monotonic() - started < HEADER_TIMEOUT + 2.5


def test_endless_headers_get_431_as_they_arrive(setup: tuple[Daemon, CaptureBackend]) -> None:
    """Ten connections streaming headers without end are each refused with 431 once the block
    passes max_header_size, and the daemon's memory does not grow with what they sent."""
    running, _ = setup
    _, rss = _baseline(running)
    for _ in range(10):
        with _connect(running) as sock:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")
            line = b"x-filler: " + b"a" * 1000 + b"\r\n"
            with contextlib.suppress(OSError):  # closed on us: what should happen
                for _ in range(2000):  # 2 MB
                    sock.sendall(line)
            raw = _answer(sock, 3)
        assert _status_and_code(raw) == (431, "headers_too_large")
    assert running.rss_kib() - rss < 16 * 1024


def test_body_that_never_starts_gets_408(setup: tuple[Daemon, CaptureBackend]) -> None:
    """Headers that announce a body that never comes are answered 408 read_timeout after the
    end of the headers."""
    running, backend = setup
    before = len(backend.received)
    with _connect(running) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + KEY.encode() + b"\r\ncontent-length: 100\r\n\r\n"
        )
        started = time.monotonic()
        raw = _answer(sock, READ_TIMEOUT + 3)
    assert _status_and_code(raw) == (408, "timeout")
    assert READ_TIMEOUT - 0.2 < time.monotonic() - started < READ_TIMEOUT + 2
    assert len(backend.received) == before


def test_body_trickled_forever_gets_408(setup: tuple[Daemon, CaptureBackend]) -> None:
    """A body sent a few bytes at a time is cut off read_timeout after the headers, however
    busy the client keeps the connection."""
    running, _ = setup
    with _connect(running) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + KEY.encode() + b"\r\ncontent-length: 1000000\r\n\r\n"
        )
        started = time.monotonic()
        sock.settimeout(0.05)
        while time.monotonic() - started < READ_TIMEOUT + 2:
            try:
                sock.send(b'{"a": "bbbbbb')
            except OSError:
                break
            time.sleep(0.05)
        raw = _answer(sock, 2)
    assert _status_and_code(raw) == (408, "timeout")
    assert time.monotonic() - started < READ_TIMEOUT + 2.5


def test_unknown_key_body_is_never_read(setup: tuple[Daemon, CaptureBackend]) -> None:
    """A bogus key gets its 401 before the body is read: a 100,000-deep body is not parsed (no
    traceback), and 150 clients each sending 1 MiB leave the daemon's memory where it was."""
    running, _ = setup
    deep = b'{"model":"m","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    answer = running.request(
        http_request("POST", b"/v1/chat/completions", deep, {"authorization": "Bearer sk-bogus"})
    )
    assert (answer.status, answer.error_code()) == (401, "invalid_api_key")
    _, rss = _baseline(running)
    body = b'{"model":"m","messages":"' + b"x" * (1024 * 1024) + b'"}'
    head = http_request(
        "POST", b"/v1/chat/completions", b"", {"authorization": "Bearer sk-bogus"}
    ).replace(b"content-length: 0", b"content-length: %d" % len(body))
    sockets = []
    for _ in range(150):
        sock = _connect(running)
        sock.sendall(head)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.send(body)
        sockets.append(sock)
    try:
        for sock in sockets:
            sock.setblocking(True)
            assert _status_and_code(_response(sock)) == (401, "invalid_api_key")
        peak = running.rss_kib()
    finally:
        for sock in sockets:
            sock.close()
    assert peak - rss < 40 * 1024, (peak, rss)
    assert "Traceback" not in running.log_text()


def test_connections_over_the_cap_get_503(setup: tuple[Daemon, CaptureBackend]) -> None:
    """One connection more than server.max_connections is answered 503 and closed at once;
    the ones within the cap are served."""
    running, _ = setup
    _baseline(running)
    held = [_connect(running) for _ in range(MAX_CONNECTIONS)]
    for sock in held[-20:]:
        # Sent at once, before the refusal is read: it still arrives (no reset).
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
    extra = [_connect(running) for _ in range(20)]
    held += extra
    try:
        for sock in extra:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        refused = 0
        for sock in extra:
            raw = _answer(sock, 2)
            assert _status_and_code(raw) == (503, "too_many_connections")
            refused += 1
        assert refused == 20
    finally:
        for sock in held:
            sock.close()
    assert until(lambda: running.connections() < 20, HEADER_TIMEOUT + 5)
    _ok(running)


def _health(sock: socket.socket) -> None:
    sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
    assert b" 200 " in _response(sock)[:20]


def test_a_stray_line_break_does_not_keep_a_connection_forever(
    setup: tuple[Daemon, CaptureBackend],
) -> None:
    """After a request, one "\\n" (which the parser skips without beginning a request) starts
    the next head's clock: the connection is closed within header_timeout, not kept forever."""
    running, _ = setup
    with _connect(running) as sock:
        _health(sock)
        sock.sendall(b"\n")
        started = time.monotonic()
        assert closed(sock, HEADER_TIMEOUT + 2)
        assert time.monotonic() - started < HEADER_TIMEOUT + 1


def test_kept_alive_heads_are_measured_and_timed_too(
    setup: tuple[Daemon, CaptureBackend],
) -> None:
    """The second request on a connection gets 431 for an oversized head and 408 for a slow
    one, as the first would."""
    running, _ = setup
    with _connect(running) as sock:
        _health(sock)
        filler = b"".join(b"x-h%d: %s\r\n" % (i, b"a" * 1000) for i in range(12))
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n" + filler + b"\r\n")
        assert _status_and_code(_answer(sock, 3)) == (431, "headers_too_large")
    with _connect(running) as sock:
        _health(sock)
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        assert _status_and_code(_answer(sock, HEADER_TIMEOUT + 2)) == (408, "timeout")


def test_a_pipelined_head_after_a_large_body_is_not_taken_for_headers(
    setup: tuple[Daemon, CaptureBackend],
) -> None:
    """A large body and the start of the next pipelined request in one read: the body's bytes
    are not counted as the next head's, so both requests are served."""
    running, _ = setup
    body = json.dumps({"model": "m", "prompt": "x" * 100_000}).encode()
    first = http_request("POST", b"/v1/completions", body, {"authorization": f"Bearer {KEY}"})
    second = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
    with _connect(running) as sock:
        sock.sendall(first + second[:20])
        time.sleep(0.3)
        sock.sendall(second[20:])
        assert b" 200 " in _response(sock)[:20]
        assert b" 200 " in _response(sock)[:20]


def test_pipelined_requests_nobody_reads_do_not_grow_memory(
    setup: tuple[Daemon, CaptureBackend],
) -> None:
    """A client that pipelines thousands of requests without reading the answers is cut off
    once more than a few wait; the daemon's memory stays where it was."""
    running, _ = setup
    _, rss = _baseline(running)
    burst = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n" * 5000
    for _ in range(3):
        with _connect(running) as sock:
            with contextlib.suppress(OSError):
                for _ in range(20):
                    sock.sendall(burst)
            assert closed(sock, 5)
    assert running.rss_kib() - rss < 16 * 1024
    assert "too many pipelined requests" in running.log_text()


def test_the_daemon_is_still_well(setup: tuple[Daemon, CaptureBackend]) -> None:
    """After all that: requests are served, no traceback was logged."""
    running, _ = setup
    _ok(running)
    assert "Traceback" not in running.log_text()


def test_a_client_that_stops_reading_is_dropped_and_frees_the_backend(tmp_path: Path) -> None:
    """A client that stops reading a large answer holds nothing for long: send_timeout after
    its socket filled up, the connection is dropped and the backend request closed (the
    in-flight gauge goes back to 0), so no GPU slot is held for a client that is not there."""
    big = b"data: " + b"x" * 60_000 + b"\n\n"
    stream = big * 400 + b"data: [DONE]\n\n"  # 24 MB of SSE

    def answer(_request: Received) -> bytes:
        return response(200, stream, b"text/event-stream")

    with capture_backend(respond=answer) as backend:
        config = base_config(backend.url, free_port(), server={"send_timeout": "1s"})
        with daemon(tmp_path, config) as running:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", running.port))
            body = json.dumps({"model": "m", "messages": [], "stream": True}).encode()
            sock.sendall(http_request("POST", b"/v1/chat/completions", body))
            sock.recv(100)  # the status line, then nothing more is read

            def in_flight() -> float:
                metrics = running.request(http_request("GET", b"/metrics")).body.decode()
                return sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in metrics.splitlines()
                    if line.startswith("llmproxy_in_flight_requests{")
                )

            assert until(lambda: in_flight() == 1, 3)
            assert until(lambda: in_flight() == 0, 6)
            assert "stopped reading" in running.log_text()
            sock.close()
