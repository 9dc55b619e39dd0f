"""Fixtures for the limits: stores on the real Redis (a unique prefix per test, deleted
afterwards) and a private redis-server this test may pause, kill and restart."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio

from llmproxy.config.model import RedisConnection
from llmproxy.connections import ConnectionPools
from llmproxy.limits import Admission, MemoryLimitStore, RedisLimitStore

SHARED_REDIS = "127.0.0.1:6379"


class Clients:
    """Redis clients made the gateway's way (:class:`ConnectionPools`), one registry each — one
    gateway process each — all closed when the test ends."""

    def __init__(self) -> None:
        self._registries: list[ConnectionPools] = []

    async def new(self, addr: str = SHARED_REDIS, wait: float = 2.0) -> redis.asyncio.Redis:
        """A client of ``addr`` whose commands and connects give up after ``wait`` seconds."""
        pools = ConnectionPools()
        self._registries.append(pools)
        return await pools.redis(RedisConnection(addr=addr, timeout=wait))

    async def close(self) -> None:
        for pools in self._registries:
            await pools.close()


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    registry = Clients()
    try:
        yield registry
    finally:
        await registry.close()


@pytest.fixture
def prefix() -> str:
    """Keys of this test only, under the shared Redis."""
    return f"llmproxy-test:limits:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def shared_redis(prefix: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of the machine's Redis; every key under ``prefix`` is deleted afterwards."""
    client = redis.asyncio.Redis(host="127.0.0.1", port=6379, decode_responses=True)
    try:
        yield client
    finally:
        stale = [name async for name in client.scan_iter(match=f"{prefix}*", count=1000)]
        if stale:
            await client.delete(*stale)
        await client.aclose()


@pytest.fixture
async def redis_stores(
    shared_redis: redis.asyncio.Redis, prefix: str, clients: Clients
) -> AsyncIterator[list[RedisLimitStore]]:
    """Four independent stores on one key space, each with its own client (four processes)."""
    stores = [RedisLimitStore(await clients.new(), prefix=prefix, timeout=2.0) for _ in range(4)]
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


@pytest.fixture(params=["memory", "redis"])
def store(
    request: pytest.FixtureRequest, redis_stores: list[RedisLimitStore]
) -> MemoryLimitStore | RedisLimitStore:
    """The same behaviour is pinned for both stores."""
    if request.param == "memory":
        return MemoryLimitStore()
    return redis_stores[0]


async def eventually(condition: Callable[[], bool | Awaitable[bool]], within: float = 3.0) -> None:
    """Wait until ``condition()`` holds (a background repair has run), failing after ``within``."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def lease_of(admission: Admission) -> str:
    """The lease of an admission that must have one."""
    assert admission.lease is not None, admission
    return admission.lease


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A redis-server child process on a free port: pause it, kill it, start it again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if self._pings():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing is answered."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """Terminate: connections are refused until :meth:`start`."""
        if self.process is None:
            return
        if self.paused:
            self.resume()
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def _pings(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own (never the machine's shared one)."""
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
