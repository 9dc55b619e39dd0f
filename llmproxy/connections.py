"""Shared, pooled clients for the servers the gateway talks to: Redis, PostgreSQL, MySQL, HTTP.

Two providers (or a provider and the Redis rate limiter) that name the same server share one pool
instead of each opening their own::

    pools = ConnectionPools()
    client = await pools.redis(provider_config.redis)      # same server/db/user → same client
    pool = await pools.postgres(dsn, pool_size=10, timeout=2.0)
    ...
    await pools.close()                                      # once, when nothing uses them any more

Pools are created on first use, inside the running loop, and creating one opens no connection:
a server that is down shows up as an error on the first command, not here. When a pool cannot even
be created (a malformed DSN), :class:`PoolError` says so without the password.

The first caller's sizes and timeouts shape a shared pool; later callers naming the same server
get that pool as it is. Redis clients decode replies to ``str`` and retry a command once, at once,
when its pooled connection turns out to be broken (a Redis restart), never after a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import aiohttp

from llmproxy.config.model import RedisConnection
from llmproxy.dsn import (
    REDIS_DEFAULT_PORT,
    MySQLTarget,
    parse_mysql_dsn,
    postgres_dsn,
    scrub_dsn,
    split_host_port,
)
from llmproxy.extras import MissingExtra, require

if TYPE_CHECKING:  # the drivers are extras, imported when a pool of theirs is made
    import aiomysql
    import asyncpg
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

_RedisKey = tuple[str, int, str, str, int, bool]


class PoolError(Exception):
    """A shared pool could not be created (or the registry is closed).

    The message names the server (DSN with the password scrubbed) and the cause.
    """


class ConnectionPools:
    """A registry of shared pools, keyed by the server each one names.

    ``redis_max_connections`` bounds each Redis pool (callers beyond it wait for a free
    connection); ``http_max_connections`` bounds the shared HTTP session.
    """

    def __init__(self, *, redis_max_connections: int = 64, http_max_connections: int = 100) -> None:
        self._redis_max_connections = redis_max_connections
        self._http_max_connections = http_max_connections
        self._redis: dict[_RedisKey, Redis] = {}
        self._postgres: dict[str, asyncpg.Pool] = {}
        self._mysql: dict[MySQLTarget, aiomysql.Pool] = {}
        self._http: aiohttp.ClientSession | None = None
        self._creating = asyncio.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has begun; users of the pools must stop using them."""
        return self._closed

    async def redis(self, conn: RedisConnection) -> Redis:
        """The client for ``conn``'s server, database and credentials (``key_pattern`` aside)."""
        try:
            host, port = split_host_port(conn.addr, REDIS_DEFAULT_PORT)
        except ValueError as exc:
            raise PoolError(f"redis {conn.addr!r}: {exc}") from None
        key = (host, port, conn.username, conn.password, conn.db, conn.tls)
        async with self._creating:
            self._check_open()
            client = self._redis.get(key)
            if client is None:
                client = self._redis[key] = self._new_redis(host, port, conn)
        return client

    def _new_redis(self, host: str, port: int, conn: RedisConnection) -> Redis:
        _driver("redis", f"redis {conn.addr!r}")
        import redis.exceptions
        from redis.asyncio import BlockingConnectionPool, Connection, Redis, SSLConnection
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        connection_class = SSLConnection if conn.tls else Connection
        pool = BlockingConnectionPool(
            max_connections=self._redis_max_connections,
            timeout=conn.timeout,  # wait for a free connection
            connection_class=connection_class,
            host=host,
            port=port,
            db=conn.db,
            username=conn.username or None,
            password=conn.password or None,
            socket_connect_timeout=conn.timeout,
            socket_timeout=conn.timeout,
            decode_responses=True,
            # One immediate retry on a broken connection; a timeout is not retried, so a command
            # that may have run (a rate-limit script) does not run twice because it was slow.
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
        )
        return Redis.from_pool(pool)

    async def postgres(
        self,
        dsn: str,
        pool_size: int,
        timeout: float,  # noqa: ASYNC109 - the pool's connect/command timeout, not this call's
    ) -> asyncpg.Pool:
        """The asyncpg pool for ``dsn`` (a ``postgres://`` URL or libpq ``key=value`` string)."""
        try:
            url = postgres_dsn(dsn)
        except ValueError as exc:
            raise PoolError(str(exc)) from None
        _driver("postgres", f"postgres {scrub_dsn(url)}")
        import asyncpg

        async with self._creating:
            self._check_open()
            pool = self._postgres.get(url)
            if pool is None:
                try:
                    pool = await asyncpg.create_pool(
                        url,
                        min_size=0,
                        max_size=pool_size,
                        timeout=timeout,
                        command_timeout=timeout,
                        max_inactive_connection_lifetime=300.0,
                    )
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, ValueError) as exc:
                    cause = _without(str(exc), _url_password(url))
                    raise PoolError(f"postgres {scrub_dsn(url)}: {cause}") from None
                self._postgres[url] = pool
        return pool

    async def mysql(
        self,
        dsn: str,
        pool_size: int,
        timeout: float,  # noqa: ASYNC109 - the pool's connect timeout, not this call's
    ) -> aiomysql.Pool:
        """The aiomysql pool for ``dsn`` (``mysql://`` URL or Go's ``user:pass@tcp(host)/db``).

        Connections run in autocommit mode, so every query sees the latest committed rows (a
        pooled connection left inside a transaction would keep reading an old snapshot).
        """
        try:
            target = parse_mysql_dsn(dsn)
        except ValueError as exc:
            raise PoolError(str(exc)) from None
        _driver("mysql", f"mysql {scrub_dsn(dsn)}")
        import aiomysql

        async with self._creating:
            self._check_open()
            pool = self._mysql.get(target)
            if pool is None:
                try:
                    pool = await aiomysql.create_pool(
                        minsize=0,
                        maxsize=pool_size,
                        pool_recycle=3600,
                        host=target.host,
                        port=target.port,
                        unix_socket=target.unix_socket or None,
                        user=target.user,
                        password=target.password,
                        db=target.database or None,
                        charset=target.charset,
                        connect_timeout=timeout,
                        autocommit=True,
                    )
                except (aiomysql.Error, OSError, ValueError) as exc:
                    cause = _without(str(exc), target.password)
                    raise PoolError(f"mysql {scrub_dsn(dsn)}: {cause}") from None
                self._mysql[target] = pool
        return pool

    def http(self) -> aiohttp.ClientSession:
        """The shared HTTP session (call it inside the running loop).

        The session has no overall timeout: each request bounds itself.
        """
        self._check_open()
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._http_max_connections),
                timeout=aiohttp.ClientTimeout(total=None),
                trust_env=False,
            )
        return self._http

    async def close(self, grace: float = 5.0) -> None:
        """Close every pool, each within ``grace`` seconds, then force what is left.

        1. refuse new pools; 2. ask each pool to close gracefully (in-flight queries finish);
        3. terminate the pools that did not close in time.
        """
        async with self._creating:  # a pool being created now is registered before we look
            self._closed = True
        closers: list[tuple[str, Callable[[], Awaitable[None]], Callable[[], None]]] = []
        for client in self._redis.values():
            closers.append(("redis", client.aclose, _noop))
        for pg_pool in self._postgres.values():
            closers.append(("postgres", pg_pool.close, pg_pool.terminate))
        for my_pool in self._mysql.values():
            closers.append(("mysql", _mysql_closer(my_pool), my_pool.terminate))
        if self._http is not None:
            closers.append(("http", self._http.close, _noop))
        self._redis, self._postgres, self._mysql, self._http = {}, {}, {}, None
        await asyncio.gather(*(_close_one(*closer, grace=grace) for closer in closers))

    def _check_open(self) -> None:
        if self._closed:
            raise PoolError("the connection pools are closed (the runtime is shutting down)")


async def _close_one(
    kind: str, close: Callable[[], Awaitable[None]], force: Callable[[], None], *, grace: float
) -> None:
    try:
        async with asyncio.timeout(grace):
            await close()
    except TimeoutError:
        logger.warning("%s pool did not close within %.1fs; closing its connections", kind, grace)
        force()
    except Exception as exc:
        logger.warning("closing a %s pool failed: %s", kind, exc)
        with contextlib.suppress(Exception):
            force()


def _mysql_closer(pool: aiomysql.Pool) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        pool.close()
        await pool.wait_closed()

    return close


def _driver(extra: str, server: str) -> None:
    """A :class:`PoolError` naming the extra to install when ``extra``'s driver is missing."""
    try:
        require(extra, server)
    except MissingExtra as exc:
        raise PoolError(str(exc)) from None


def _noop() -> None:
    pass


def _url_password(url: str) -> str:
    try:
        return unquote(urlsplit(url).password or "")
    except ValueError:
        return ""


def _without(text: str, secret: str) -> str:
    """``text`` with ``secret`` replaced by ``***`` (a driver may echo what it was given)."""
    return text.replace(secret, "***") if secret else text
