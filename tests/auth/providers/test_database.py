"""The database provider against the real PostgreSQL and MariaDB, and a SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomysql
import asyncpg
import pytest

from llmproxy.apikey import PresentedKey
from llmproxy.auth.providers.base import ProviderError
from llmproxy.auth.providers.database import DatabaseProvider
from llmproxy.config.model import DatabaseConnection
from llmproxy.connections import ConnectionPools
from tests.auth.providers.conftest import MYSQL_DSN, POSTGRES_DSN

# Per dialect: how to quote the reserved word `key`, column types, and a statement slow enough
# to outlast a short timeout (SQLite computes instead of sleeping: it has no sleep()).
_KEY = {"postgres": '"key"', "mysql": "`key`", "sqlite": '"key"'}
_TIME = {"postgres": "TIMESTAMP", "mysql": "DATETIME", "sqlite": "TEXT"}
_SLOW = {
    "postgres": "SELECT pg_sleep(3) IS NULL AS slept WHERE $1::text IS NOT NULL",
    "mysql": "SELECT SLEEP(3) AS slept FROM DUAL WHERE ? IS NOT NULL",
    "sqlite": (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) "
        "SELECT count(*) AS n FROM c WHERE ? IS NOT NULL"
    ),
}


@dataclass
class SQLServer:
    """A database to test against: its driver, DSN, and a way to run setup statements."""

    driver: str
    dialect: str
    dsn: str
    sqlite_file: Path | None = None

    async def execute(self, statement: str, *args: Any) -> None:
        if self.dialect == "postgres":
            connection = await asyncpg.connect(self.dsn)
            try:
                await connection.execute(statement.replace("?", "$1"), *args)
            finally:
                await connection.close()
        elif self.dialect == "mysql":
            connection = await aiomysql.connect(
                host="127.0.0.1", user="root", db="test", autocommit=True
            )
            try:
                async with connection.cursor() as cursor:
                    await cursor.execute(statement.replace("?", "%s"), args or None)
            finally:
                connection.close()
        else:
            assert self.sqlite_file is not None
            with sqlite3.connect(self.sqlite_file) as connection:
                connection.execute(statement, args)
            connection.close()

    def connection(self, **settings: Any) -> DatabaseConnection:
        return DatabaseConnection.model_validate(
            {"driver": self.driver, "dsn": self.dsn, "timeout": 1.0} | settings
        )


@pytest.fixture(params=["postgres", "mysql", "sqlite"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> SQLServer:
    if request.param == "postgres":
        return SQLServer("postgres", "postgres", POSTGRES_DSN)
    if request.param == "mysql":
        return SQLServer("mariadb", "mysql", MYSQL_DSN)
    path = tmp_path / "keys.db"
    return SQLServer("sqlite", "sqlite", f"sqlite://{path}", sqlite_file=path)


@pytest.fixture
async def table(server: SQLServer, run_id: str, key: PresentedKey) -> AsyncIterator[str]:
    """A keys table unique to this test, holding ``key`` and one other key; dropped afterwards."""
    name = f"llmproxy_keys_{run_id}"
    quoted_key = _KEY[server.dialect]
    await server.execute(
        f"CREATE TABLE {name} ({quoted_key} VARCHAR(200) PRIMARY KEY, user_id VARCHAR(50), "
        f"status VARCHAR(20), total_quota NUMERIC(20, 0), balance NUMERIC(10, 2), "
        f"expires_at {_TIME[server.dialect]} NULL, note TEXT NULL)"
    )
    try:
        insert = (
            f"INSERT INTO {name} ({quoted_key}, user_id, status, total_quota, balance, expires_at)"
            " VALUES (?, 'u1', 'active', 1000000, 12.50, '2030-01-02 03:04:05')"
        )
        await server.execute(insert, key.secret)
        await server.execute(
            f"INSERT INTO {name} ({quoted_key}, user_id, status) VALUES ('sk-other', 'u2', 'off')"
        )
        yield name
    finally:
        await server.execute(f"DROP TABLE {name}")


async def opened(
    server: SQLServer, pools: ConnectionPools, name: str = "sql", **settings: Any
) -> DatabaseProvider:
    provider = DatabaseProvider(name, server.connection(**settings), pools)
    await provider.open()
    return provider


async def test_table_lookup_returns_the_row(server, pools, table, key):
    """table/key_column find the row; every column but the secret becomes JSON-like data."""
    provider = await opened(server, pools, table=table)
    expires = "2030-01-02 03:04:05" if server.dialect == "sqlite" else "2030-01-02T03:04:05"
    assert await provider.lookup(key) == {
        "user_id": "u1",
        "status": "active",
        "total_quota": 1000000,
        "balance": 12.5,
        "expires_at": expires,
        "note": None,
    }


async def test_fields_select_the_columns(server, pools, table, key):
    """fields limit the data to the listed columns."""
    provider = await opened(server, pools, table=table, fields=["status", "total_quota"])
    assert await provider.lookup(key) == {"status": "active", "total_quota": 1000000}


async def test_unknown_key_is_none(server, pools, table):
    """A key with no row is unknown (None), not an error."""
    provider = await opened(server, pools, table=table)
    assert await provider.lookup(PresentedKey.of("sk-nobody-has-this")) is None


@pytest.mark.parametrize("placeholder", ["$1", "?", "%s"])
async def test_custom_query_receives_the_key(server, pools, table, key, placeholder):
    """A custom query gets the key through $1, ? or %s, whatever the driver."""
    query = (
        f"SELECT user_id AS owner, status, 'it''s 100% ?' AS note FROM {table} "
        f"WHERE {_KEY[server.dialect]} = {placeholder} AND status <> 'x'"
    )
    provider = await opened(server, pools, query=query)
    assert await provider.lookup(key) == {"owner": "u1", "status": "active", "note": "it's 100% ?"}
    assert await provider.lookup(PresentedKey.of("sk-nobody-has-this")) is None


async def test_custom_query_with_fields_keeps_those_columns(server, pools, table, key):
    """With a custom query, fields keep only the named result columns."""
    query = f"SELECT * FROM {table} WHERE {_KEY[server.dialect]} = ?"
    provider = await opened(server, pools, query=query, fields=["user_id"])
    assert await provider.lookup(key) == {"user_id": "u1"}


@pytest.mark.parametrize(
    "settings",
    [
        {"table": "api_keys; DROP TABLE users"},
        {"key_column": "key = key OR 1"},
        {"fields": ["status", "(SELECT 1)"]},
        {"query": "SELECT * FROM api_keys"},
    ],
)
def test_bad_configuration_is_refused_at_construction(server, settings):
    """Names that are not plain identifiers, or a query without its parameter, never run."""
    with pytest.raises(ValueError, match="database provider 'sql': "):
        DatabaseProvider("sql", server.connection(**settings), ConnectionPools())


async def test_missing_table_is_a_provider_error(server, pools, key, run_id):
    """A SQL error (missing table) is a ProviderError naming the provider, never the key."""
    provider = await opened(server, pools, table=f"llmproxy_missing_{run_id}")
    if server.dialect == "sqlite":
        await server.execute("CREATE TABLE unrelated (x)")  # the file exists, the table not
    with pytest.raises(
        ProviderError, match=f"database 'sql': .*llmproxy_missing_{run_id}"
    ) as caught:
        await provider.lookup(key)
    assert key.secret not in str(caught.value)


async def test_slow_query_times_out_and_the_provider_recovers(server, pools, table, key):
    """A query past `timeout` is a ProviderError on time, and the next lookup works."""
    slow = await opened(server, pools, "slow", query=_SLOW[server.dialect], timeout=0.3)
    fast = await opened(server, pools, table=table, timeout=2.0)
    started = time.monotonic()
    with pytest.raises(ProviderError, match=r"database 'slow': timeout after 0.3s"):
        await slow.lookup(key)
    assert time.monotonic() - started < 1.0
    assert (await fast.lookup(key) or {}).get("user_id") == "u1"
    await slow.close()
    await fast.close()


async def test_concurrent_lookups_through_a_small_pool(server, pools, table, key):
    """Many lookups at once through a pool of two connections all answer correctly."""
    provider = await opened(server, pools, table=table, fields=["user_id"], pool_size=2)
    other = PresentedKey.of("sk-other")
    results = await asyncio.gather(*(provider.lookup(key if n % 2 else other) for n in range(60)))
    assert results == [{"user_id": "u1" if n % 2 else "u2"} for n in range(60)]


@pytest.mark.parametrize(
    ("driver", "dsn"),
    [
        ("postgres", "postgres://postgres:hunter2secret@127.0.0.1:1/test"),
        ("mysql", "root:hunter2secret@tcp(127.0.0.1:1)/test"),
    ],
)
async def test_server_down_fails_within_the_timeout(pools, key, driver, dsn):
    """A server that refuses connections is a ProviderError within the timeout, no password."""
    conn = DatabaseConnection(driver=driver, dsn=dsn, timeout=0.5)
    provider = DatabaseProvider("down", conn, pools)
    await provider.open()
    started = time.monotonic()
    with pytest.raises(ProviderError, match="database 'down': ") as caught:
        await provider.lookup(key)
    assert time.monotonic() - started < 1.0
    assert "hunter2secret" not in str(caught.value)
    assert key.secret not in str(caught.value)


async def test_mysql_seed_dsn_form(pools, key, run_id):
    """The seed's Go DSN root:@tcp(127.0.0.1:3306)/test reaches MariaDB."""
    server = SQLServer("mysql", "mysql", "root:@tcp(127.0.0.1:3306)/test")
    table_name = f"llmproxy_seed_{run_id}"
    await server.execute(f"CREATE TABLE {table_name} (`key` VARCHAR(200), status VARCHAR(20))")
    try:
        await server.execute(f"INSERT INTO {table_name} VALUES (?, 'active')", key.secret)
        provider = await opened(server, pools, table=table_name)
        assert await provider.lookup(key) == {"status": "active"}
    finally:
        await server.execute(f"DROP TABLE {table_name}")


async def test_postgres_argument_errors_do_not_quote_the_key(pools, key, run_id):
    """asyncpg quotes a rejected argument in its error; the ProviderError has it scrubbed."""
    server = SQLServer("postgres", "postgres", POSTGRES_DSN)
    table_name = f"llmproxy_ints_{run_id}"
    await server.execute(f"CREATE TABLE {table_name} (id INTEGER PRIMARY KEY)")
    try:
        provider = await opened(server, pools, table=table_name, key_column="id")
        with pytest.raises(ProviderError, match="invalid input") as caught:
            await provider.lookup(key)
        assert key.secret not in str(caught.value)
        assert "***" in str(caught.value)
    finally:
        await server.execute(f"DROP TABLE {table_name}")


async def test_sqlite_missing_file_is_a_provider_error(pools, key, tmp_path):
    """A SQLite file that does not exist is a ProviderError naming the file."""
    missing = tmp_path / "missing.db"
    provider = DatabaseProvider(
        "lite", DatabaseConnection(driver="sqlite", dsn=str(missing)), pools
    )
    await provider.open()
    with pytest.raises(ProviderError, match=f"database 'lite': {missing}: unable to open"):
        await provider.lookup(key)
    assert not missing.exists()  # read-only mode never creates it


async def test_sqlite_is_opened_read_only(pools, key, tmp_path):
    """A writing query against SQLite fails: the provider cannot change the key store."""
    path = tmp_path / "keys.db"
    server = SQLServer("sqlite", "sqlite", str(path), sqlite_file=path)
    await server.execute('CREATE TABLE api_keys ("key" TEXT, status TEXT)')
    await server.execute("INSERT INTO api_keys VALUES (?, 'active')", key.secret)
    query = "UPDATE api_keys SET status = 'hacked' WHERE key = ? RETURNING status"
    provider = await opened(server, pools, "lite", query=query)
    with pytest.raises(ProviderError, match="readonly database"):
        await provider.lookup(key)
    reader = await opened(server, pools, "reader")
    assert await reader.lookup(key) == {"status": "active"}
    await provider.close()
    await reader.close()


async def test_mysql_url_and_go_forms_share_one_pool(pools):
    """Two DSN forms naming the same MySQL server and user share one pool."""
    url = await pools.mysql("mysql://root:@127.0.0.1:3306/test", 4, 1.0)
    go = await pools.mysql("root:@tcp(127.0.0.1:3306)/test", 4, 1.0)
    assert url is go


async def test_postgres_providers_naming_one_dsn_share_one_pool(pools, key, run_id):
    """Providers naming the same PostgreSQL DSN share one pool; another DSN gets its own."""
    server = SQLServer("postgres", "postgres", POSTGRES_DSN)
    first = await pools.postgres(POSTGRES_DSN, 4, 1.0)
    assert await pools.postgres(POSTGRES_DSN, 10, 2.0) is first
    assert await pools.postgres(POSTGRES_DSN + "?application_name=x", 4, 1.0) is not first
    table_name = f"llmproxy_shared_{run_id}"
    await server.execute(f"CREATE TABLE {table_name} (key TEXT, status TEXT)")
    try:
        await server.execute(f"INSERT INTO {table_name} VALUES (?, 'active')", key.secret)
        a = await opened(server, pools, "a", table=table_name, pool_size=4)
        b = await opened(server, pools, "b", table=table_name, fields=["status"], pool_size=4)
        assert await a.lookup(key) == await b.lookup(key) == {"status": "active"}
        assert first.get_size() == 1  # both lookups went through the one shared connection
    finally:
        await server.execute(f"DROP TABLE {table_name}")
