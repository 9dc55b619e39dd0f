"""UsageOutbox: the SQLite tables behind recent records, delivery and dead letters."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from llmproxy.usage import outbox as outbox_module
from llmproxy.usage.outbox import UsageOutbox
from tests.usage.test_delivery import make_record


def test_write_read_delete(tmp_path: Path) -> None:
    """Written records are pending in order until delivered, and the depth follows."""
    outbox = UsageOutbox(tmp_path / "u.db")
    records = [make_record(n) for n in range(5)]
    outbox.write(records, outbox=True)
    assert outbox.depth() == 5
    pending = outbox.pending(3)
    assert [p.id for p in pending] == [r.id for r in records[:3]]
    assert pending[0].body == records[0].to_json()
    outbox.delivered([p.id for p in pending])
    assert outbox.depth() == 2
    assert [p.id for p in outbox.pending(10)] == [r.id for r in records[3:]]
    outbox.close()


def test_depth_survives_reopening_and_duplicates_are_ignored(tmp_path: Path) -> None:
    """A reopened file counts what is left; writing the same record twice queues it once."""
    outbox = UsageOutbox(tmp_path / "u.db", synchronous="full")
    record = make_record(1)
    outbox.write([record, make_record(2)], outbox=True)
    outbox.write([record], outbox=True)
    outbox.close()
    reopened = UsageOutbox(tmp_path / "u.db")
    assert reopened.depth() == 2
    reopened.close()


def test_failed_attempts_lead_to_the_dead_letters(tmp_path: Path) -> None:
    """A record moves to the dead letters on its max_attempts-th failure, not before."""
    outbox = UsageOutbox(tmp_path / "u.db")
    record = make_record(1)
    outbox.write([record], outbox=True)
    assert outbox.failed([record.id], "HTTP 500", max_attempts=2) == 0
    assert outbox.pending(1)[0].attempts == 1
    assert outbox.failed([record.id], "HTTP 503", max_attempts=2) == 1
    assert outbox.depth() == 0
    assert outbox.dead_letter_count() == 1
    [letter] = outbox.dead_letter_records()
    assert (letter.id, letter.error, letter.attempts) == (record.id, "HTTP 503", 2)
    outbox.close()


def test_recent_is_newest_first_filtered_and_bounded(tmp_path: Path) -> None:
    """recent() answers the newest records, of one key if asked, and keeps only keep_records."""
    outbox = UsageOutbox(tmp_path / "u.db", keep_records=10)
    records = [make_record(n, key_id=f"k{n % 2}") for n in range(25)]
    outbox.write(records[:20], outbox=False)
    outbox.write(records[20:], outbox=False)
    assert outbox.depth() == 0
    recent = outbox.recent(100)
    assert [r.id for r in recent] == [r.id for r in reversed(records[15:])]
    assert [r.id for r in outbox.recent(2, key_id="k1")] == [records[23].id, records[21].id]
    outbox.close()


def test_recent_filters_by_key_id_or_name_and_by_model(tmp_path: Path) -> None:
    """recent(key=...) matches a key's id or its name; model= keeps one model's records."""
    outbox = UsageOutbox(tmp_path / "u.db")
    a = make_record(1, key_id="k1", key_name="alice", model="m1")
    b = make_record(2, key_id="k2", key_name="bob", model="m1")
    c = make_record(3, key_id="k1", key_name="alice", model="m2")
    outbox.write([a, b, c], outbox=False)
    assert [r.id for r in outbox.recent(10, key="alice")] == [c.id, a.id]
    assert [r.id for r in outbox.recent(10, key="k2")] == [b.id]
    assert [r.id for r in outbox.recent(10, model="m1")] == [b.id, a.id]
    assert [r.id for r in outbox.recent(10, key="alice", model="m1")] == [a.id]
    assert outbox.recent(10, key="nobody") == []
    outbox.close()


def test_summary_sums_per_key_and_model_since_a_time(tmp_path: Path) -> None:
    """summary() groups the records since a time by key and model, biggest spender first."""
    outbox = UsageOutbox(tmp_path / "u.db")
    old = make_record(100, key_id="k1", key_name="alice", time=1000.0)
    records = [
        make_record(1, key_id="k1", key_name="alice", time=2000.0),
        make_record(2, key_id="k1", key_name="alice-renamed", time=2001.0),
        make_record(5, key_id="k2", key_name="bob", time=2002.0),
        make_record(1, key_id="k1", key_name="alice", model="m2", time=2003.0),
    ]
    outbox.write([old, *records], outbox=False)
    rows = [row.as_json() for row in outbox.summary(since=1500.0)]
    assert rows == [
        {
            "key_id": "k2",
            "key_name": "bob",
            "model": "m",
            "requests": 1,
            "prompt_tokens": 5,
            "completion_tokens": 10,
            "total_tokens": 15,
            "api": "",
            "user_id": "",
            "team": "",
            "cost": 0.0,
        },
        {
            "key_id": "k1",
            "key_name": "alice-renamed",
            "model": "m",
            "requests": 2,
            "prompt_tokens": 3,
            "completion_tokens": 6,
            "total_tokens": 9,
            "api": "",
            "user_id": "",
            "team": "",
            "cost": 0.0,
        },
        {
            "key_id": "k1",
            "key_name": "alice",
            "model": "m2",
            "requests": 1,
            "prompt_tokens": 1,
            "completion_tokens": 2,
            "total_tokens": 3,
            "api": "",
            "user_id": "",
            "team": "",
            "cost": 0.0,
        },
    ]
    assert outbox.summary(since=3000.0) == []
    outbox.close()


def test_summary_finds_the_start_by_bisection_over_many_batches(tmp_path: Path) -> None:
    """Thousands of records written in batches, then a batch of older records stored late (a
    second writer's): the summary since any time counts exactly the records at or after it."""
    outbox = UsageOutbox(tmp_path / "u.db")
    times = [1000.0 + i for i in range(3000)]
    for start in range(0, 3000, 100):
        batch = times[start : start + 100]
        outbox.write([make_record(1, time=t) for t in batch], outbox=False)
    for since in (0.0, 1000.0, 1000.5, 2234.0, 3999.0, 4000.0):
        rows = outbox.summary(since=since)
        expected = sum(1 for t in times if t >= since)
        assert sum(row.requests for row in rows) == expected, since
    late = [make_record(1, time=1500.0 + i / 10) for i in range(10)]
    outbox.write(late, outbox=False)  # stored after records 1.5 ks newer
    assert sum(row.requests for row in outbox.summary(since=1499.0)) == 2501 + 10
    outbox.close()


def test_a_file_from_before_the_summary_columns_is_migrated(tmp_path: Path) -> None:
    """Rows written by the first schema get their columns filled from the stored JSON."""
    path = tmp_path / "u.db"
    record = make_record(4, key_id="k9", key_name="old", model="m3", time=1234.5)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(outbox_module._SCHEMA)
        db.execute(
            "INSERT INTO usage (id, key_id, body) VALUES (?, ?, ?)",
            (record.id, record.key_id, record.to_json()),
        )
        db.commit()
    outbox = UsageOutbox(path)
    [row] = outbox.summary(since=0.0)
    assert (row.key_id, row.key_name, row.model, row.requests, row.total_tokens) == (
        "k9",
        "old",
        "m3",
        1,
        12,
    )
    assert [r.id for r in outbox.recent(5, key="old", model="m3")] == [record.id]
    outbox.close()
    # Opening it again finds it up to date and changes nothing.
    reopened = UsageOutbox(path)
    assert len(reopened.summary(since=0.0)) == 1
    reopened.close()


def test_requeued_dead_letters_return_to_the_outbox_with_fresh_attempts(tmp_path: Path) -> None:
    outbox = UsageOutbox(tmp_path / "u.db")
    records = [make_record(n) for n in range(3)]
    outbox.write(records, outbox=True)
    outbox.failed([r.id for r in records], "HTTP 500", max_attempts=1)
    assert (outbox.depth(), outbox.dead_letter_count()) == (0, 3)
    assert outbox.requeue_dead_letters() == 3
    assert (outbox.depth(), outbox.dead_letter_count()) == (3, 0)
    assert [p.attempts for p in outbox.pending(10)] == [0, 0, 0]
    assert outbox.dead_letter_records() == []
    outbox.close()
