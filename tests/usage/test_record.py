"""UsageRecord: JSON round trip, ids, and building one from a settled Usage."""

from __future__ import annotations

import json
import multiprocessing

from llmproxy.usage import Usage
from llmproxy.usage.record import UsageRecord, new_record_id


def test_json_round_trip_keeps_every_field() -> None:
    """to_json then from_json gives back an equal record, metadata and None values included."""
    record = UsageRecord(
        request_id="req-1",
        model="llama",
        prompt_tokens=10,
        completion_tokens=5,
        total_tokens=15,
        usage_source="counted",
        key_id="k1",
        key_name="prod",
        key_prefix="sk-ab",
        user_id="u1",
        metadata={"team": "x", "tier": 2, "beta": True, "none": None},
        backend="b1",
        endpoint="/v1/chat/completions",
        stream=True,
        status=200,
        latency_ms=812.5,
        ttft_ms=None,
        finish_reason="stop",
        cancelled=True,
    )
    assert UsageRecord.from_json(record.to_json()) == record
    assert json.loads(record.to_json())["id"] == record.id


def test_from_usage_copies_counts_source_and_finish_reason() -> None:
    """A record built from a Usage carries its tokens, source and finish reason."""
    usage = Usage(3, 4, 7, "estimated", "length")
    record = UsageRecord.from_usage(usage, request_id="r", model="m", ttft_ms=12.0)
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (3, 4, 7)
    assert record.usage_source == "estimated"
    assert record.finish_reason == "length"
    assert record.ttft_ms == 12.0


def test_ids_are_unique_and_time_ordered() -> None:
    """Ids never repeat, are 32 hex digits, and start with the creation millisecond."""
    ids = [new_record_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert [i[:12] for i in ids] == sorted(i[:12] for i in ids)


def _child_id(queue: multiprocessing.Queue[str]) -> None:
    queue.put(new_record_id())


def test_a_forked_worker_draws_its_own_tag() -> None:
    """Worker processes forked from one parent never share the tag that keeps ids apart."""
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = context.Queue()
    process = context.Process(target=_child_id, args=(queue,))
    process.start()
    child = queue.get(timeout=10)
    process.join(10)
    parent = new_record_id()
    assert child[12:20] != parent[12:20]
