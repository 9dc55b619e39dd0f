"""The file journal beside a SQLite usage store: slots in a memory-mapped file per process, read
back and settled once its owner is gone (its flock released by the kernel)."""

from __future__ import annotations

import asyncio
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmproxy.usage.filejournal import FileJournal
from llmproxy.usage.journal import CHECKPOINT_INTERVAL, process_owner
from llmproxy.usage.record import UsageRecord
from llmproxy.usage.slots import INITIAL_SLOTS, SLOT, SUFFIX, SlotFile, orphans, read_rows
from llmproxy.usage.store import SqliteUsageStore


def _skeleton(prompt: int = 7, **metadata: str) -> UsageRecord:
    return UsageRecord(
        request_id="r", model="m", prompt_tokens=prompt, completion_tokens=0,
        total_tokens=prompt, usage_source="estimated", status="interrupted", key_id="k1",
        metadata=dict(metadata),
    )  # fmt: skip


def _rows(file: SlotFile) -> list[tuple[str, int, int, str]]:
    rows = read_rows(file.path.read_bytes(), "me")
    return [
        (UsageRecord.from_json(r.body).id, r.prompt_tokens, r.completion_tokens, r.lease)
        for r in rows
    ]


def test_slots_hold_skeletons_counts_and_leases_until_freed(tmp_path: Path) -> None:
    """What a sweeper reads back is what was opened and counted; a freed slot is gone, and its
    space is reused; a skeleton bigger than a slot takes several; the file grows past its
    first size; the file and its directory are private."""
    file = SlotFile(tmp_path / "inflight", process_owner())
    try:
        small, big = _skeleton(), _skeleton(3, note="x" * (3 * SLOT))
        first = file.open(small.to_json(), b"lease-1", 1.0, 7)
        file.open(big.to_json(), b"", 1.0, 3)
        file.count(first, 7, 5, 2.0)
        file.count(first, 7, 9, 3.0)  # the other copy, then back
        file.count(first, 7, 11, 4.0)
        assert sorted(_rows(file)) == sorted([(small.id, 7, 11, "lease-1"), (big.id, 3, 0, "")])
        file.free(first)
        assert _rows(file) == [(big.id, 3, 0, "")]
        assert file.open(_skeleton().to_json(), b"", 5.0, 1) == first  # reused
        many = [file.open(_skeleton().to_json(), b"", 5.0, 1) for _ in range(INITIAL_SLOTS)]
        assert file.path.stat().st_size > INITIAL_SLOTS * SLOT
        assert len(_rows(file)) == INITIAL_SLOTS + 2
        for offset in many:
            file.free(offset)
        assert stat.S_IMODE(file.path.stat().st_mode) == 0o600
        assert stat.S_IMODE(file.path.parent.stat().st_mode) == 0o700
    finally:
        file.close(remove=True)
    assert not file.path.exists()


def test_a_half_written_slot_is_not_read(tmp_path: Path) -> None:
    """An open is live only once its state byte is set, last: a process killed before that
    leaves nothing a sweeper would bill; a damaged header is skipped."""
    file = SlotFile(tmp_path, process_owner())
    try:
        offset = file.open(_skeleton().to_json(), b"", 1.0, 7)
        data = bytearray(file.path.read_bytes())
        data[offset + 4] = 0  # the state byte never written
        assert read_rows(bytes(data), "me") == []
        data[offset + 4] = 1
        data[offset + 5] = 7  # a selector that is neither copy
        assert read_rows(bytes(data), "me") == []
    finally:
        file.close(remove=True)


_HOLDER = textwrap.dedent(
    """\
    import sys, time
    from pathlib import Path
    from llmproxy.usage.journal import CHECKPOINT_INTERVAL, process_owner
    from llmproxy.usage.record import UsageRecord
    from llmproxy.usage.slots import SlotFile
    file = SlotFile(Path(sys.argv[1]), process_owner())
    record = UsageRecord(
        request_id="held", model="m", prompt_tokens=4, completion_tokens=0, total_tokens=4,
        usage_source="estimated", status="interrupted", key_id="k1",
    )
    offset = file.open(record.to_json(), b"", time.time(), 4)
    file.count(offset, 4, 12, time.time())
    print(record.id, flush=True)
    time.sleep(60)
    """
)


def _holder(directory: Path) -> tuple[subprocess.Popen[str], str]:
    """A process that journals one request (12 tokens counted) and then hangs."""
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(directory)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    return child, child.stdout.readline().strip()


def _kill(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait()
    if child.stdout is not None:
        child.stdout.close()


def test_a_file_is_an_orphan_only_once_its_process_is_gone(tmp_path: Path) -> None:
    """A live process's file is never taken; killed -9, its file is, by one sweeper only."""
    child, record_id = _holder(tmp_path)
    try:
        assert orphans(tmp_path, None) == []
    finally:
        _kill(child)
    found = orphans(tmp_path, None)
    assert len(found) == 1
    assert orphans(tmp_path, None) == []  # locked by the first sweeper meanwhile
    rows = read_rows(found[0].read(), "dead")
    assert [(UsageRecord.from_json(r.body).id, r.completion_tokens) for r in rows] == [
        (record_id, 12)
    ]
    found[0].settled()
    assert list(tmp_path.glob(f"*{SUFFIX}")) == []


async def test_a_sweep_bills_a_dead_process_once_and_skips_what_is_stored(
    tmp_path: Path,
) -> None:
    """A live journal settles a killed process's file into the store as ``interrupted``
    records, queued for the webhook; a record already stored (the crash came after its
    commit) is not written twice."""
    store = SqliteUsageStore(tmp_path / "usage.db")
    await store.open()
    directory = FileJournal.directory_for(store.path)
    child, record_id = _holder(directory)
    stored = _skeleton()
    await store.write([stored], outbox=True)
    # A second dead file holding the stored record's slot too.
    file = SlotFile(directory, "another:owner")
    file.open(stored.to_json(), b"", 1.0, 7)
    journal = FileJournal(store, directory, outbox=True)
    try:
        await journal.start()
        assert await journal.sweep() == []  # both owners alive
        _kill(child)
        file.close(remove=False)
        recovered = await journal.sweep()
        assert [(r.record.id, r.record.status, r.record.completion_tokens) for r in recovered] == [
            (record_id, "interrupted", 12)
        ]
        assert await journal.sweep() == []
        assert store.depth() == 2  # the stored record's and the settled one's, once each
        ids = sorted(r.id for r in await store.recent())
        assert ids == sorted([stored.id, record_id])
        assert [p.name for p in directory.iterdir()] == [journal._file.path.name]  # type: ignore[union-attr]
    finally:
        await journal.close()
        await store.close()
        if child.poll() is None:
            _kill(child)
    assert list(directory.iterdir()) == []  # a clean stop with nothing open: no file left


async def test_a_slot_stays_until_its_record_is_written(tmp_path: Path) -> None:
    """A request that ended keeps its slot (with its last checkpoint's counts) until its
    record is committed; a stop with such a slot keeps the file for the next start."""
    store = SqliteUsageStore(tmp_path / "usage.db")
    await store.open()
    journal = FileJournal(store, tmp_path / "inflight", outbox=False)
    await journal.start()
    try:
        skeleton = _skeleton()
        entry = journal.open(skeleton, lambda: (7, 30))
        await entry.durable()
        await asyncio.sleep(CHECKPOINT_INTERVAL * 1.5)
        entry.end()
        assert journal.open_requests == 0
        assert journal._file is not None
        assert _rows(journal._file) == [(skeleton.id, 7, 30, "")]
        journal.written([skeleton])
        assert _rows(journal._file) == []
        kept = journal.open(_skeleton(), lambda: (7, 1))
        kept.end()
    finally:
        path = journal._file.path if journal._file is not None else None
        await journal.close()
        await store.close()
    assert path is not None
    assert path.exists()  # its record never written: billed at the next start


@pytest.mark.parametrize("synchronous", ["normal", "full"])
async def test_the_journal_follows_the_durability_asked_for(
    tmp_path: Path, synchronous: str
) -> None:
    """``synchronous: normal`` (a killed process) journals in a file per process;
    ``full`` (a power loss too) in the database, committed before the first byte."""
    from llmproxy.config.model import Config
    from llmproxy.usage.journal import Journal
    from llmproxy.usage.sink import UsageSink

    config = Config.model_validate(
        {
            "backends": [{"url": "http://127.0.0.1:9", "models": ["m"]}],
            "usage": {"database": str(tmp_path / "usage.db"), "synchronous": synchronous},
        }
    )

    sink = UsageSink(config, tmp_path)
    await sink.start()
    try:
        assert type(sink.journal) is (FileJournal if synchronous == "normal" else Journal)
    finally:
        await sink.close()
