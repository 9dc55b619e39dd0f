"""The SQLite file behind usage accounting: recent records, the webhook outbox, the dead letters.

Three tables in one file, so that one transaction per batch stores a record everywhere it goes:

- ``usage``: the most recent ``keep_records`` records (up to 10 % more between two trims), for
  ``llmproxy usage`` (:meth:`recent`, :meth:`summary`). The fields those filter and sum on are
  virtual columns computed from the JSON body when read (none is indexed), so storing a record
  costs little more than its body.
- ``outbox``: records not yet acknowledged by the ``usage_hook`` receiver. A row is deleted only
  after a 2xx answer covering it (at least once; receivers deduplicate on ``id``).
- ``dead_letter``: records the receiver failed ``max_attempts`` times, kept for an operator.

Durability: WAL journal. ``synchronous="normal"`` (the default) makes every committed batch survive
a killed process (``kill -9``, OOM) but a power loss may take the last batches; ``"full"`` fsyncs
every commit and survives that too.

Every method is blocking and thread-safe (one connection behind a lock): async callers run them
with ``asyncio.to_thread``. :meth:`depth` and :meth:`dead_letter_count` are O(1) cached counts,
safe to call from the event loop.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Final, Literal

import msgspec

from llmproxy.private_files import private_file
from llmproxy.usage.alerts import BudgetAlert
from llmproxy.usage.record import UsageRecord, records_json
from llmproxy.usage.rows import (
    DeadLetter,
    JournalCheckpoint,
    JournalOpen,
    JournalRow,
    PendingRecord,
    Recovered,
    UsageSummaryRow,
    summary_by_api,
)
from llmproxy.usage.spend import spend_rows

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    key_id TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_key ON usage (key_id, seq);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL,
    queued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dead_letter (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    moved_at REAL NOT NULL
);
"""
"""Version 0 of the file; :data:`_MIGRATIONS` bring it up to date."""

_TIME_SLOP: Final = 60.0
"""Seconds by which a record may be stored after records newer than it (interleaved writers)."""

_SUMMED_COLUMNS: Final = (
    ("time", "REAL"),
    ("key_name", "TEXT"),
    ("model", "TEXT"),
    ("prompt_tokens", "INTEGER"),
    ("completion_tokens", "INTEGER"),
    ("total_tokens", "INTEGER"),
)

_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: the usage table rebuilt for cheap inserts: no UNIQUE index on the (time-ordered,
    #    written once) id and no (key_id, seq) index, whose inserts land all over the tree when
    #    many keys are active (~6 µs per record); a key's recent records are found by walking
    #    seq backwards instead. The fields summaries filter and sum on are virtual columns read
    #    from the JSON body, and nothing is indexed on them: records since a time are found by
    #    bisecting seq (see UsageOutbox._first_seq_since).
    (
        f"""
        CREATE TABLE usage_v1 (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL,
            key_id TEXT NOT NULL,
            body BLOB NOT NULL,
            {
            ", ".join(
                f"{column} {kind} GENERATED ALWAYS AS "
                f"(json_extract(CAST(body AS TEXT), '$.{column}')) VIRTUAL"
                for column, kind in _SUMMED_COLUMNS
            )
        }
        )
        """,
        "INSERT INTO usage_v1 (seq, id, key_id, body) SELECT seq, id, key_id, body FROM usage",
        "DROP TABLE usage",
        "ALTER TABLE usage_v1 RENAME TO usage",
    ),
    # 2: the journal of requests in flight (llmproxy.usage.journal): a row per admitted request,
    #    deleted by the transaction that writes its record; rows left by a dead owner are
    #    settled as interrupted records at the next start.
    (
        """
        CREATE TABLE journal (
            request_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            body BLOB NOT NULL,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            opened_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            lease TEXT NOT NULL DEFAULT ''
        ) WITHOUT ROWID
        """,
    ),
    # 3: the journal's owners and their heartbeats: a row whose owner stopped beating (another
    #    machine's process, when the file is shared) is settled like a dead local process's.
    (
        """
        CREATE TABLE journal_owner (
            owner TEXT PRIMARY KEY,
            heartbeat_at REAL NOT NULL
        ) WITHOUT ROWID
        """,
    ),
    # 4: checkpoints in a narrow table of their own: rewriting a 400-byte journal row (its
    #    record skeleton) for every open stream four times a second dirtied ten times the pages
    #    (and the WAL) that these ~40-byte rows do. The journal's own count columns stay, unused.
    (
        """
        CREATE TABLE journal_count (
            request_id TEXT PRIMARY KEY,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID
        """,
        # A row's checkpoint goes with it, inside SQLite: one statement closes both.
        """
        CREATE TRIGGER journal_closed AFTER DELETE ON journal FOR EACH ROW
        BEGIN
            DELETE FROM journal_count WHERE request_id = OLD.request_id;
        END
        """,
    ),
    # 5: spend per key and per team and UTC day (llmproxy.usage.spend): budgets' periods outlast
    #    the records kept, so what each spent is summed apart, in the records' own transaction.
    (
        """
        CREATE TABLE spend (
            scope TEXT NOT NULL,
            day INTEGER NOT NULL,
            nanos INTEGER NOT NULL,
            PRIMARY KEY (scope, day)
        ) WITHOUT ROWID
        """,
        # The budget alerts raised (llmproxy.usage.alerts), so each is raised once.
        """
        CREATE TABLE budget_alert (
            id TEXT PRIMARY KEY,
            raised_at REAL NOT NULL
        ) WITHOUT ROWID
        """,
    ),
)
"""Append an entry to change the schema; never edit one that has shipped."""


def _migrate(db: sqlite3.Connection) -> None:
    """Apply the missing migrations in one write transaction (``PRAGMA user_version``).

    IMMEDIATE takes the write lock before the version is read, so two processes opening an old
    file at once cannot both migrate it. A newer file (written by a later llmproxy) is left alone:
    the columns this version writes are still there.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        (found,) = db.execute("PRAGMA user_version").fetchone()
        for version in range(found + 1, len(_MIGRATIONS) + 1):
            for statement in _MIGRATIONS[version - 1]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {version:d}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


_ADD_SPEND: Final = (
    "INSERT INTO spend (scope, day, nanos) VALUES (?, ?, ?) "
    "ON CONFLICT (scope, day) DO UPDATE SET nanos = nanos + excluded.nanos"
)

_INSERT_USAGE: Final = """
INSERT INTO usage (id, key_id, body)
SELECT json_extract(value, '$.id'), json_extract(value, '$.key_id'), CAST(value AS BLOB)
FROM json_each(?)
"""
# The journal's statements take a whole batch as one JSON array (json_each), like the records:
# one sqlite3_step per batch, so the writer thread lets go of the GIL once per batch rather than
# once per row while the event loop relays streams. json_extract rather than ->>: SQLite 3.38
# added the operators, and distributions still ship older libraries. The journal's key column
# (request_id) holds the request's usage record id: unique, unlike a client's X-Request-Id.
_OPEN_JOURNAL: Final = (
    "INSERT OR REPLACE INTO journal (request_id, owner, body, opened_at, lease, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?4)"
)
"""Row by row (executemany): an open carries its 400-byte skeleton, which json_extract would
parse once per column; and open batches are small."""
_CHECKPOINT_JOURNAL: Final = (
    "INSERT OR REPLACE INTO journal_count (request_id, prompt_tokens, completion_tokens, "
    "updated_at) SELECT ?4, ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM journal WHERE request_id = ?4)"
)
_CLOSE_JOURNAL: Final = "DELETE FROM journal WHERE request_id IN (SELECT value FROM json_each(?))"
"""Takes the records' ids as a JSON array (their whole JSON would be parsed again)."""
_INSERT_OUTBOX: Final = """
INSERT OR IGNORE INTO outbox (id, body, queued_at)
SELECT json_extract(value, '$.id'), CAST(value AS BLOB), ? FROM json_each(?)
"""


_json = msgspec.json.Encoder()


class UsageOutbox:
    """Usage records in SQLite: ``UsageOutbox(path)``, then :meth:`write` batches into it."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Literal["normal", "full"] = "normal",
        keep_records: int = 100_000,
    ) -> None:
        private_file(path)
        self.path = path
        self.keep_records = keep_records
        self._trim_every = max(1, keep_records // 10)
        self._since_trim = self._trim_every  # trim on the first write (keep_records may shrink)
        self._lock = threading.Lock()
        # isolation_level=None: transactions are explicit BEGIN/COMMIT, one per batch.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        _migrate(self._db)
        self._depth: int = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        self._dead: int = self._db.execute("SELECT count(*) FROM dead_letter").fetchone()[0]
        self._journalled = bool(self._db.execute("SELECT 1 FROM journal LIMIT 1").fetchone())
        """Whether the journal may hold rows (then every write deletes its records' rows)."""

    def close(self) -> None:
        """Close the file; committed batches are already durable."""
        with self._lock:
            self._db.close()

    def depth(self) -> int:
        """Records waiting in the outbox (cached, O(1))."""
        return self._depth

    def write(
        self,
        records: Sequence[UsageRecord],
        *,
        outbox: bool,
        opens: Sequence[JournalOpen] = (),
        trim: bool = True,
    ) -> None:
        """Journal ``opens``, then store ``records`` (and queue them for delivery when
        ``outbox``), in one transaction; ``trim`` False leaves the trim of old records to a
        later write (a response is waiting for this one)."""
        if not records and not opens:
            return
        with self._lock:
            self._db.execute("BEGIN")
            try:
                if opens:
                    self._journalled = True
                    self._db.executemany(_OPEN_JOURNAL, opens)
                added = self._insert(records, outbox=outbox, trim=trim) if records else 0
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._depth += added

    def _insert(self, records: Sequence[UsageRecord], *, outbox: bool, trim: bool = True) -> int:
        """The writes of :meth:`write`, inside the caller's transaction; answers how many records
        joined the outbox."""
        # One JSON array for the whole batch, unpacked by SQLite itself (json_each): one
        # statement per table instead of one step per row, so the writer thread takes the GIL
        # back once per batch rather than once per record while the event loop is busy.
        batch = records_json(records)
        spent = sorted(spend_rows(records))
        if spent:
            self._db.executemany(_ADD_SPEND, spent)
        if self.keep_records > 0:
            self._db.execute(_INSERT_USAGE, (batch,))
            self._since_trim += len(records)
            if trim and self._since_trim >= self._trim_every:
                # Trimmed in chunks of ~1/10 of what is kept: one range delete of neighbouring
                # rows costs far less than a few rows after every batch.
                self._since_trim = 0
                self._db.execute(
                    "DELETE FROM usage WHERE seq <= (SELECT max(seq) FROM usage) - ?",
                    (self.keep_records,),
                )
        if self._journalled:
            self._db.execute(_CLOSE_JOURNAL, (_json.encode([r.id for r in records]),))
        if not outbox:
            return 0
        before = self._db.total_changes
        self._db.execute(_INSERT_OUTBOX, (time.time(), batch))
        return self._db.total_changes - before

    # The journal of requests in flight (llmproxy.usage.journal) ----------------------------

    def journal_open(self, rows: Sequence[JournalOpen]) -> None:
        """Journal admitted requests."""
        with self._lock:
            self._journalled = True
            self._db.execute("BEGIN")
            try:
                self._db.executemany(_OPEN_JOURNAL, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def journal_checkpoint(self, rows: Sequence[JournalCheckpoint]) -> None:
        """Record the tokens counted so far."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(_CHECKPOINT_JOURNAL, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def heartbeat(self, owner: str, at: float) -> None:
        """``owner`` is alive at ``at`` (a journal owner beats every few seconds)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO journal_owner (owner, heartbeat_at) VALUES (?, ?)",
                (owner, at),
            )

    def forget_owner(self, owner: str) -> None:
        """``owner`` stopped cleanly: its heartbeat row goes (its journal rows, if any, stay)."""
        with self._lock:
            self._db.execute("DELETE FROM journal_owner WHERE owner = ?", (owner,))

    def journal_owners(self, now: float) -> list[tuple[str, float | None]]:
        """Every owner of a journal row, with the seconds from its last heartbeat to ``now``
        (None: it never beat)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT j.owner, ? - o.heartbeat_at FROM (SELECT DISTINCT owner FROM journal) AS j "
                "LEFT JOIN journal_owner AS o ON o.owner = j.owner",
                (now,),
            ).fetchall()
        return [(str(owner), silent_for) for owner, silent_for in rows]

    def settle_journal(
        self,
        owners: Collection[str],
        settle: Callable[[JournalRow], UsageRecord],
        *,
        outbox: bool,
    ) -> list[Recovered]:
        """Turn every journal row of ``owners`` (processes that are gone) into its record with
        ``settle``, and write the records in the transaction that deletes the rows."""
        if not owners:
            return []
        marks = ",".join("?" * len(owners))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = [
                    JournalRow(*row)
                    for row in self._db.execute(
                        "SELECT j.request_id, j.owner, j.body, "
                        "coalesce(c.prompt_tokens, j.prompt_tokens), "
                        "coalesce(c.completion_tokens, j.completion_tokens), j.opened_at, "
                        "coalesce(c.updated_at, j.updated_at), j.lease FROM journal AS j "
                        "LEFT JOIN journal_count AS c ON c.request_id = j.request_id "
                        f"WHERE j.owner IN ({marks}) ORDER BY j.opened_at",
                        tuple(owners),
                    )
                ]
                recovered = [Recovered(settle(row), row.lease) for row in rows]
                added = self._insert([r.record for r in recovered], outbox=outbox) if rows else 0
                self._db.execute(f"DELETE FROM journal WHERE owner IN ({marks})", tuple(owners))
                self._db.execute(
                    f"DELETE FROM journal_owner WHERE owner IN ({marks})", tuple(owners)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._depth += added
        return recovered

    def settle_records(self, recovered: Sequence[Recovered], *, outbox: bool) -> list[Recovered]:
        """Write the ``interrupted`` records of requests a crash cut off (from a journal file:
        :mod:`llmproxy.usage.filejournal`), but those whose id is stored already (the crash came
        after their real record was committed); answers those written."""
        if not recovered:
            return []
        ids = _json.encode([r.record.id for r in recovered])
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                stored = {
                    str(row[0])
                    for table in ("usage", "outbox", "dead_letter")
                    for row in self._db.execute(
                        f"SELECT id FROM {table} WHERE id IN (SELECT value FROM json_each(?))",
                        (ids,),
                    )
                }
                fresh = [r for r in recovered if r.record.id not in stored]
                added = self._insert([r.record for r in fresh], outbox=outbox) if fresh else 0
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._depth += added
        return fresh

    def pending(self, limit: int) -> list[PendingRecord]:
        """The oldest ``limit`` records waiting for delivery."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, id, body, queued_at, attempts FROM outbox ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [PendingRecord(*row) for row in rows]

    def delivered(self, ids: Sequence[str]) -> None:
        """Forget records the receiver acknowledged."""
        with self._lock:
            self._db.execute("BEGIN")
            before = self._db.total_changes
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
            self._depth -= self._db.total_changes - before
            self._db.execute("COMMIT")

    def failed(self, ids: Sequence[str], error: str, max_attempts: int) -> int:
        """Count a failed attempt on ``ids``; move those at ``max_attempts`` to the dead letters.

        Answers how many records were moved.
        """
        now = time.time()
        keys = [(i,) for i in ids]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", keys)
            marks = ",".join("?" * len(ids))
            self._db.execute(
                "INSERT OR REPLACE INTO dead_letter (id, body, attempts, error, moved_at) "
                f"SELECT id, body, attempts, ?, ? FROM outbox "
                f"WHERE attempts >= ? AND id IN ({marks})",
                (error, now, max_attempts, *ids),
            )
            before = self._db.total_changes
            self._db.execute(
                f"DELETE FROM outbox WHERE attempts >= ? AND id IN ({marks})",
                (max_attempts, *ids),
            )
            moved = self._db.total_changes - before
            self._depth -= moved
            self._dead += moved
            self._db.execute("COMMIT")
        return moved

    def dead_letter_records(self, limit: int = 1000) -> list[DeadLetter]:
        """The most recent records moved to the dead letters, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, body, attempts, error, moved_at FROM dead_letter "
                "ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [DeadLetter(*row) for row in rows]

    def requeue_dead_letters(self) -> int:
        """Move every dead letter back to the outbox with its attempts reset, in one transaction:
        after a receiver outage longer than ``max_attempts`` allows, nothing is lost for good.

        Answers how many records were requeued.
        """
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            try:
                before = self._db.total_changes
                self._db.execute(
                    "INSERT OR IGNORE INTO outbox (id, body, queued_at) "
                    "SELECT id, body, ? FROM dead_letter ORDER BY seq",
                    (now,),
                )
                moved = self._db.total_changes - before
                self._db.execute("DELETE FROM dead_letter")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._depth += moved
            self._dead = 0
        return moved

    def dead_letter_count(self) -> int:
        """How many records wait in the dead letters (cached, O(1))."""
        return self._dead

    def last_seq(self) -> int:
        """The newest stored record's place (0 when there is none)."""
        with self._lock:
            row = self._db.execute("SELECT max(seq) FROM usage").fetchone()
        return int(row[0] or 0)

    def after(self, seq: int, limit: int = 1000) -> tuple[int, list[UsageRecord]]:
        """Records stored after ``seq``, oldest first, and the place of the last one returned
        (``seq`` when none): what every process writing this file settled since."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, body FROM usage WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
        if not rows:
            return seq, []
        return int(rows[-1][0]), [UsageRecord.from_json(body) for _, body in rows]

    def recent(
        self,
        limit: int = 100,
        key_id: str | None = None,
        *,
        key: str | None = None,
        model: str | None = None,
    ) -> list[UsageRecord]:
        """The newest stored records, newest first: of one key only (``key_id``, or ``key``: an id
        or a name), of one model only (``model``).
        """
        where: list[str] = []
        parameters: list[object] = []
        if key_id is not None:
            where.append("key_id = ?")
            parameters.append(key_id)
        if key is not None:
            where.append("(key_id = ? OR key_name = ?)")
            parameters += [key, key]
        if model is not None:
            where.append("model = ?")
            parameters.append(model)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT body FROM usage {clause}ORDER BY seq DESC LIMIT ?", (*parameters, limit)
            ).fetchall()
        return [UsageRecord.from_json(body) for (body,) in rows]

    def _first_seq_since(self, since: float) -> int:
        """The first seq whose record time is at or after ``since``, by bisection.

        Records are written in the order they settle, so their times grow with seq; several
        processes writing one file interleave by batch, which :data:`_TIME_SLOP` covers. No
        index on time is kept: it would cost every insert and every trim a JSON parse.
        """
        low, high = self._db.execute("SELECT min(seq), max(seq) + 1 FROM usage").fetchone()
        if low is None:
            return 0
        while low < high:
            middle = (low + high) // 2
            row = self._db.execute(
                "SELECT time FROM usage WHERE seq >= ? ORDER BY seq LIMIT 1", (middle,)
            ).fetchone()
            if row is None or row[0] is None or row[0] >= since:
                high = middle
            else:
                low = middle + 1
        return int(low)

    def summary(self, since: float) -> list[UsageSummaryRow]:
        """Requests, tokens and cost per key, model, API, user and team of the stored records
        since ``since`` (Unix time), the biggest spender first. A key renamed meanwhile shows
        its latest name.
        """
        with self._lock:
            first = self._first_seq_since(since - _TIME_SLOP)
            # SQLite takes the bare column key_name from the row that max(seq) picked.
            rows = self._db.execute(
                "SELECT key_id, key_name, model, coalesce(json_extract(body, '$.endpoint'), ''), "
                "count(*), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens), "
                "coalesce(json_extract(body, '$.user_id'), ''), "
                "coalesce(json_extract(body, '$.team'), ''), "
                "coalesce(sum(json_extract(body, '$.cost')), 0), "
                "max(seq) FROM usage WHERE seq >= ? AND time >= ? "
                "GROUP BY key_id, model, 4, 9, 10 ORDER BY max(seq) DESC",
                (first, since),
            ).fetchall()
        return summary_by_api(row[:11] for row in rows)

    def raise_alert(self, alert: BudgetAlert, *, outbox: bool) -> bool:
        """Note ``alert`` as raised and queue it for the webhook when ``outbox``, unless it was
        raised before (by any process); answers whether it is new."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                new = (
                    self._db.execute(
                        "INSERT OR IGNORE INTO budget_alert (id, raised_at) VALUES (?, ?)",
                        (alert.id, alert.time),
                    ).rowcount
                    == 1
                )
                queued = 0
                if new and outbox:
                    queued = self._db.execute(
                        "INSERT OR IGNORE INTO outbox (id, body, queued_at) VALUES (?, ?, ?)",
                        (alert.id, alert.to_json(), time.time()),
                    ).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._depth += queued
        return new

    def spent(self, scopes: Collection[str], since_day: int) -> dict[str, int]:
        """Nano-units each of ``scopes`` spent from the UTC day ``since_day`` on."""
        if not scopes:
            return {}
        with self._lock:
            rows = self._db.execute(
                "SELECT scope, sum(nanos) FROM spend WHERE day >= ? AND scope IN "
                "(SELECT value FROM json_each(?)) GROUP BY scope",
                (since_day, _json.encode(list(scopes))),
            ).fetchall()
        return {str(name): int(nanos) for name, nanos in rows}
