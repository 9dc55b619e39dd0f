"""usage_hook delivery against a real HTTP receiver: batches, retries, dead letters, signatures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from llmproxy.config.model import Config
from llmproxy.usage.delivery import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    backoff_delay,
    sign,
    verify_signature,
)
from llmproxy.usage.record import UsageRecord
from llmproxy.usage.sink import UsageSink

SECRET = "s3cret"


class Receiver:
    """A webhook receiver on 127.0.0.1 that records ids (duplicates too) and checks signatures."""

    def __init__(self, *, secret: str = "", fail_first: int = 0, status: int = 500) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.status = status
        self.always_fail = False
        self.requests = 0
        self.ids: list[str] = []
        self.records: dict[str, dict[str, Any]] = {}
        self.bad_signatures = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/usage"

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/usage", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests += 1
        if self.always_fail or self.requests <= self.fail_first:
            return web.Response(status=self.status)
        if self.secret:
            timestamp = request.headers.get(TIMESTAMP_HEADER, "")
            signature = request.headers.get(SIGNATURE_HEADER, "")
            if not verify_signature(self.secret, timestamp, body, signature):
                self.bad_signatures += 1
                return web.Response(status=401)
        data = json.loads(body)
        for record in data.get("records", [data]):
            self.ids.append(record["id"])
            self.records[record["id"]] = record
        return web.Response(status=204)


def usage_config(url: str = "http://127.0.0.1:9/usage", **hook: Any) -> Config:
    """A config whose usage_hook posts to ``url`` and retries fast."""
    settings: dict[str, Any] = {
        "enabled": True,
        "url": url,
        "timeout": 2,
        "batch_size": 50,
        "batch_interval": 0.02,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
        **hook,
    }
    return Config.model_validate(
        {"backends": [{"url": "http://127.0.0.1:1"}], "usage_hook": settings}
    )


def make_record(n: int, **fields: Any) -> UsageRecord:
    """A record with ``n`` prompt and ``2n`` completion tokens."""
    settings: dict[str, Any] = {
        "request_id": f"req-{n}",
        "model": "m",
        "prompt_tokens": n,
        "completion_tokens": 2 * n,
        "total_tokens": 3 * n,
        "usage_source": "backend",
        "key_id": "k1",
        "key_prefix": "sk-abcd",
        **fields,
    }
    return UsageRecord(**settings)


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until ``condition()`` holds, or fail after ``within`` seconds."""
    # Polling: the conditions read counters of several objects, with no event to wait on.
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_batches_are_delivered_and_leave_the_outbox(tmp_path: Path) -> None:
    """Submitted records reach the receiver in batches and the outbox empties."""
    receiver = Receiver(secret=SECRET)
    await receiver.start()
    sink = UsageSink(usage_config(receiver.url, secret=SECRET), tmp_path)
    await sink.start()
    records = [make_record(n) for n in range(120)]
    for record in records:
        sink.submit(record)
    await until(lambda: len(set(receiver.ids)) == 120)
    await until(lambda: sink.outbox_depth() == 0)
    assert receiver.requests >= 3  # batch_size 50
    assert receiver.bad_signatures == 0
    assert sink.delivered == 120
    assert receiver.records[records[7].id]["prompt_tokens"] == 7
    await sink.close()
    await receiver.stop()


async def test_receiver_errors_are_retried_until_it_recovers(tmp_path: Path) -> None:
    """After 500s the receiver recovers; every record is delivered and counted once after dedup."""
    receiver = Receiver(fail_first=4, status=500)
    await receiver.start()
    sink = UsageSink(usage_config(receiver.url), tmp_path)
    await sink.start()
    records = [make_record(n) for n in range(1, 201)]
    for record in records:
        sink.submit(record)
    await until(lambda: sink.outbox_depth() == 0 and sink.written == 200)
    assert sink.delivery_failures >= 4
    assert set(receiver.ids) == {r.id for r in records}
    delivered_tokens = sum(r["total_tokens"] for r in receiver.records.values())
    assert delivered_tokens == sum(r.total_tokens for r in records)
    assert sink.dead_letters() == 0
    await sink.close()
    await receiver.stop()


async def test_receiver_down_then_up_gets_everything(tmp_path: Path) -> None:
    """Connection refused for a while, then the receiver comes up: nothing is lost."""
    receiver = Receiver()
    await receiver.start()
    port = receiver.port
    await receiver.stop()
    sink = UsageSink(usage_config(receiver.url), tmp_path)
    await sink.start()
    records = [make_record(n) for n in range(80)]
    for record in records:
        sink.submit(record)
    await until(lambda: sink.delivery_failures >= 3)
    assert sink.outbox_depth() == 80
    await receiver.start(port)
    await until(lambda: sink.outbox_depth() == 0)
    assert set(receiver.ids) == {r.id for r in records}
    await sink.close()
    await receiver.stop()


async def test_refused_records_move_to_the_dead_letters(tmp_path: Path) -> None:
    """Records a receiver keeps refusing (400) go to the dead letters after max_attempts."""
    receiver = Receiver(status=400)
    receiver.always_fail = True
    await receiver.start()
    sink = UsageSink(usage_config(receiver.url, retry=0, max_attempts=3), tmp_path)
    await sink.start()
    for n in range(10):
        sink.submit(make_record(n))
    await until(lambda: sink.dead_letters() == 10)
    assert sink.outbox_depth() == 0
    assert receiver.requests == 3
    letters = await sink.store.dead_letter_records()
    assert {letter.error for letter in letters} == {"HTTP 400"}
    assert all(letter.attempts == 3 for letter in letters)
    await sink.close()
    await receiver.stop()


async def test_dead_letters_requeued_after_a_long_outage_are_all_delivered(
    tmp_path: Path,
) -> None:
    """An outage longer than max_attempts allows parks records in the dead letters; once the
    receiver is back, a requeue delivers every one of them and empties the dead letters."""
    receiver = Receiver(status=503)
    receiver.always_fail = True
    await receiver.start()
    sink = UsageSink(usage_config(receiver.url, retry=0, max_attempts=2), tmp_path)
    await sink.start()
    records = [make_record(n) for n in range(10)]
    for record in records:
        sink.submit(record)
    await until(lambda: sink.dead_letters() == 10)
    receiver.always_fail = False
    assert await sink.requeue_dead_letters() == 10
    assert sink.dead_letters() == 0
    await until(lambda: sink.outbox_depth() == 0)
    assert {record.id for record in records} <= set(receiver.ids)
    await sink.close()
    await receiver.stop()


def test_signature_covers_timestamp_and_body() -> None:
    """The signature verifies with the secret, and fails for another body, timestamp or secret."""
    body = b'{"records":[]}'
    signature = sign(SECRET, "1700000000", body)
    assert signature.startswith("sha256=")
    assert len(signature) == len("sha256=") + 64
    assert verify_signature(SECRET, "1700000000", body, signature)
    assert not verify_signature(SECRET, "1700000001", body, signature)
    assert not verify_signature(SECRET, "1700000000", body + b" ", signature)
    assert not verify_signature("other", "1700000000", body, signature)


async def test_signed_deliveries_verify_at_the_receiver(tmp_path: Path) -> None:
    """A receiver with the wrong secret refuses deliveries; the right one accepts them."""
    receiver = Receiver(secret="wrong")
    await receiver.start()
    sink = UsageSink(usage_config(receiver.url, secret=SECRET), tmp_path)
    await sink.start()
    sink.submit(make_record(1))
    await until(lambda: receiver.bad_signatures >= 1)
    receiver.secret = SECRET
    await until(lambda: sink.outbox_depth() == 0)
    assert len(receiver.ids) == 1
    await sink.close()
    await receiver.stop()


async def test_seed_format_posts_one_record_at_a_time(tmp_path: Path) -> None:
    """format: seed posts each record alone in the Go field names, with the key prefix only."""
    receiver = Receiver()
    await receiver.start()
    sink = UsageSink(usage_config(receiver.url, format="seed"), tmp_path)
    await sink.start()
    records = [make_record(n, user_id="u1", time=1700000000.5) for n in range(3)]
    for record in records:
        sink.submit(record)
    await until(lambda: len(receiver.ids) == 3)
    assert receiver.requests == 3
    assert receiver.records[records[2].id] == {
        "id": records[2].id,
        "request_id": "req-2",
        "api_key": "sk-abcd",
        "user_id": "u1",
        "model": "m",
        "prompt_tokens": 2,
        "completion_tokens": 4,
        "total_tokens": 6,
        "timestamp": 1700000000,
    }
    await sink.close()
    await receiver.stop()


def test_backoff_grows_to_its_bound_with_jitter() -> None:
    """The wait doubles per failure, stays within ±50 %, and never exceeds 1.5 × the maximum."""
    for failures in range(1, 40):
        base = min(10.0, 0.5 * 2 ** (failures - 1))
        assert 0.5 * base <= backoff_delay(failures, 0.5, 10.0) <= 1.5 * base
