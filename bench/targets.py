"""The processes under test: the mock backend, the gateway in front of it, and nginx as a reference.

Each is a child process on 127.0.0.1 with a free port, its output in the run's temp dir, started by
:func:`start_targets` and stopped (SIGTERM, then SIGKILL after a bound) when its block ends. nginx
runs unprivileged from a generated config; when it is missing the bench installs it (as root) or
says how to and goes on without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import BENCH_KEY

_SBIN = os.pathsep.join(["/usr/local/sbin", "/usr/sbin", "/sbin"])
_STARTUP_TIMEOUT = 20.0
_STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Target:
    """One thing to measure: ``direct`` (the mock itself), ``gateway``, ``core`` (the gateway
    without usage records and metrics) or ``nginx``.
    """

    name: str
    port: int
    pid: int
    """The process whose CPU time (with its children's) is the cost of serving."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def find_tool(name: str) -> str | None:
    """The path of ``name`` on PATH or in the sbin directories (nginx lives in /usr/sbin)."""
    return shutil.which(name) or shutil.which(name, path=_SBIN)


def ensure_tools(want_nginx: bool) -> tuple[str | None, str | None]:
    """``(wrk, nginx)`` paths, installing them with apt when root; None for what is missing."""
    wanted = ["wrk"] + (["nginx"] if want_nginx else [])
    missing = [tool for tool in wanted if find_tool(tool) is None]
    if missing:
        packages = ["wrk" if tool == "wrk" else "nginx-light" for tool in missing]
        if os.geteuid() == 0 and shutil.which("apt-get"):
            print(f"installing {' '.join(packages)} with apt-get …", file=sys.stderr)
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            install = ["apt-get", "install", "-y", "-q", *packages]
            if subprocess.run(install, env=env, check=False).returncode != 0:
                subprocess.run(["apt-get", "update", "-q"], env=env, check=False)
                subprocess.run(install, env=env, check=False)
        else:
            print(
                f"warning: {', '.join(missing)} not found; install with "
                f"`sudo apt-get install -y {' '.join(packages)}`. Going on without it.",
                file=sys.stderr,
            )
    return find_tool("wrk"), (find_tool("nginx") if want_nginx else None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def render_gateway_config(
    listen_port: int, backend_port: int, *, core: bool = False, workers: int = 1
) -> str:
    """The gateway config (JSON is YAML) as production runs it: one backend, an API key checked
    by a ``static`` provider, per-key limits in memory (set high enough never to refuse), usage
    records and metrics; no health checks.

    One worker process by default, like nginx's ``worker_processes 1``: the bench compares one
    core's worth (``workers`` for the scaling figure, nginx then gets as many).
    ``core`` also turns usage records and metrics off: the same gateway without its accounting,
    so one run shows what accounting costs.
    """
    config: dict[str, object] = {
        "listen": f"127.0.0.1:{listen_port}",
        "server": {"workers": workers, "watch_config": False},
        "backends": [{"url": f"http://127.0.0.1:{backend_port}"}],
        "health_check": {"enabled": False},
        "logging": {"level": "warning"},
        "admin": {"enabled": False},
        "auth": {
            "enabled": True,
            "pipeline": [{"name": "bench", "type": "static", "keys": [{"key": BENCH_KEY}]}],
        },
        "rate_limit": {
            "enabled": True,
            "storage": "memory",
            "per_key": {
                "enabled": True,
                "requests_per_second": 1_000_000,
                "burst_size": 1_000_000,
                "max_concurrent": 1_000_000,
            },
        },
    }
    if core:
        config["usage"] = {"enabled": False}
        config["metrics"] = {"enabled": False}
    return json.dumps(config, indent=2) + "\n"


def render_nginx_conf(
    workdir: Path,
    listen_port: int,
    backend_port: int,
    *,
    missing_modules: frozenset[str],
    workers: int = 1,
) -> str:
    """A one-worker nginx reverse proxy with the same job as the gateway: unbuffered, keep-alive.

    Every path nginx writes to points into ``workdir`` so it runs without root. Temp paths of
    modules that this build lacks (``--without-http_<name>_module``) must not be named at all.
    """
    temp_paths = "\n".join(
        f"    {module}_temp_path {workdir}/{module}_temp;"
        for module in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        if module not in missing_modules
    )
    return f"""\
worker_processes {workers};
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {workdir}/nginx-access.log combined buffer=64k flush=1s;
{temp_paths}
    keepalive_requests 1000000;
    upstream mock {{
        server 127.0.0.1:{backend_port};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{listen_port};
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def nginx_missing_modules(nginx: str) -> frozenset[str]:
    """The http modules this nginx build was compiled without (from ``nginx -V``)."""
    version = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False).stderr
    return frozenset(
        flag.removeprefix("--without-http_").removesuffix("_module")
        for flag in version.split()
        if flag.startswith("--without-http_")
    )


class StartError(RuntimeError):
    """A child process did not come up; the message ends with the end of its log."""


def wait_ready(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartError(f"{process.args!r} exited with {process.returncode}: {_tail(log)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass  # not listening yet
        time.sleep(0.05)
    raise StartError(f"no answer on /health within {_STARTUP_TIMEOUT:g} s: {_tail(log)}")


def _tail(log: Path, lines: int = 6) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def child(command: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` until the block ends (it must answer ``/health`` on ``port`` first);
    stop it with SIGTERM, then SIGKILL if it lingers. Raises :class:`StartError`."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(process, port, log)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def start_targets(workdir: Path, nginx: str | None, workers: int = 1) -> Iterator[list[Target]]:
    """Start the mock, the gateway and (when given) nginx; yield them as targets, then stop all.

    ``workers``: processes of the gateway (and of nginx)."""
    python = sys.executable
    with contextlib.ExitStack() as stack:
        mock_port = free_port()
        # The cheap mock (bench.stream_mock): the project's own aiohttp mock would cost more
        # CPU than the gateway at a thousand streams.
        mock_cmd = [python, "-m", "bench.stream_mock", "--port", str(mock_port), "--tokens", "16"]
        mock = stack.enter_context(child(mock_cmd, mock_port, workdir / "mock.log"))
        targets = [Target("direct", mock_port, mock.pid)]

        gateway_port = free_port()
        config = workdir / "gateway.yaml"
        config.write_text(render_gateway_config(gateway_port, mock_port, workers=workers))
        gateway_cmd = [python, "-m", "llmproxy", "serve", "--config", str(config)]
        gateway = stack.enter_context(child(gateway_cmd, gateway_port, workdir / "gateway.log"))
        targets.append(Target("gateway", gateway_port, gateway.pid))

        core_port = free_port()
        core_config = workdir / "gateway-core.yaml"
        core_config.write_text(
            render_gateway_config(core_port, mock_port, core=True, workers=workers)
        )
        core_cmd = [python, "-m", "llmproxy", "serve", "--config", str(core_config)]
        core = stack.enter_context(child(core_cmd, core_port, workdir / "gateway-core.log"))
        targets.append(Target("core", core_port, core.pid))

        if nginx is not None:
            nginx_port = free_port()
            conf = workdir / "nginx.conf"
            missing = nginx_missing_modules(nginx)
            conf.write_text(
                render_nginx_conf(
                    workdir, nginx_port, mock_port, missing_modules=missing, workers=workers
                )
            )
            nginx_cmd = [nginx, "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"]
            try:
                proxy = stack.enter_context(child(nginx_cmd, nginx_port, workdir / "nginx.log"))
                targets.append(Target("nginx", nginx_port, proxy.pid))
            except RuntimeError as exc:  # a reference is optional: report, go on without it
                print(f"warning: nginx did not start, going on without it: {exc}", file=sys.stderr)
        yield targets
