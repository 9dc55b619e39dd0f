"""The key store contract, on SQLite and on the real PostgreSQL: one behaviour, two databases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from llmproxy.apikey import key_sha256
from llmproxy.keystore import KeyNotFound, KeyStoreError
from llmproxy.keystore.access import KeyStoreAccess, open_key_store
from llmproxy.keystore.postgres import SCHEMA_VERSION, PostgresKeyStore
from tests.postgres import fresh_schema


@pytest.fixture(params=["sqlite", "postgres"])
async def location(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "keys.db")
        return
    async with fresh_schema() as url:
        yield url


@pytest.fixture
async def store(location: str, tmp_path: Path) -> AsyncIterator[KeyStoreAccess]:
    opened = open_key_store(location, tmp_path)
    await opened.open()
    yield opened
    await opened.close()


async def test_add_stores_the_hash_and_the_fields(store: KeyStoreAccess) -> None:
    """A new key: its secret once, only its hash and prefix stored, every field as given."""
    secret, record = await store.add(
        name="ci",
        user_id="team-a",
        models=["llama"],
        allowed_ips=["10.0.0.0/8"],
        expires_at=1_900_000_000,
        total_quota=1000,
        rpm=60,
        metadata={"tier": "gold", "n": [1, 2]},
    )
    assert record.sha256 == key_sha256(secret)
    assert secret.startswith(record.prefix.removesuffix("…"))
    assert (record.models, record.allowed_ips) == (("llama",), ("10.0.0.0/8",))
    assert (record.expires_at, record.total_quota, record.rpm) == (1_900_000_000.0, 1000, 60)
    assert dict(record.metadata) == {"tier": "gold", "n": [1, 2]}
    assert await store.get(record.id) == record
    assert [r.id for r in await store.list()] == [record.id]


async def test_duplicates_bad_values_and_unknown_ids(store: KeyStoreAccess) -> None:
    """The same secret twice, a bad field value and an unknown id are refused, naming why."""
    secret, record = await store.add(name="ci")
    with pytest.raises(ValueError, match=f"already in the store as {record.id}"):
        await store.import_key(secret, name="again")
    with pytest.raises(ValueError, match="rpm"):
        await store.add(name="bad", rpm=-1)
    with pytest.raises(ValueError, match="at most"):
        await store.add(name="huge", total_quota=2**63)
    with pytest.raises(KeyNotFound, match="key_nope"):
        await store.revoke("key_nope")
    with pytest.raises(KeyNotFound):
        await store.update("key_nope", name="x")
    assert await store.get("key_nope") is None
    assert len(await store.list()) == 1


async def test_update_revoke_and_listing(store: KeyStoreAccess) -> None:
    """update() changes and clears fields; revoke() is final and idempotent; listings by user."""
    _, first = await store.add(name="a", user_id="u1", rpm=5)
    _, second = await store.add(name="b", user_id="u2")
    changed = await store.update(first.id, rpm=None, name="renamed")
    assert (changed.rpm, changed.name) == (None, "renamed")
    assert changed.updated_at >= first.updated_at
    revoked = await store.revoke(second.id)
    assert revoked.revoked
    assert revoked.status == "disabled"
    assert await store.revoke(second.id) == revoked
    with pytest.raises(ValueError, match="revoked"):
        await store.update(second.id, name="x")
    assert [r.id for r in await store.list()] == [first.id]
    assert [r.id for r in await store.list(True)] == [first.id, second.id]
    assert [r.id for r in await store.list(True, user_id="u2")] == [second.id]


async def test_add_usage_counts_a_batch(store: KeyStoreAccess) -> None:
    """add_usage() adds a batch of counts in one call, skipping ids the store does not hold."""
    _, first = await store.add(name="a", total_quota=100)
    _, second = await store.add(name="b")
    await store.add_usage({first.id: 7, second.id: 3, "key_other": 9})
    await store.add_usage({first.id: 5, second.id: 0})
    found = [await store.get(first.id), await store.get(second.id)]
    assert [r.used_quota for r in found if r is not None] == [12, 3]


async def test_changes_from_a_cursor(store: KeyStoreAccess) -> None:
    """changes(None) is every live key; from its cursor nothing, until a key changes; a store
    may answer with everything again (SQLite) or only the change (PostgreSQL) — a revoked key
    is never among the live ones."""
    _, kept = await store.add(name="kept")
    _, dropped = await store.add(name="dropped")
    everything = await store.changes(None)
    assert everything.complete
    assert {r.id for r in everything.records} == {kept.id, dropped.id}
    quiet = await store.changes(everything.cursor)
    assert quiet.records == []
    assert not quiet.complete
    await store.revoke(dropped.id)
    after = await store.changes(quiet.cursor)
    live = {r.id for r in after.records if not r.revoked}
    if after.complete:
        assert live == {kept.id}
    else:
        assert [(r.id, r.revoked) for r in after.records] == [(dropped.id, True)]
    assert (await store.changes(after.cursor)).records == []


async def test_postgres_announces_changes_and_migrates_once(pg_url: str) -> None:
    """Two stores opening one new database together create the schema once; a write through one
    is announced to the other's listener, with the key's id, within a fraction of a second."""
    first, second = PostgresKeyStore(pg_url), PostgresKeyStore(pg_url)
    await asyncio.gather(first.open(), second.open())
    heard: list[str] = []
    arrived = asyncio.Event()

    def on_change(key_id: str) -> None:
        heard.append(key_id)
        if key_id:
            arrived.set()

    second.on_change(on_change)
    try:
        await asyncio.sleep(0.3)  # the listener connects
        started = time.monotonic()
        _, record = await first.add(name="ci")
        await asyncio.wait_for(arrived.wait(), 1.0)
        assert time.monotonic() - started < 0.5
        assert record.id in heard
        url = pg_url.replace("postgresql://", "postgresql://x:hunter2@", 1).replace("postgres@", "")
    finally:
        await first.close()
        await second.close()
    connection = await asyncpg.connect(pg_url.partition("?")[0])
    try:
        schema = pg_url.partition("search_path=")[2]
        version = await connection.fetchval(
            f"SELECT version FROM {schema}.llmproxy_schema WHERE component = 'keys'"
        )
        assert version == SCHEMA_VERSION == 3
    finally:
        await connection.close()
    # A failure names the database without its password.
    broken = PostgresKeyStore(url.replace("127.0.0.1:5432", "127.0.0.1:1"))
    with pytest.raises(KeyStoreError) as caught:
        await broken.open()
    assert "hunter2" not in str(caught.value)
    assert "127.0.0.1:1" in str(caught.value)


async def test_a_newer_schema_is_refused(pg_url: str) -> None:
    """A database migrated by a newer llmproxy is refused with a message, not misread."""
    store = PostgresKeyStore(pg_url)
    await store.open()
    await store.close()
    connection = await asyncpg.connect(pg_url.partition("?")[0])
    schema = pg_url.partition("search_path=")[2]
    await connection.execute(f"UPDATE {schema}.llmproxy_schema SET version = 99")
    await connection.close()
    with pytest.raises(KeyStoreError, match="newer than this llmproxy"):
        await PostgresKeyStore(pg_url).open()
