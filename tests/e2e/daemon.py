"""Run the real ``llmproxy`` command as a subprocess, the way an operator does."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

LLMPROXY = [sys.executable, "-m", "llmproxy"]


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_up(url: str, process: subprocess.Popen[bytes], within: float = 20.0) -> None:
    """Poll ``url`` until it answers 200; fail with the process output if it dies first."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"process exited with {process.returncode}:\n{out}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"{url} did not come up within {within}s")


@contextlib.contextmanager
def running(
    args: list[str], health_url: str, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``llmproxy ARGS``, wait for ``health_url``, and stop it with SIGTERM at the end."""
    process = subprocess.Popen(
        [*LLMPROXY, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_until_up(health_url, process)
        yield process
    finally:
        stop(process)
        if process.stdout:
            process.stdout.close()


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a drain), then SIGKILL if it has not exited within 15 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
