"""The real daemon for the security tests, beside backends served from a thread.

Tests here are synchronous (hypothesis drives them with plain sockets), so the capture and
hostile backends run on an event loop of their own in a thread, and the gateway is the real
``llmproxy serve`` process, its log written to a file the test can read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from hypothesis import HealthCheck, settings

from tests.e2e.daemon import LLMPROXY, free_port, stop, wait_until_up
from tests.security.wire import CaptureBackend, RawResponse, read_response

T = TypeVar("T")


class BackgroundLoop:
    """An event loop in a thread: backends live there while the test talks plain sockets."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, work: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@contextlib.contextmanager
def capture_backend(**kwargs: Any) -> Iterator[CaptureBackend]:
    """A :class:`CaptureBackend` served from a background loop."""
    loop = BackgroundLoop()
    backend = CaptureBackend(**kwargs)
    loop.run(backend.__aenter__())
    try:
        yield backend
    finally:
        loop.run(backend.__aexit__())
        loop.close()


@dataclass
class Daemon:
    """A running ``llmproxy serve``."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path
    directory: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def connections(self) -> int:
        """TCP connections the daemon holds on its listening port."""
        count = 0
        for fd in os.listdir(f"/proc/{self.process.pid}/fd"):
            with contextlib.suppress(OSError):  # closed while we looked
                count += os.readlink(f"/proc/{self.process.pid}/fd/{fd}").startswith("socket:")
        return count

    def request(self, data: bytes, timeout: float = 10.0) -> RawResponse:
        """Send the exact bytes ``data`` on a new connection; one response."""
        return asyncio.run(_send(self.port, data, timeout))


async def _send(port: int, data: bytes, within: float) -> RawResponse:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(read_response(reader), within)
    finally:
        writer.close()


def base_config(backend_url: str, port: int, **sections: Any) -> dict[str, Any]:
    """A daemon config on ``port`` in front of ``backend_url``: no probes, fast retries."""
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "backends": [{"url": backend_url, "name": "capture"}],
        "health_check": {"enabled": False},
        "routing": {"retry": {"initial_wait": "1ms", "max_wait": "5ms"}},
        "admin": {"enabled": False},
        "usage": {"database": "usage.db"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@contextlib.contextmanager
def daemon(directory: Path, config: dict[str, Any]) -> Iterator[Daemon]:
    """Run ``llmproxy serve`` on ``config`` (its ``listen`` port) from ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = int(str(config["listen"]).rsplit(":", 1)[1])
    log = directory / "daemon.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*LLMPROXY, "serve", "--config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    running = Daemon(port, process, log, directory)
    try:
        wait_until_up(f"{running.url}/health", process)
        yield running
    finally:
        stop(process)


def static_auth(*keys: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An ``auth`` section with one static provider named ``inline`` holding ``keys``."""
    provider = {"name": "inline", "type": "static", "keys": list(keys)}
    return {"enabled": True, "pipeline": [provider], **extra}


@contextlib.contextmanager
def behind_gateway(
    directory: Path, backend_options: dict[str, Any] | None = None, **sections: Any
) -> Iterator[tuple[Daemon, CaptureBackend]]:
    """A capture backend (its ``backends[]`` entry extended by ``backend_options``) and the
    daemon in front of it, configured with ``sections``."""
    with capture_backend() as backend:
        config = base_config(backend.url, free_port(), **sections)
        config["backends"] = [{**config["backends"][0], **(backend_options or {})}]
        with daemon(directory, config) as running:
            yield running, backend


def examples(count: int) -> settings:
    """Hypothesis settings for a property run against the daemon: ``count`` examples, no
    per-example deadline (it is I/O), the module's daemon fixture shared by all of them."""
    return settings(
        max_examples=count,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


def until(check: Any, within: float, step: float = 0.05) -> bool:
    """Poll ``check()`` until it is true or ``within`` seconds pass; its last answer."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return bool(check())


def closed(sock: socket.socket, within: float) -> bool:
    """Whether the peer closes ``sock`` within ``within`` seconds (reading what it sends)."""
    sock.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not sock.recv(65536):
                return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return False


__all__ = [
    "Daemon",
    "base_config",
    "behind_gateway",
    "capture_backend",
    "closed",
    "daemon",
    "examples",
    "free_port",
    "static_auth",
    "until",
]
