"""The builtin provider: lookups from memory, changes by other processes picked up."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from llmproxy.apikey import PresentedKey, key_sha256
from llmproxy.auth.providers.base import KeyData, KeyProvider, ProviderError
from llmproxy.auth.providers.builtin import QUOTA_FLUSH_INTERVAL, BuiltinProvider
from llmproxy.keystore import KeyStore

REFRESH = 0.05


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "keys.db"


@pytest.fixture
def writer(path: Path) -> Iterator[KeyStore]:
    """The store as the CLI or another gateway process writes it: its own connection."""
    with KeyStore(path) as store:
        yield store


@pytest.fixture
async def provider(path: Path, writer: KeyStore) -> AsyncIterator[BuiltinProvider]:
    opened = BuiltinProvider("builtin", path, refresh_interval=REFRESH)
    await opened.open()
    yield opened
    await opened.close()


async def _eventually_found(provider: BuiltinProvider, secret: str, bound: float) -> None:
    """Wait until ``secret`` is found; fails after ``bound`` seconds."""
    started = time.monotonic()
    while await provider.lookup(PresentedKey.of(secret)) is None:
        assert time.monotonic() - started < bound, "key never became visible"
        await asyncio.sleep(0.005)


def test_provider_satisfies_the_protocol(path: Path) -> None:
    """BuiltinProvider is a KeyProvider."""
    provider: KeyProvider = BuiltinProvider("builtin", path)
    assert provider.name == "builtin"


async def test_lookup_found_unknown_and_revoked(writer: KeyStore, path: Path) -> None:
    """A stored key is found, an unknown one is None, a revoked one is None after reload_now."""
    secret, record = writer.add(name="ci", user_id="team-a")
    provider = BuiltinProvider("builtin", path, refresh_interval=60)
    await provider.open()
    try:
        data = await provider.lookup(PresentedKey.of(secret))
        assert data is not None
        assert data["id"] == record.id
        assert data["user_id"] == "team-a"
        assert await provider.lookup(PresentedKey.of("sk-unknown")) is None
        writer.revoke(record.id)
        await provider.reload_now()
        assert await provider.lookup(PresentedKey.of(secret)) is None
    finally:
        await provider.close()


async def test_disabled_key_is_still_found(provider: BuiltinProvider, writer: KeyStore) -> None:
    """A disabled (not revoked) key is found with its status, for the pipeline to refuse."""
    secret, record = writer.add(name="ci")
    writer.update(record.id, status="disabled")
    await provider.reload_now()
    data = await provider.lookup(PresentedKey.of(secret))
    assert data is not None
    assert data["status"] == "disabled"


async def test_key_added_elsewhere_appears_within_the_refresh_interval(
    provider: BuiltinProvider, writer: KeyStore
) -> None:
    """A key added by another process is visible within about one refresh_interval."""
    secret, _ = writer.add(name="late")
    # One interval plus a reload; the slack only absorbs a loaded CI machine.
    await _eventually_found(provider, secret, bound=REFRESH * 20)


async def test_revoked_elsewhere_disappears_within_the_refresh_interval(
    provider: BuiltinProvider, writer: KeyStore
) -> None:
    """A key revoked by another process is gone within about one refresh_interval."""
    secret, record = writer.add(name="doomed")
    await provider.reload_now()
    assert await provider.lookup(PresentedKey.of(secret)) is not None
    writer.revoke(record.id)
    started = time.monotonic()
    while await provider.lookup(PresentedKey.of(secret)) is not None:
        assert time.monotonic() - started < 2.0, "revoked key still served"
        await asyncio.sleep(0.005)


async def test_reload_now_makes_a_change_visible_at_once(writer: KeyStore, path: Path) -> None:
    """With a long refresh interval, reload_now() (and invalidate(), soon) show a new key."""
    provider = BuiltinProvider("builtin", path, refresh_interval=60)
    await provider.open()
    try:
        secret, _ = writer.add(name="new")
        assert await provider.lookup(PresentedKey.of(secret)) is None
        await provider.reload_now()
        assert await provider.lookup(PresentedKey.of(secret)) is not None
        other, _ = writer.add(name="newer")
        provider.invalidate()
        await _eventually_found(provider, other, bound=2.0)
    finally:
        await provider.close()


async def test_lookups_do_no_io(
    provider: BuiltinProvider, writer: KeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Lookups never suspend and still answer when the store's connection is gone."""
    secret, record = writer.add(name="ci")
    await provider.reload_now()
    # Close the provider's own connection: any SQL from lookup would now raise.
    await provider.store.close()
    for presented, expected_id in (
        (PresentedKey.of(secret), record.id),
        (PresentedKey.of("x"), None),
    ):
        coroutine = provider.lookup(presented)
        # A coroutine that finishes on its first step awaited nothing: no thread, no socket.
        with pytest.raises(StopIteration) as finished:
            coroutine.send(None)
        data = finished.value.value
        assert (data["id"] if data is not None else None) == expected_id
    # The refresh task fails from now on, and the index it loaded keeps serving.
    writer.add(name="unseen")
    await asyncio.sleep(REFRESH * 3)
    assert await provider.lookup(PresentedKey.of(secret)) is not None
    failures = [entry for entry in caplog.records if "serving the keys loaded" in entry.message]
    assert len(failures) == 1, "a failing store is logged once, not every interval"
    with pytest.raises(ProviderError, match="cannot read"):
        await provider.reload_now()


async def test_data_has_the_pipeline_fields_and_no_secret(
    provider: BuiltinProvider, writer: KeyStore
) -> None:
    """The looked-up data carries the static-key fields, read-only, and nothing of the secret."""
    secret, record = writer.add(
        name="ci",
        user_id="team-a",
        models=["llama"],
        allowed_ips=["10.0.0.0/8"],
        expires_at=1_900_000_000,
        total_quota=1000,
        rpm=60,
        metadata={"tier": "gold"},
    )
    writer.add_usage({record.id: 12})
    await provider.reload_now()
    data: KeyData | None = await provider.lookup(PresentedKey.of(secret))
    assert data is not None
    assert set(data) == {
        "id", "name", "prefix", "sha256", "user_id", "status", "expires_at", "models",
        "allowed_ips", "total_quota", "used_quota", "rpm", "burst", "tpm", "max_concurrent",
        "priority", "metadata", "team", "budget", "budget_period",
    }  # fmt: skip
    assert data["models"] == ["llama"]
    assert data["allowed_ips"] == ["10.0.0.0/8"]
    assert data["used_quota"] == 12
    assert data["sha256"] == key_sha256(secret)
    assert data["metadata"] == {"tier": "gold"}
    dumped = json.dumps(dict(data))
    assert secret not in dumped
    assert secret[len("sk-llmp-") :][:20] not in dumped
    with pytest.raises(TypeError):
        data["status"] = "active"  # type: ignore[index]


async def test_open_creates_a_missing_store(tmp_path: Path) -> None:
    """open() on a missing file creates an empty store (and its directory)."""
    path = tmp_path / "new" / "keys.db"
    provider = BuiltinProvider("builtin", path)
    await provider.open()
    try:
        assert path.exists()
        assert await provider.lookup(PresentedKey.of("sk-anything")) is None
    finally:
        await provider.close()


async def test_open_of_a_broken_file_is_a_provider_error(tmp_path: Path) -> None:
    """A file that is not a key store makes open() raise ProviderError naming the path."""
    path = tmp_path / "keys.db"
    path.write_bytes(b"garbage " * 200)
    provider = BuiltinProvider("builtin", path)
    with pytest.raises(ProviderError, match=r"cannot open .*keys\.db"):
        await provider.open()


async def test_close_stops_refreshing_and_refuses_lookups(path: Path, writer: KeyStore) -> None:
    """After close() the refresh and write-back tasks are gone and a lookup is a ProviderError,
    not a miss."""
    provider = BuiltinProvider("builtin", path, refresh_interval=REFRESH)
    await provider.open()
    tasks = list(provider._tasks)
    assert len(tasks) == 2
    await provider.close()
    assert all(task.done() for task in tasks)
    with pytest.raises(ProviderError, match="not open"):
        await provider.lookup(PresentedKey.of("sk-anything"))
    await provider.close()


async def test_quota_use_is_written_back_in_batches(path: Path, writer: KeyStore) -> None:
    """count_usage() of the store's keys reaches used_quota within a flush interval, in one
    batch; a key the store does not hold is not counted; close() writes what is left."""
    _, first = writer.add(name="a")
    _, second = writer.add(name="b")
    provider = BuiltinProvider("builtin", path, refresh_interval=REFRESH)
    await provider.open()
    try:
        assert provider.count_usage(first.id, 5)
        assert provider.count_usage(first.id, 7)
        assert provider.count_usage(second.id, 1)
        assert not provider.count_usage("key_static", 3)
        assert not provider.count_usage(first.id, 0)
        started = time.monotonic()
        while (writer.get(first.id) or first).used_quota != 12:
            assert time.monotonic() - started < QUOTA_FLUSH_INTERVAL + 1.0
            await asyncio.sleep(0.05)
        assert (writer.get(second.id) or second).used_quota == 1
        assert provider.count_usage(second.id, 4)
    finally:
        await provider.close()
    assert (writer.get(second.id) or second).used_quota == 5
