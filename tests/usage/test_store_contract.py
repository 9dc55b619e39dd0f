"""The usage store's contract, held by the SQLite file and by PostgreSQL alike; and what only a
store shared by several gateways must add (stored once, claimed once, settled once)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import asyncpg

from llmproxy.config.model import Config
from llmproxy.usage.journal import interrupted, process_owner, recover
from llmproxy.usage.postgres import PostgresUsageError, PostgresUsageStore
from llmproxy.usage.record import UsageRecord
from llmproxy.usage.rows import JournalCheckpoint, JournalOpen, JournalRow
from llmproxy.usage.sink import UsageSink
from llmproxy.usage.store import UsageStore
from tests.usage.test_delivery import make_record, until


def _skeleton(request_id: str, key_id: str = "key_1") -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        model="m",
        prompt_tokens=7,
        completion_tokens=0,
        total_tokens=7,
        usage_source="estimated",
        key_id=key_id,
        stream=True,
        status="interrupted",
    )


def _dead_owner() -> str:
    """An owner on another host that never beat (or stopped long ago) is as dead as a local
    one."""
    return "another-host:1:4242:1"


async def test_records_are_stored_queued_and_read_back(usage_store: UsageStore) -> None:
    """Written records come back newest first, filtered by key (id or name) and model; the
    outbox holds them in order until delivered."""
    records = [
        make_record(n, key_id=f"k{n % 2}", key_name=f"name{n % 2}", model=f"m{n % 3}")
        for n in range(6)
    ]
    await usage_store.write(records[:3], outbox=True)
    await usage_store.write(records[3:], outbox=True)
    assert [r.id for r in await usage_store.recent(4)] == [r.id for r in reversed(records)][:4]
    assert [r.id for r in await usage_store.recent(10, key="k1")] == [
        records[5].id,
        records[3].id,
        records[1].id,
    ]
    assert [r.id for r in await usage_store.recent(10, key="name0", model="m0")] == [records[0].id]
    pending = await usage_store.pending(10)
    assert [p.id for p in pending] == [r.id for r in records]
    assert UsageRecord.from_json(pending[0].body) == records[0]
    assert usage_store.depth() == 6
    async with usage_store.claim(4) as claim:
        assert [p.id for p in claim.records] == [r.id for r in records[:4]]
        await claim.delivered([p.id for p in claim.records])
    assert [p.id for p in await usage_store.pending(10)] == [r.id for r in records[4:]]
    assert usage_store.depth() == 2


async def test_summary_sums_per_key_and_model_with_the_latest_name(
    usage_store: UsageStore,
) -> None:
    """summary() groups the records since a time by key and model, biggest spender first."""
    await usage_store.write(
        [
            make_record(100, key_id="k1", key_name="alice", time=1000.0),
            make_record(1, key_id="k1", key_name="alice", time=2000.0),
            make_record(2, key_id="k1", key_name="alice-renamed", time=2001.0),
            make_record(5, key_id="k2", key_name="bob", time=2002.0),
        ],
        outbox=False,
    )
    rows = [
        (r.key_id, r.key_name, r.model, r.requests, r.total_tokens)
        for r in await usage_store.summary(1500.0)
    ]
    assert rows == [("k2", "bob", "m", 1, 15), ("k1", "alice-renamed", "m", 2, 9)]
    assert await usage_store.summary(3000.0) == []


async def test_summary_tells_the_apis_apart(usage_store: UsageStore) -> None:
    """One key and model through two APIs: a row each, named by the API its endpoint says (so
    records written before records carried ``api`` are told apart too)."""
    await usage_store.write(
        [
            make_record(1, time=2000.0, endpoint="/v1/chat/completions"),
            make_record(2, time=2001.0, endpoint="/v1/messages", api="messages"),
            make_record(3, time=2002.0, endpoint="/v1/messages", api="messages"),
            make_record(4, time=2003.0, endpoint="/v1/responses", api="responses"),
        ],
        outbox=False,
    )
    rows = [(r.api, r.requests, r.total_tokens) for r in await usage_store.summary(1500.0)]
    assert rows == [("messages", 2, 15), ("responses", 1, 12), ("chat", 1, 3)]


async def test_failed_records_go_to_the_dead_letters_and_come_back(
    usage_store: UsageStore,
) -> None:
    """A record failed max_attempts times is a dead letter; requeued, it is pending again."""
    record = make_record(1)
    await usage_store.write([record], outbox=True)
    for attempt, moved in ((1, 0), (2, 1)):
        async with usage_store.claim(10) as claim:
            assert await claim.failed([record.id], f"HTTP 50{attempt}", 2) == moved
    assert await usage_store.pending(10) == []
    [letter] = await usage_store.dead_letter_records()
    assert (letter.id, letter.error, letter.attempts) == (record.id, "HTTP 502", 2)
    assert usage_store.dead_letter_count() == 1
    assert await usage_store.requeue_dead_letters() == 1
    [again] = await usage_store.pending(10)
    assert (again.id, again.attempts) == (record.id, 0)


async def test_journal_rows_of_gone_owners_are_settled_once(usage_store: UsageStore) -> None:
    """Rows of a dead owner become interrupted records, billed at the last checkpoint and queued
    for the webhook; a live owner's rows stay; an ended request's record removed its row."""
    now = time.time()
    dead, live = _dead_owner(), process_owner()
    await usage_store.heartbeat(live, now)
    cut, running, done = _skeleton("req-dead"), _skeleton("req-live"), _skeleton("req-done")
    await usage_store.journal_open(
        [
            JournalOpen(cut.id, dead, cut.to_json(), now - 2, "r:lease"),
            JournalOpen(running.id, live, running.to_json(), now - 2, ""),
            JournalOpen(done.id, dead, done.to_json(), now - 2, ""),
        ]
    )
    await usage_store.journal_checkpoint([JournalCheckpoint(9, 30, now - 1, cut.id)])
    # req-done ended normally before the crash: its record (which keeps the row's id) removed
    # the row when it was written.
    await usage_store.write([make_record(3, request_id="req-done", id=done.id)], outbox=True)

    recovered = await recover(usage_store, outbox=True, me=live)
    assert [(r.record.request_id, r.record.status, r.lease) for r in recovered] == [
        ("req-dead", "interrupted", "r:lease")
    ]
    record = recovered[0].record
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (9, 30, 39)
    assert record.finish_reason == "interrupted"
    assert record.id == cut.id
    assert 900 <= record.latency_ms <= 1100
    assert [owner for owner, _ in await usage_store.journal_owners()] == [live]
    assert {p.id for p in await usage_store.pending(10)} >= {record.id}
    assert (await usage_store.recent(1))[0] == record
    assert await recover(usage_store, outbox=True, me=live) == []  # settled once


async def test_an_owner_on_another_host_is_gone_only_once_it_stops_beating(
    usage_store: UsageStore,
) -> None:
    """A replica elsewhere that beat recently keeps its rows; one that never beat has its rows
    settled (silence past the timeout: the PostgreSQL test below, by the server's clock)."""
    now = time.time()
    elsewhere, silent = "another-host:1:77:12345", "another-host:1:78:12345"
    await usage_store.heartbeat(elsewhere, now)
    far, quiet = _skeleton("req-far"), _skeleton("req-quiet")
    await usage_store.journal_open(
        [
            JournalOpen(far.id, elsewhere, far.to_json(), now, ""),
            JournalOpen(quiet.id, silent, quiet.to_json(), now, ""),
        ]
    )
    [settled] = await recover(usage_store, outbox=False)
    assert settled.record.request_id == "req-quiet"
    [(owner, silent_for)] = await usage_store.journal_owners()
    assert owner == elsewhere
    assert silent_for is not None
    assert -1 < silent_for < 5


async def test_follow_sees_every_record_written_after_it_started(
    usage_store: UsageStore,
) -> None:
    """A follower sees the records written after it started, each once, and none from before."""
    before = make_record(0)
    await usage_store.write([before], outbox=False)
    batches = await usage_store.follow()
    written = [make_record(n) for n in range(1, 8)]
    seen: list[str] = []
    try:
        await usage_store.write(written[:3], outbox=False)
        await usage_store.write(written[3:], outbox=False)
        async with asyncio.timeout(5):
            async for batch in batches:
                seen += [r.id for r in batch]
                if len(seen) >= len(written):
                    break
    finally:
        await batches.aclose()
    assert seen == [r.id for r in written]


# Only a store shared by several gateways: PostgreSQL -----------------------------------------


async def test_a_batch_written_twice_is_stored_and_queued_once(
    pg_usage_url: str, tmp_path: Path
) -> None:
    """A retried write (its first commit's answer lost) stores and queues each record once."""
    store = PostgresUsageStore(pg_usage_url)
    await store.open()
    try:
        records = [make_record(n) for n in range(3)]
        await store.write(records, outbox=True)
        await store.write([*records, make_record(3)], outbox=True)
        assert len(await store.recent(100)) == 4
        assert len(await store.pending(100)) == 4
    finally:
        await store.close()


async def test_gateways_claim_different_records_and_a_dead_one_releases_its_claim(
    pg_usage_url: str,
) -> None:
    """Two claims at once hold different records; a gateway whose connection dies mid-claim
    leaves its records to the next claimant, none lost."""
    one, two = PostgresUsageStore(pg_usage_url), PostgresUsageStore(pg_usage_url)
    await one.open()
    await two.open()
    try:
        records = [make_record(n) for n in range(6)]
        await one.write(records, outbox=True)
        async with one.claim(4) as first, two.claim(4) as second:
            assert [p.id for p in first.records] == [r.id for r in records[:4]]
            assert [p.id for p in second.records] == [r.id for r in records[4:]]
            await second.delivered([p.id for p in second.records])
        # Gateway one dies mid-claim: its connection goes, and its transaction with it.
        with contextlib.suppress(PostgresUsageError):
            async with one.claim(4) as doomed:
                assert len(doomed.records) == 4
                one._connected().terminate()
        async with two.claim(10) as third:
            assert [p.id for p in third.records] == [r.id for r in records[:4]]
    finally:
        await one.close()
        await two.close()


async def test_two_gateways_settle_a_dead_owners_rows_once(pg_usage_url: str) -> None:
    """Replicas sweeping at the same moment bill an orphaned request once between them."""
    stores = [PostgresUsageStore(pg_usage_url) for _ in range(3)]
    for store in stores:
        await store.open()
    try:
        now = time.time()
        skeletons = [_skeleton(f"req-{n}") for n in range(50)]
        rows = [JournalOpen(s.id, _dead_owner(), s.to_json(), now, "") for s in skeletons]
        await stores[0].journal_open(rows)
        settled = await asyncio.gather(
            *(recover(store, outbox=True, me=f"h:1:{n}:1") for n, store in enumerate(stores))
        )
        ids = sorted(r.record.request_id for batch in settled for r in batch)
        assert ids == sorted(s.request_id for s in skeletons)
        assert len(await stores[1].recent(1000)) == 50
        assert len(await stores[2].pending(1000)) == 50
    finally:
        for store in stores:
            await store.close()


async def test_the_interrupted_record_keeps_its_skeletons_id() -> None:
    """Settling the same row twice (two stores, two attempts) yields the same record id."""
    row_body = _skeleton("req-x").to_json()
    row = JournalRow("req-x", _dead_owner(), row_body, 7, 3, 1.0, 2.0, "")
    assert interrupted(row).id == interrupted(row).id == UsageRecord.from_json(row_body).id


async def test_postgres_judges_silence_by_its_own_clock(pg_usage_url: str) -> None:
    """A replica whose clock runs an hour behind still beats (the server stamps heartbeats);
    one silent for over the timeout by the server's clock is settled."""
    store = PostgresUsageStore(pg_usage_url)
    await store.open()
    try:
        now = time.time()
        behind, silent = "far-a:1:1:1", "far-b:1:1:1"
        await store.heartbeat(behind, now - 3600)  # its own clock says an hour ago
        await store.heartbeat(silent, now)
        kept, lost = _skeleton("req-kept"), _skeleton("req-lost")
        await store.journal_open(
            [
                JournalOpen(kept.id, behind, kept.to_json(), now, ""),
                JournalOpen(lost.id, silent, lost.to_json(), now, ""),
            ]
        )
        connection = await asyncpg.connect(pg_usage_url)
        try:
            await connection.execute(
                "UPDATE llmproxy_usage_owner SET heartbeat_at = heartbeat_at - 31 WHERE owner = $1",
                silent,
            )
        finally:
            await connection.close()
        [settled] = await recover(store, outbox=False)
        assert settled.record.request_id == "req-lost"
    finally:
        await store.close()


async def test_postgres_stores_a_nul_as_a_replacement_character(pg_usage_url: str) -> None:
    """PostgreSQL text cannot hold a NUL (a Lua decision's metadata may carry one): the record
    is stored with U+FFFD in its place rather than failing the batch it came in."""
    store = PostgresUsageStore(pg_usage_url)
    await store.open()
    try:
        record = make_record(1, metadata={"team": "a\x00b"}, key_name="k\x00")
        await store.write([record, make_record(2)], outbox=True)
        stored = {r.request_id: r for r in await store.recent(10)}
        assert stored["req-1"].metadata == {"team": "a\ufffdb"}
        assert stored["req-1"].key_name == "k\ufffd"
        assert "req-2" in stored
    finally:
        await store.close()


async def test_a_record_the_database_refuses_is_set_aside_and_the_rest_written(
    pg_usage_url: str, tmp_path: Path
) -> None:
    """One record PostgreSQL cannot hold (a count past BIGINT) is logged and left out; the
    others of its batch and every later batch are written, and the writer keeps going."""
    config = Config.model_validate(
        {"backends": [{"url": "http://127.0.0.1:9"}], "usage": {"database": pg_usage_url}}
    )
    sink = UsageSink(config, tmp_path)
    await sink.start()
    try:
        for n in range(10):
            sink.submit(make_record(n, prompt_tokens=2**64 if n == 4 else n))
        await until(lambda: sink.written == 9 and sink.refused == 1)
        sink.submit(make_record(10))
        await until(lambda: sink.written == 10)
        stored = {r.request_id for r in await sink.store.recent(100)}
        assert stored == {f"req-{n}" for n in range(11)} - {"req-4"}
    finally:
        await sink.close()
