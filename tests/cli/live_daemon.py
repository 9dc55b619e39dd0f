"""A real daemon (``llmproxy serve`` in a subprocess, with a mock backend) for the CLI tests.

Import :func:`daemon` into a test module to use it: one daemon per module, found through its
config file as an operator's CLI finds it.
"""

from __future__ import annotations

import shutil
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.cli.fake_admin import short_socket_dir
from tests.e2e.daemon import free_port, running

BODY = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@dataclass
class Daemon:
    config: Path
    url: str
    pid: int
    socket: Path

    def chat(self, secret: str) -> int:
        """Status of one completion request made with ``secret``."""
        headers = {"Authorization": f"Bearer {secret}"}
        response = httpx.post(f"{self.url}/v1/chat/completions", json=BODY, headers=headers)
        return response.status_code


def config_text(port: int, mock_port: int, socket: Path, strategy: str = "round_robin") -> str:
    return textwrap.dedent(
        f"""\
        listen: "127.0.0.1:{port}"
        backends:
          - {{url: "http://127.0.0.1:{mock_port}", name: mock, models: [mock-model]}}
          - {{url: "http://127.0.0.1:{free_port()}", name: spare, models: [other]}}
        routing: {{load_balance_strategy: {strategy}}}
        health_check: {{enabled: false}}
        auth: {{enabled: true, storage: builtin, builtin_db: keys.db}}
        usage: {{database: usage.db}}
        admin: {{socket: "{socket}"}}
        """
    )


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    workdir = tmp_path_factory.mktemp("daemon")
    socket_dir = short_socket_dir()
    socket = Path(socket_dir) / "admin.sock"
    port, mock_port = free_port(), free_port()
    config = workdir / "config.yaml"
    config.write_text(config_text(port, mock_port, socket))
    mock_args = ["mock-backend", "--port", str(mock_port), "--tokens", "3"]
    try:
        with (
            running(mock_args, f"http://127.0.0.1:{mock_port}/health"),
            running(["serve", "-c", str(config)], f"http://127.0.0.1:{port}/health") as process,
        ):
            deadline = time.monotonic() + 10
            while not socket.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            yield Daemon(config, f"http://127.0.0.1:{port}", process.pid, socket)
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)
