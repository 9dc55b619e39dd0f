"""The image's commands, run natively (no Docker engine here).

What the Dockerfile does, done on this machine: a wheel is built from exactly the files its
``COPY`` lines bring in (as .dockerignore filters them), installed into a fresh virtualenv (no
system site-packages), and the image's ENTRYPOINT + CMD, ENV and HEALTHCHECK are taken from the
Dockerfile and run. The compose stack is then brought up the way docker-compose.yml describes it,
with its config adapted only in host:port and path prefixes: the mock backend and the usage
receiver from their compose commands, Redis with the compose password, the gateway serving
``compose/config.yaml``; a key is issued with the CLI through the admin socket, requests pass,
the usage record reaches the receiver with a valid signature, and SIGTERM exits 0.

Two variants:

- ``test_image_commands_bring_up_the_compose_stack``: the fresh virtualenv gets the wheel with
  ``--no-deps`` and finds the dependencies through a ``.pth`` line naming this checkout's
  virtualenv site-packages (fast, offline). The ``llmproxy`` package and its entry point come
  from the wheel, never from the checkout (checked).
- ``test_image_install_resolves_dependencies_from_the_index_slow``: the Dockerfile's two pip
  commands as written — ``pip wheel --wheel-dir`` with every dependency from the package index
  (pip's cache makes a rerun quick), ``pip install --no-index --find-links`` into a virtualenv of
  its own — then ``pip check``, the C extensions, and a served health check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.deployments.common import (
    COMPOSE_CONFIG,
    REPO,
    compose,
    compose_environment,
    dockerfile,
    healthcheck_command,
    image_command,
    interpolate,
)
from tests.deployments.test_dockerfile import copy_sources, in_context
from tests.e2e.daemon import free_port, stop
from tests.postgres import fresh_schema_sync

IMAGE_PREFIX = "/opt/llmproxy"


# -- building and installing ----------------------------------------------------------------


def build_context(tmp_path: Path) -> Path:
    """The files the Dockerfile COPYs, as .dockerignore lets them into the context (symlinks
    stay links, as COPY keeps them: llmproxy/_data links to completions/, man/, ...)."""
    context = tmp_path / "context"
    for source in copy_sources():
        origin = REPO / source
        paths = (
            [origin]
            if origin.is_file()
            else sorted(p for p in origin.rglob("*") if p.is_file() or p.is_symlink())
        )
        for path in paths:
            relative = path.relative_to(REPO).as_posix()
            if in_context(relative):
                target = context / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target, follow_symlinks=False)
    return context


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything pointing into the checkout's virtualenv."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    }
    env["PATH"] = os.pathsep.join(
        part for part in env.get("PATH", "").split(os.pathsep) if str(REPO) not in part
    )
    env.update(extra)
    return env


def pip(*args: str, timeout: float = 300) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def build_wheel(context: Path, out: Path, *, deps: bool, extras: str = "") -> Path:
    """The wheel of ``context`` (and with ``deps`` those of its dependencies and ``extras``)."""
    source = f"{context}{extras}"
    pip("wheel", *([] if deps else ["--no-deps"]), "--wheel-dir", str(out), source)
    (wheel,) = out.glob("llmproxy-*.whl")
    return wheel


def fresh_venv(path: Path, *, with_pip: bool) -> Path:
    """A new virtualenv of this interpreter's base Python, without system site-packages."""
    args = [sys.executable, "-m", "venv", str(path)]
    if not with_pip:
        args.append("--without-pip")
    subprocess.run(args, check=True, timeout=120, env=clean_env())
    config = (path / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in config
    return path


def site_packages(venv: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))


def image_env(venv: Path, **overrides: str) -> dict[str, str]:
    """The image's ENV, with /opt/llmproxy mapped to ``venv``."""
    env = clean_env()
    for key, value in dockerfile().final.env().items():
        value = value.replace(IMAGE_PREFIX, str(venv))
        env[key] = value.replace("$PATH", env.get("PATH", "")) if key == "PATH" else value
    env.update(overrides)
    return env


def entrypoint(venv: Path) -> list[str]:
    (program,) = dockerfile().final.one("ENTRYPOINT").exec_form
    return [str(venv / "bin" / program)]


def healthcheck(venv: Path, env: dict[str, str], within: float) -> None:
    """Run the image's HEALTHCHECK until it passes, as Docker does during the start period."""
    command = healthcheck_command()
    assert command[0] == "python"
    command = [str(venv / "bin" / "python"), *command[1:]]
    deadline = time.monotonic() + within
    while True:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=10)
        if result.returncode == 0:
            return
        assert time.monotonic() < deadline, f"HEALTHCHECK kept failing: {result.stderr[-2000:]}"
        time.sleep(0.1)


# -- processes --------------------------------------------------------------------------------


@contextlib.contextmanager
def started(
    args: list[str], log: Path, env: dict[str, str], cwd: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        yield process
    finally:
        stop(process)


@contextlib.contextmanager
def redis_with_password(password: str, directory: Path) -> Iterator[int]:
    """A redis-server of this test's own, requiring ``password`` like the compose service."""
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", str(directory), "--requirepass", password]
    with started(args, directory / "redis.log", clean_env(), directory):
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield port


def localised(command: list[str], replacements: dict[str, str]) -> list[str]:
    return [replacements.get(word, word) for word in command]


def wait_for(condition: str, check: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, condition
        time.sleep(0.05)


def _stored(url: str, query: str) -> list[object]:
    """The first column of ``query`` (``{schema}`` filled in) in the test's PostgreSQL schema."""

    async def fetch() -> list[object]:
        connection = await asyncpg.connect(url.partition("?")[0])
        try:
            schema = url.partition("search_path=")[2]
            rows = await connection.fetch(query.format(schema=schema))
            return [row[0] for row in rows]
        finally:
            await connection.close()

    return asyncio.run(fetch())


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_image_commands_bring_up_the_compose_stack(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed (the compose stack has Redis); .ci/run installs it")
    wheel = build_wheel(build_context(tmp_path), tmp_path / "wheels", deps=False)
    venv = fresh_venv(tmp_path / "venv", with_pip=False)
    import aiohttp  # any dependency: its directory is this checkout's site-packages

    dependencies = Path(aiohttp.__file__).resolve().parents[1]
    (site_packages(venv) / "_checkout_dependencies.pth").write_text(f"{dependencies}\n")
    pip("--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index", str(wheel))
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import llmproxy; print(llmproxy.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
        cwd=tmp_path,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), f"llmproxy imported from {where}, not the wheel"

    services = compose()["services"]
    no_env: dict[str, str] = {}
    gateway_env = compose_environment(services["llmproxy"], no_env)
    state, run, etc = tmp_path / "state", tmp_path / "run", tmp_path / "etc"
    for directory in (state, run, etc):
        directory.mkdir(mode=0o700)
    ports = {name: free_port() for name in ("gateway", "mock", "receiver")}
    mock_command = services["mock"]["command"]
    receiver = services["usage-receiver"]

    with (
        redis_with_password(gateway_env["REDIS_PASSWORD"], tmp_path) as redis_port,
        fresh_schema_sync() as keys_url,
    ):
        # compose/config.yaml, with only addresses and path prefixes changed (keys and usage go
        # to a fresh schema of the machine's PostgreSQL instead of the `postgres` service)
        text = COMPOSE_CONFIG.read_text()
        for old, new in {
            'listen: ":8000"': f'listen: "127.0.0.1:{ports["gateway"]}"',
            "http://mock:9001": f"http://127.0.0.1:{ports['mock']}",
            '"redis:6379"': f'"127.0.0.1:{redis_port}"',
            '"postgresql://llmproxy:${POSTGRES_PASSWORD}@postgres:5432/llmproxy"': f'"{keys_url}"',
            "http://usage-receiver:3100": f"http://127.0.0.1:{ports['receiver']}",
            "/run/llmproxy/": f"{run}/",
        }.items():
            assert old in text, old
            text = text.replace(old, new)
        config = etc / "config.yaml"
        config.write_text(text)

        command = image_command()
        config_in_image = command[command.index("--config") + 1]
        env = image_env(
            venv,
            LLMPROXY_CONFIG=str(config),
            LLMPROXY_HEALTH_URL=f"http://127.0.0.1:{ports['gateway']}/health",
            **gateway_env,
        )
        mock_env = image_env(
            venv,
            **{
                key: value.replace(":9001", f":{ports['mock']}")
                for key, value in compose_environment(services["mock"], no_env).items()
            },
        )
        to_local = {
            "0.0.0.0": "127.0.0.1",
            "9001": str(ports["mock"]),
            "3100": str(ports["receiver"]),
        }
        receiver_command = [
            str(venv / "bin" / "python"),
            str(REPO / "examples" / "webhook-receiver.py"),
            *[interpolate(word, no_env) for word in localised(receiver["command"], to_local)],
        ]
        assert receiver["entrypoint"][1] == "/srv/webhook-receiver.py"
        receiver_log = tmp_path / "receiver.log"

        with (
            started(
                [*entrypoint(venv), *localised(mock_command, to_local)],
                tmp_path / "mock.log",
                mock_env,
                state,
            ),
            started(receiver_command, receiver_log, image_env(venv), state),
        ):
            healthcheck(venv, mock_env, within=20)
            gateway_args = [
                *entrypoint(venv),
                *localised(command[1:], {config_in_image: str(config)}),
            ]
            with started(gateway_args, tmp_path / "gateway.log", env, state) as gateway:
                healthcheck(venv, env, within=30)
                base = f"http://127.0.0.1:{ports['gateway']}"
                assert httpx.get(f"{base}/ready").status_code == 200

                # `docker compose exec llmproxy llmproxy keys add`: LLMPROXY_CONFIG finds the socket
                issued = subprocess.run(
                    [*entrypoint(venv), "keys", "add", "--name", "smoke", "--rpm", "600", "--json"],
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=state,
                    timeout=30,
                )
                assert issued.returncode == 0, issued.stdout + issued.stderr
                secret = json.loads(issued.stdout)["secret"]
                headers = {"Authorization": f"Bearer {secret}"}
                assert httpx.get(f"{base}/v1/models", headers=headers).status_code == 200
                body = {"model": "mock-model", "messages": [{"role": "user", "content": "Hi"}]}
                answer = httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers)
                assert answer.status_code == 200, answer.text
                assert answer.headers["x-ratelimit-limit-requests"]  # limits through Redis
                assert httpx.post(f"{base}/v1/chat/completions", json=body).status_code == 401

                # the usage record reaches the receiver, which prints only signed deliveries
                wait_for(
                    "the usage receiver got no signed record",
                    lambda: "1 unique" in receiver_log.read_text(),
                    within=20,
                )
                # keys and usage records in PostgreSQL
                assert _stored(keys_url, "SELECT name FROM {schema}.llmproxy_keys") == ["smoke"]
                assert _stored(keys_url, "SELECT key_name FROM {schema}.llmproxy_usage") == [
                    "smoke"
                ]
                assert (run / "admin.sock").exists()

                gateway.send_signal(getattr(signal, dockerfile().final.one("STOPSIGNAL").args))
                assert gateway.wait(timeout=30) == 0, (tmp_path / "gateway.log").read_text()[-3000:]


@pytest.mark.timeout(900)
def test_image_install_resolves_dependencies_from_the_index_slow(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    # RUN pip wheel --wheel-dir /wheels ".[all]"
    build_wheel(build_context(tmp_path), wheels, deps=True, extras="[all]")
    venv = fresh_venv(tmp_path / "venv", with_pip=True)  # RUN python -m venv /opt/llmproxy
    install = [str(venv / "bin" / "pip"), "install", "--no-index", "--find-links", str(wheels)]
    result = subprocess.run(
        [*install, "llmproxy[all]"], capture_output=True, text=True, env=clean_env(), timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    env = image_env(venv)
    for check in (
        [str(venv / "bin" / "llmproxy"), "version"],
        [str(venv / "bin" / "pip"), "check"],
        [
            str(venv / "bin" / "python"),
            "-c",
            "import uvloop, httptools, lupa.luajit21, hiredis, asyncpg, msgspec, watchfiles",
        ],
    ):
        done = subprocess.run(
            check, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
        )
        assert done.returncode == 0, f"{check}: {done.stdout}{done.stderr}"

    port, mock_port = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'backends: [{{url: "http://127.0.0.1:{mock_port}"}}]\n'
        "usage: {enabled: false}\n"
        "admin: {enabled: false}\n"
    )
    env = image_env(venv, LLMPROXY_HEALTH_URL=f"http://127.0.0.1:{port}/health")
    mock = [*entrypoint(venv), "mock-backend", "--port", str(mock_port)]
    command = image_command()
    serve = [*entrypoint(venv), *localised(command[1:], {command[-1]: str(config)})]
    with (
        started(mock, tmp_path / "mock.log", env, tmp_path),
        started(serve, tmp_path / "gateway.log", env, tmp_path) as gateway,
    ):
        healthcheck(venv, env, within=30)
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=30) == 0
