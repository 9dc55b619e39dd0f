"""UsageSink: the request path's hand-over, overflow, close, the store and the live bus."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from llmproxy.config.model import Config
from llmproxy.usage.outbox import UsageOutbox
from llmproxy.usage.record import UsageRecord
from llmproxy.usage.sink import UsageSink
from tests.usage.test_delivery import make_record, until, usage_config


def store_only_config(**usage: object) -> Config:
    """A config without a webhook."""
    return Config.model_validate({"backends": [{"url": "http://127.0.0.1:1"}], "usage": usage})


async def test_overflow_is_counted_and_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Records beyond queue_size are counted as overflow, with one warning, and never block."""
    sink = UsageSink(store_only_config(queue_size=5), tmp_path)
    with caplog.at_level(logging.WARNING, logger="llmproxy.usage"):
        for n in range(20):
            sink.submit(make_record(n))
    assert (sink.submitted, sink.overflow) == (5, 15)
    assert sum("usage queue full" in r.message for r in caplog.records) == 1
    await sink.start()
    await sink.close()
    outbox = UsageOutbox(Path(sink.location))
    assert len(outbox.recent(100)) == 5
    outbox.close()


async def test_records_submitted_before_close_are_all_in_the_outbox(tmp_path: Path) -> None:
    """close() writes every queued record; the outbox holds them all for the next start."""
    sink = UsageSink(usage_config(), tmp_path)  # the receiver is down
    await sink.start()
    records = [make_record(n) for n in range(3000)]
    for record in records:
        sink.submit(record)
    await sink.close(timeout=10)
    assert sink.lost_on_close == 0
    outbox = UsageOutbox(Path(sink.location))
    assert outbox.depth() == 3000
    assert {p.id for p in outbox.pending(5000)} == {r.id for r in records}
    outbox.close()


async def test_without_a_webhook_records_are_only_stored(tmp_path: Path) -> None:
    """usage_hook disabled: records land in the store, nothing waits in an outbox."""
    sink = UsageSink(store_only_config(), tmp_path)
    await sink.start()
    committed: list[str] = []
    sink.on_commit = lambda batch: committed.extend(r.id for r in batch)
    record = make_record(1)
    sink.submit(record)
    await until(lambda: committed == [record.id])
    assert sink.outbox_depth() == 0
    assert sink.delivery_attempts == 0
    assert await sink.store.recent(10, key="k1") == [record]
    await sink.close()


async def test_submit_after_close_is_counted(tmp_path: Path) -> None:
    """A record submitted after close() is refused and counted, not silently dropped."""
    sink = UsageSink(store_only_config(), tmp_path)
    await sink.start()
    await sink.close()
    sink.submit(make_record(1))
    assert sink.rejected_closed == 1


async def test_outbox_alarm_when_over_its_bound(tmp_path: Path) -> None:
    """Beyond max_outbox_records new records are still kept, and the alarm is raised."""
    sink = UsageSink(usage_config(max_outbox_records=10), tmp_path)
    await sink.start()
    for n in range(15):
        sink.submit(make_record(n))
    await until(lambda: sink.written == 15)
    assert sink.outbox_depth() == 15
    assert sink.outbox_over_limit
    assert sink.outbox_alarms >= 5
    await sink.close()


async def test_bus_subscribers_get_records_and_slow_ones_lose_them(tmp_path: Path) -> None:
    """Every subscriber gets each record; one that does not read loses records, counted."""
    sink = UsageSink(store_only_config(subscriber_queue=2), tmp_path)
    await sink.start()
    async with sink.bus.subscribe() as fast, sink.bus.subscribe() as slow:
        received: list[UsageRecord] = []
        for n in range(5):
            record = make_record(n)
            sink.submit(record)
            received.append(await anext(fast))
        assert [r.prompt_tokens for r in received] == list(range(5))
        assert slow.dropped == 3
        assert sink.bus.dropped == 3
    assert sink.bus.subscribers == 0
    await sink.close()
