"""``usage_hook``: deliver the outbox to a webhook, at least once, signed.

What a receiver gets, for ``format: batch`` (the default), one POST per batch::

    POST <usage_hook.url>
    Content-Type: application/json
    X-LLMProxy-Timestamp: 1718000000
    X-LLMProxy-Signature: sha256=<hex HMAC-SHA256(secret, b"1718000000." + body)>

    {"records": [{"id": "...", "request_id": "...", "prompt_tokens": 12, ...}, ...]}

Budget alerts (:mod:`llmproxy.usage.alerts`) travel through the same outbox but in a POST of
their own, in every format: ``{"events": [{"event": "budget_alert", ...}]}``.

``format: seed`` posts one record per request, in the Go version's field names, with the record's
``id`` added and the key's prefix (never the key) as ``api_key``::

    {"id", "request_id", "api_key", "user_id", "model",
     "prompt_tokens", "completion_tokens", "total_tokens", "timestamp"}

The signature header is sent only when ``usage_hook.secret`` is set; receivers check it with
:func:`verify_signature` (or its three lines) and should refuse timestamps too far from their clock.

Guarantees: a record leaves the outbox only after a 2xx answer covering it, so a receiver may see
a record twice (after a timeout, or a gateway killed between the answer and the delete) and must
deduplicate on ``id``. Gateways sharing one outbox (the usage store on PostgreSQL) each claim
different records for an attempt (:meth:`~llmproxy.usage.store.UsageStore.claim`), so in the
normal case no record is sent by two of them. Any other answer or a network error is a failed
attempt: the next one waits ``backoff_initial`` doubling up to ``backoff_max``, with ±50 %
jitter; a record that failed ``max_attempts`` times moves to the dead-letter table.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Sequence

import aiohttp
import msgspec

from llmproxy.config.model import UsageHookConfig
from llmproxy.usage.alerts import EVENT, EVENT_PREFIX
from llmproxy.usage.record import UsageRecord
from llmproxy.usage.rows import PendingRecord
from llmproxy.usage.store import Claim, UsageStore

log = logging.getLogger("llmproxy.usage")

CLAIMED_ELSEWHERE_PAUSE = 0.25
"""Seconds to wait when every due record is held by another gateway's attempt."""

SIGNATURE_HEADER = "X-LLMProxy-Signature"
TIMESTAMP_HEADER = "X-LLMProxy-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value: ``sha256=`` and the HMAC of ``"<timestamp>." + body``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """Whether ``signature`` (the header value) signs ``body`` sent at ``timestamp``."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def batch_body(bodies: Sequence[bytes]) -> bytes:
    """The ``batch`` format: the stored JSON joined into ``{"records": [...]}``, not re-encoded."""
    return b'{"records":[' + b",".join(bodies) + b"]}"


def events_body(bodies: Sequence[bytes]) -> bytes:
    """Events that are not usage records (budget alerts: :mod:`llmproxy.usage.alerts`), joined
    into ``{"events": [...]}``, in every ``format``."""
    return b'{"events":[' + b",".join(bodies) + b"]}"


class _Probe(msgspec.Struct):
    event: str = ""


_probe = msgspec.json.Decoder(_Probe).decode


def is_event(body: bytes) -> bool:
    """Whether an outbox body is an event (it has a top-level ``event``) rather than a usage
    record (which never has one). PostgreSQL hands JSON back with its keys reordered, so the
    member is looked up, not the prefix."""
    if body.startswith(EVENT_PREFIX):
        return True
    if b'"event"' not in body:
        return False
    try:
        return _probe(body).event == EVENT
    except msgspec.MsgspecError:
        return False


class SeedRecord(msgspec.Struct):
    """The Go version's usage report, plus ``id`` for deduplication."""

    id: str
    request_id: str
    api_key: str
    user_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    timestamp: int


def seed_body(record: UsageRecord) -> bytes:
    """The ``seed`` format of one record; ``api_key`` holds the key's prefix, never the key."""
    return msgspec.json.encode(
        SeedRecord(
            id=record.id,
            request_id=record.request_id,
            api_key=record.key_prefix,
            user_id=record.user_id,
            model=record.model,
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
            total_tokens=record.total_tokens,
            timestamp=int(record.time),
        )
    )


def backoff_delay(failures: int, initial: float, maximum: float) -> float:
    """Wait before the next attempt after ``failures`` consecutive failures (≥ 1), jittered."""
    base = min(maximum, initial * 2.0 ** min(failures - 1, 32))
    return base * random.uniform(0.5, 1.5)


class UsageDelivery:
    """Drains a usage store's outbox to ``usage_hook.url`` until cancelled.

    ``await delivery.run()`` in a task; :meth:`wake` after new records were written so a full
    batch goes out without waiting for ``batch_interval``. Counters (plain ints, for metrics):
    ``delivery_attempts`` (POSTs), ``delivery_failures`` (failed POSTs), ``delivered`` (records
    acknowledged), ``dead_lettered`` (records moved to the dead letters).
    """

    def __init__(self, config: UsageHookConfig, outbox: UsageStore) -> None:
        self.config = config
        self.outbox = outbox
        self.max_attempts = max(config.max_attempts, config.retry + 1)
        self.delivery_attempts = 0
        self.delivery_failures = 0
        self.delivered = 0
        self.dead_lettered = 0
        self._wakeup = asyncio.Event()
        self._failures = 0

    def wake(self) -> None:
        """New records are in the outbox."""
        self._wakeup.set()

    async def run(self) -> None:
        """Deliver forever: wait for a batch, POST it, back off while the receiver fails."""
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await self._next_batch()
                try:
                    async with self.outbox.claim(self.config.batch_size) as claim:
                        ok = await self._send(session, claim) if claim.records else None
                except Exception as exc:  # the store failed: the records stay where they were
                    log.warning("usage_hook: the outbox failed mid-attempt: %s", exc)
                    ok = False
                if ok is None:
                    # Another gateway holds them (a shared outbox): it is sending them now.
                    await asyncio.sleep(CLAIMED_ELSEWHERE_PAUSE)
                elif ok:
                    self._failures = 0
                else:
                    self._failures += 1
                    await asyncio.sleep(
                        backoff_delay(
                            self._failures, self.config.backoff_initial, self.config.backoff_max
                        )
                    )

    async def _next_batch(self) -> list[PendingRecord]:
        """Wait until a batch is due: full, or as full as it got within ``batch_interval`` of
        its oldest record (answers it, as seen; the attempt claims what is there then)."""
        size = self.config.batch_size
        while True:
            self._wakeup.clear()
            try:
                batch = await self.outbox.pending(size)
            except Exception as exc:
                log.warning("usage_hook: cannot read the outbox: %s", exc)
                batch = []
            if len(batch) >= size or (batch and self._failures):
                return batch
            if batch:
                wait = batch[0].queued_at + self.config.batch_interval - time.time()
                if wait <= 0:
                    return batch
            else:
                wait = self.config.batch_interval
            # A wakeup re-reads early, to send as soon as a batch fills.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=wait)

    async def _send(self, session: aiohttp.ClientSession, claim: Claim) -> bool:
        """Deliver the claimed records (and budget alerts, in a body of their own); answers
        whether every one was acknowledged."""
        batch: list[PendingRecord] = []
        events: list[PendingRecord] = []
        for row in claim.records:
            (events if is_event(row.body) else batch).append(row)
        ok = True
        if events:
            body = events_body([row.body for row in events])
            ok = await self._post(session, claim, body, [row.id for row in events])
        if not batch:
            return ok
        if self.config.format == "seed":
            for row in batch:
                body = seed_body(UsageRecord.from_json(row.body))
                ok = await self._post(session, claim, body, [row.id]) and ok
            return ok
        return (
            await self._post(
                session, claim, batch_body([row.body for row in batch]), [r.id for r in batch]
            )
            and ok
        )

    async def _post(
        self, session: aiohttp.ClientSession, claim: Claim, body: bytes, ids: list[str]
    ) -> bool:
        """One POST; on a 2xx the records are deleted, otherwise their attempts counted."""
        headers = {"Content-Type": "application/json", **self.config.headers}
        if self.config.secret:
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(self.config.secret, timestamp, body)
        self.delivery_attempts += 1
        try:
            async with session.post(self.config.url, data=body, headers=headers) as response:
                await response.read()
                error = "" if 200 <= response.status < 300 else f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if not error:
            await claim.delivered(ids)
            self.delivered += len(ids)
            return True
        self.delivery_failures += 1
        moved = await claim.failed(ids, error, self.max_attempts)
        if moved:
            self.dead_lettered += moved
            log.error(
                "usage_hook: %d records moved to the dead letters after %d attempts (%s); "
                "check usage_hook.url %s",
                moved,
                self.max_attempts,
                error,
                self.config.url,
            )
        elif self._failures == 0:
            log.warning(
                "usage_hook: delivery to %s failed (%s); records wait in the outbox",
                self.config.url,
                error,
            )
        return False
