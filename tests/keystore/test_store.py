"""The builtin key store: secrets never stored, validation, revocation, concurrency, the file."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmproxy.apikey import display_prefix, has_valid_checksum, key_sha256
from llmproxy.keystore import (
    SCHEMA_VERSION,
    KeyNotFound,
    KeyRecord,
    KeyStore,
    KeyStoreError,
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "keys.db"


@pytest.fixture
def store(path: Path) -> Iterator[KeyStore]:
    with KeyStore(path) as opened:
        yield opened


def _file_bytes(directory: Path) -> bytes:
    return b"".join(entry.read_bytes() for entry in directory.iterdir() if entry.is_file())


def test_add_returns_a_valid_secret_that_is_never_stored(store: KeyStore, path: Path) -> None:
    """add() returns a checksummed secret; the files hold its SHA-256, never the secret."""
    secret, record = store.add(name="ci", user_id="team-a")
    assert has_valid_checksum(secret)
    assert record.sha256 == key_sha256(secret)
    assert record.prefix == display_prefix(secret)
    assert record.id.startswith("key_")
    assert len(record.id) == 16
    assert record.status == "active"
    assert record.revoked_at is None
    assert secret not in repr(record)
    assert secret not in repr(record.as_data())
    body = secret[len("sk-llmp-") :].encode()
    while_open = _file_bytes(path.parent)
    store.close()
    for contents in (while_open, _file_bytes(path.parent)):
        assert secret.encode() not in contents
        assert body not in contents
        assert body[-20:] not in contents
    assert record.sha256.encode() in _file_bytes(path.parent)


def test_find_by_hash_and_get(store: KeyStore) -> None:
    """A key is found by the SHA-256 of its secret and by its id; unknown ones give None."""
    secret, record = store.add(name="ci")
    assert store.find_by_hash(key_sha256(secret)) == record
    assert store.find_by_hash(key_sha256(secret).upper()) == record
    assert store.find_by_hash(key_sha256("sk-other")) is None
    assert store.get(record.id) == record
    assert store.get("key_000000000000") is None


def test_list_is_oldest_first_and_hides_revoked_keys(store: KeyStore) -> None:
    """list() gives keys in creation order, without revoked ones unless asked, filtered by user."""
    _, first = store.add(name="first", user_id="alice")
    _, second = store.add(name="second", user_id="bob")
    _, third = store.add(name="third", user_id="alice")
    store.revoke(second.id)
    assert [record.id for record in store.list()] == [first.id, third.id]
    assert [record.name for record in store.list(include_revoked=True)] == [
        "first",
        "second",
        "third",
    ]
    assert [record.id for record in store.list(user_id="alice")] == [first.id, third.id]
    assert store.list(user_id="bob") == []
    assert {record.id for record in store.all_records()} == {first.id, third.id}


def test_revoke_disables_for_good(store: KeyStore) -> None:
    """revoke() sets status disabled and revoked_at, is idempotent, and freezes the key."""
    _, record = store.add(name="ci", rpm=10)
    revoked = store.revoke(record.id)
    assert revoked.status == "disabled"
    assert revoked.revoked
    assert revoked.revoked_at is not None
    assert revoked.revoked_at >= record.created_at
    assert store.get(record.id) == revoked
    assert store.revoke(record.id) == revoked
    with pytest.raises(ValueError, match="revoked keys cannot be changed"):
        store.update(record.id, status="active")


def test_revoke_unknown_key_raises_key_not_found(store: KeyStore) -> None:
    """revoke() and update() of an unknown id raise KeyNotFound naming the id; add_usage() skips
    it (the batch may hold keys of another provider) and counts the ids it knows."""
    with pytest.raises(KeyNotFound, match="key_nope"):
        store.revoke("key_nope")
    with pytest.raises(KeyNotFound):
        store.update("key_nope", name="x")
    _, record = store.add(name="known")
    store.add_usage({"key_nope": 1, record.id: 5})
    found = store.get(record.id)
    assert found is not None
    assert found.used_quota == 5


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("name", "  renamed ", "renamed"),
        ("user_id", "team-b", "team-b"),
        ("status", "disabled", "disabled"),
        ("status", "quota_exceeded", "quota_exceeded"),
        ("models", ["llama-3-8b", "qwen", "llama-3-8b"], ("llama-3-8b", "qwen")),
        ("models", [], ()),
        (
            "allowed_ips",
            ["10.1.2.3/8", "192.0.2.7", "2001:db8::/32"],
            ("10.0.0.0/8", "192.0.2.7", "2001:db8::/32"),
        ),
        ("expires_at", 1_900_000_000, 1_900_000_000.0),
        ("expires_at", None, None),
        ("total_quota", 1_000_000, 1_000_000),
        ("total_quota", None, None),
        ("used_quota", 0, 0),
        ("rpm", 60, 60),
        ("tpm", 100_000, 100_000),
        ("max_concurrent", 4, 4),
        ("priority", -1, -1),
        ("rpm", None, None),
        ("metadata", {"team": "a", "tags": [1, 2]}, {"team": "a", "tags": [1, 2]}),
    ],
)
def test_update_changes_one_field(
    store: KeyStore, field: str, value: object, expected: object
) -> None:
    """update() changes exactly the named field, stores it normalised and bumps updated_at."""
    _, record = store.add(
        name="ci", models=["m"], expires_at=1_800_000_000, total_quota=5, rpm=1, metadata={"x": 1}
    )
    updated = store.update(record.id, **{field: value})
    assert getattr(updated, field) == expected
    assert updated.updated_at >= record.updated_at
    assert store.get(record.id) == updated
    unchanged = {name: getattr(record, name) for name in KeyRecord.__dataclass_fields__}
    changed = {name: getattr(updated, name) for name in KeyRecord.__dataclass_fields__}
    assert {name for name in changed if changed[name] != unchanged[name]} <= {field, "updated_at"}


def test_update_without_changes_returns_the_record(store: KeyStore) -> None:
    """update() with no fields writes nothing and returns the record as it is."""
    _, record = store.add(name="ci")
    assert store.update(record.id) == record


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"status": "revoked"}, "status: expected one of active, disabled, expired"),
        ({"total_quota": -5}, "total_quota: must be at least 1"),
        ({"total_quota": 0}, "total_quota: must be at least 1"),
        ({"used_quota": -1}, "used_quota: must be at least 0"),
        ({"used_quota": None}, "used_quota: expected a whole number"),
        ({"rpm": -1}, "rpm: must be at least 0"),
        ({"tpm": 1.5}, "tpm: expected a whole number or None"),
        ({"max_concurrent": True}, "max_concurrent: expected a whole number"),
        ({"allowed_ips": ["10.0.0.0/33"]}, "allowed_ips: '10.0.0.0/33' is not an IP address"),
        ({"allowed_ips": ["localhost"]}, "allowed_ips: 'localhost' is not an IP address"),
        ({"allowed_ips": "10.0.0.0/8"}, "allowed_ips: expected a list"),
        ({"models": "llama"}, "models: expected a list"),
        ({"models": [""]}, "models: expected non-empty text items"),
        ({"expires_at": "2030-01-01"}, "expires_at: expected Unix seconds or None"),
        ({"expires_at": 0}, "expires_at: expected a positive Unix time"),
        ({"expires_at": float("inf")}, "expires_at: expected a positive Unix time"),
        ({"name": None}, "name: expected text"),
        ({"name": "a\nb"}, "name: control characters are not allowed"),
        ({"metadata": ["a"]}, "metadata: expected a mapping with text keys"),
        ({"metadata": {"when": object()}}, "metadata: must hold JSON values only"),
        ({"rmp": 5}, "rmp: not a key field \\(did you mean 'rpm'\\?\\)"),
        ({"sha256": "0" * 64}, "sha256: not a key field"),
    ],
)
def test_invalid_values_are_refused(
    store: KeyStore, changes: dict[str, object], message: str
) -> None:
    """A bad value is a ValueError naming the field, on update and on add, and nothing changes."""
    _, record = store.add(name="ci")
    with pytest.raises(ValueError, match=message):
        store.update(record.id, **changes)
    assert store.get(record.id) == record
    if set(changes) <= {"total_quota", "rpm", "tpm", "max_concurrent", "allowed_ips", "models"}:
        with pytest.raises(ValueError, match=message):
            store.add(name="bad", **changes)
        assert len(store.list()) == 1


def test_add_usage_is_atomic_across_connections(path: Path) -> None:
    """Concurrent add_usage() from several stores (processes) and threads loses no tokens."""
    with KeyStore(path) as setup:
        _, record = setup.add(name="busy", total_quota=10**9)
    shared = KeyStore(path)
    shared.open()
    stores = [KeyStore(path) for _ in range(4)]
    for each in stores:
        each.open()
    workers = [*stores, shared, shared, shared]
    start = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def spend(target: KeyStore) -> None:
        try:
            start.wait()
            for _ in range(50):
                target.add_usage({record.id: 7})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=spend, args=(worker,)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for each in [*stores, shared]:
        each.close()
    assert errors == []
    with KeyStore(path) as check:
        found = check.get(record.id)
    assert found is not None
    assert found.used_quota == len(workers) * 50 * 7


def test_add_usage_refuses_negative_tokens(store: KeyStore) -> None:
    """add_usage() only counts up: negative or non-integer token counts are a ValueError."""
    _, record = store.add(name="ci")
    for tokens in (-1, 1.5, True):
        with pytest.raises(ValueError, match="tokens"):
            store.add_usage({record.id: tokens})  # type: ignore[dict-item]
    store.add_usage({record.id: 0})
    assert store.get(record.id) == record


def test_file_is_private_and_in_wal_mode(store: KeyStore, path: Path) -> None:
    """The database and its WAL files are mode 0600, the new directory 0700, journal mode WAL."""
    store.add(name="ci")
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    files = [entry for entry in path.parent.iterdir() if entry.name.startswith("keys.db")]
    assert {entry.name for entry in files} >= {"keys.db", "keys.db-wal", "keys.db-shm"}
    for entry in files:
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600, entry.name
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        connection.close()


def test_existing_file_mode_is_left_alone(tmp_path: Path) -> None:
    """An existing file keeps the mode the operator gave it."""
    path = tmp_path / "keys.db"
    path.touch()
    os.chmod(path, 0o640)
    with KeyStore(path):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_second_store_sees_writes(store: KeyStore, path: Path) -> None:
    """A write through another store changes data_version() and is readable at once."""
    with KeyStore(path) as other:
        before = store.data_version()
        assert store.data_version() == before
        _, record = other.add(name="elsewhere")
        after = store.data_version()
        assert after != before
        assert store.get(record.id) == record
        other.revoke(record.id)
        assert store.data_version() != after
        assert store.all_records() == []


def test_own_writes_change_data_version(store: KeyStore) -> None:
    """data_version() also changes on this store's own commits (SQLite's pragma alone does not)."""
    before = store.data_version()
    _, record = store.add(name="ci")
    after_add = store.data_version()
    store.add_usage({record.id: 3})
    assert len({before, after_add, store.data_version()}) == 3


def test_empty_file_is_migrated(tmp_path: Path) -> None:
    """An empty file (or none) becomes a store at the current schema version."""
    path = tmp_path / "keys.db"
    path.touch()
    with KeyStore(path) as store:
        assert store.list() == []
        store.add(name="first")
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        columns = [row[1] for row in connection.execute("PRAGMA table_info(keys)")]
    finally:
        connection.close()
    assert columns == [
        "id", "sha256", "prefix", "name", "user_id", "status", "created_at", "updated_at",
        "expires_at", "revoked_at", "models", "allowed_ips", "total_quota", "used_quota", "rpm",
        "tpm", "max_concurrent", "priority", "metadata", "team", "budget",
        "budget_period", "burst",
    ]  # fmt: skip
    with KeyStore(path) as reopened:
        assert [record.name for record in reopened.list()] == ["first"]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file written by a newer llmproxy is refused with a message saying to upgrade."""
    path = tmp_path / "keys.db"
    connection = sqlite3.connect(path)
    try:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    finally:
        connection.close()
    store = KeyStore(path)
    with pytest.raises(KeyStoreError, match="newer than this llmproxy understands"):
        store.open()


def test_not_a_database_is_refused(tmp_path: Path) -> None:
    """A file that is not SQLite is a KeyStoreError naming the file."""
    path = tmp_path / "keys.db"
    path.write_bytes(b"not a database, just text " * 100)
    with pytest.raises(KeyStoreError, match=r"keys\.db: not a usable key store database"):
        KeyStore(path).open()


def test_closed_store_raises(path: Path) -> None:
    """Using a store before open() or after close() is a KeyStoreError, not a crash."""
    store = KeyStore(path)
    with pytest.raises(KeyStoreError, match="not open"):
        store.list()
    store.open()
    store.close()
    store.close()
    with pytest.raises(KeyStoreError, match="not open"):
        store.data_version()


def test_import_key_stores_an_existing_secret(store: KeyStore) -> None:
    """import_key() keeps an operator's existing key by hash; duplicates and typos are refused."""
    record = store.import_key("sk-legacy-0123456789", name="legacy", models=["m"], rpm=5)
    assert record.sha256 == key_sha256("sk-legacy-0123456789")
    assert record.prefix == display_prefix("sk-legacy-0123456789")
    assert record.models == ("m",)
    assert record.rpm == 5
    assert store.find_by_hash(key_sha256("sk-legacy-0123456789")) == record
    with pytest.raises(ValueError, match=f"already in the store as {record.id}"):
        store.import_key("sk-legacy-0123456789", name="again")
    secret, issued = store.add(name="issued")
    with pytest.raises(ValueError, match="already in the store"):
        store.import_key(secret, name="again")
    typo = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    with pytest.raises(ValueError, match="checksum does not match"):
        store.import_key(typo, name="typo")
    for bad in ("", "has space", "tab\tkey"):
        with pytest.raises(ValueError, match="key: expected non-empty text"):
            store.import_key(bad, name="bad")
    assert [each.id for each in store.list()] == [record.id, issued.id]


def test_as_data_is_the_pipeline_mapping(store: KeyStore) -> None:
    """as_data() has the static-key field names, lists for lists and no secret."""
    secret, record = store.add(
        name="ci",
        user_id="u1",
        models=("a", "b"),
        allowed_ips=("10.0.0.0/8",),
        expires_at=1_900_000_000,
        total_quota=100,
        rpm=1,
        tpm=2,
        max_concurrent=3,
        priority=4,
        metadata={"team": "x"},
    )
    data = record.as_data()
    assert data == {
        "id": record.id,
        "name": "ci",
        "prefix": record.prefix,
        "sha256": key_sha256(secret),
        "user_id": "u1",
        "status": "active",
        "expires_at": 1_900_000_000.0,
        "models": ["a", "b"],
        "allowed_ips": ["10.0.0.0/8"],
        "total_quota": 100,
        "used_quota": 0,
        "rpm": 1,
        "tpm": 2,
        "max_concurrent": 3,
        "priority": 4,
        "metadata": {"team": "x"},
        "team": "",
        "budget": None,
        "budget_period": "monthly",
        "burst": None,
    }
    assert secret not in data.values()
