"""UsageOutbox: the SQLite tables behind recent records, delivery and dead letters."""

from __future__ import annotations

from pathlib import Path

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
