"""The real daemon reloads on SIGHUP and on a changed file, and refuses a broken config."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.e2e.daemon import free_port, running

CHAT = "/v1/chat/completions"
BODY = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}


def _write(path: Path, port: int, backend_port: int, name: str, *, watch: bool) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(
        textwrap.dedent(
            f"""\
            listen: "127.0.0.1:{port}"
            backends: [{{url: "http://127.0.0.1:{backend_port}", name: {name}}}]
            health_check: {{enabled: false}}
            server: {{watch_config: {str(watch).lower()}}}
            admin: {{enabled: false}}
            """
        )
    )
    temporary.replace(path)


def _served_by(url: str) -> str:
    answer = httpx.post(url + CHAT, json=BODY, timeout=5)
    assert answer.status_code == 200
    return answer.headers["x-mock-backend"]


def _until(check: str, url: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while _served_by(url) != check:
        assert time.monotonic() < deadline, f"still not served by {check}"
        time.sleep(0.05)


@contextlib.contextmanager
def _two_backends_and_a_daemon(
    tmp_path: Path, *, watch: bool
) -> Iterator[tuple[subprocess.Popen[bytes], Path, str, int, int]]:
    """Mock backends `one` and `two` and a daemon serving a config that points at `one`:
    (daemon, config file, gateway URL, gateway port, port of `two`)."""
    port, one, two = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "config.yaml"
    _write(config, port, one, "first", watch=watch)
    with (
        running(
            ["mock-backend", "--port", str(one), "--name", "one"], f"http://127.0.0.1:{one}/health"
        ),
        running(
            ["mock-backend", "--port", str(two), "--name", "two"], f"http://127.0.0.1:{two}/health"
        ),
        running(["serve", "--config", str(config)], url + "/health") as daemon,
    ):
        yield daemon, config, url, port, two


def test_sighup_reloads_and_a_broken_file_is_refused(tmp_path: Path) -> None:
    with _two_backends_and_a_daemon(tmp_path, watch=False) as (daemon, config, url, port, two):
        assert _served_by(url) == "one"
        _write(config, port, two, "second", watch=False)
        time.sleep(0.5)
        assert _served_by(url) == "one"  # not watching: nothing happens until told
        daemon.send_signal(signal.SIGHUP)
        _until("two", url)
        config.write_text(config.read_text() + "routing: {load_balance_strategy: fastest}\n")
        daemon.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert _served_by(url) == "two"  # refused: the old config keeps serving
        assert daemon.poll() is None
        metrics = httpx.get(url + "/metrics").text
    assert 'llmproxy_config_reloads_total{result="success"} 1.0' in metrics
    assert 'llmproxy_config_reloads_total{result="failure"} 1.0' in metrics


def test_an_edited_file_is_reloaded_without_a_signal(tmp_path: Path) -> None:
    with _two_backends_and_a_daemon(tmp_path, watch=True) as (_daemon, config, url, port, two):
        assert _served_by(url) == "one"
        time.sleep(0.5)  # the watcher is up
        _write(config, port, two, "second", watch=True)
        _until("two", url)
