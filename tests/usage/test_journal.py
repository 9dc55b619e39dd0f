"""The journal's recovery: rows of dead processes become interrupted records, once; rows of live
ones (another worker sharing the database) are left alone; a written record removes its row."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from llmproxy.usage.journal import owner_alive, process_owner, recover
from llmproxy.usage.outbox import UsageOutbox
from llmproxy.usage.record import UsageRecord


def _skeleton(request_id: str) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        model="m",
        prompt_tokens=7,
        completion_tokens=0,
        total_tokens=7,
        usage_source="estimated",
        key_id="key_1",
        stream=True,
        status="interrupted",
    )


def _dead_owner() -> str:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = process_owner(child.pid)
    child.wait()
    assert owner  # read while it ran (or as a zombie, before wait)
    return owner


def test_owners_are_told_apart_by_pid_and_start_time() -> None:
    assert owner_alive(process_owner())
    assert not owner_alive(_dead_owner())
    pid = process_owner().partition(":")[0]
    assert not owner_alive(f"{pid}:1")  # this pid, another start time: a reused pid
    assert not owner_alive("")


def test_recover_settles_dead_rows_once_and_leaves_live_ones(tmp_path: Path) -> None:
    store = UsageOutbox(tmp_path / "usage.db")
    now = time.time()
    dead, live = _dead_owner(), process_owner()
    store.journal_open(
        [
            ("req-dead", dead, _skeleton("req-dead").to_json(), now - 2, "r:lease"),
            ("req-live", live, _skeleton("req-live").to_json(), now - 2, ""),
            ("req-done", dead, _skeleton("req-done").to_json(), now - 2, ""),
        ]
    )
    store.journal_checkpoint([(9, 30, now - 1, "req-dead")])
    # req-done ended normally before the crash: its record's write removed its row.
    store.write([UsageRecord.from_json(_skeleton("req-done").to_json())], outbox=True)

    recovered = recover(store, outbox=True)
    assert [(r.record.request_id, r.record.status, r.lease) for r in recovered] == [
        ("req-dead", "interrupted", "r:lease")
    ]
    record = recovered[0].record
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (9, 30, 39)
    assert record.finish_reason == "interrupted"
    assert 900 <= record.latency_ms <= 1100
    assert [row[0] for row in store.journal()] == ["req-live"]
    assert store.depth() == 2  # req-done and req-dead queued for the webhook
    assert recover(store, outbox=True) == []  # settled once
    store.close()
