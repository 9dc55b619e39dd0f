"""``/usage``: recent records, per-key summaries and the live record stream (``llmproxy usage``).

Recent records and summaries are read from the usage store; so they show what is written, about
``WRITE_LINGER`` behind the request path. With the store on PostgreSQL they cover every gateway
sharing it. The live stream reads the sink's in-process bus and sees a record the moment its
request settles — with one process on its own store. When others write to the same store (several
workers on one SQLite file, replicas on PostgreSQL) the bus holds only this process's records, so
the stream follows the store instead (:meth:`~llmproxy.usage.store.UsageStore.follow`) and shows
every worker's and every replica's requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Final, TypeVar

import msgspec
from aiohttp import web

from llmproxy.daemon.admin_http import (
    AdminError,
    json_response,
    query_int,
    query_seconds,
    query_text,
)
from llmproxy.daemon.runtime import RuntimeState
from llmproxy.dsn import is_postgres_url
from llmproxy.usage.record import UsageRecord
from llmproxy.usage.sink import UsageSink
from llmproxy.usage.store import Follower, UsageStore

_T = TypeVar("_T")

log = logging.getLogger("llmproxy.admin")

KEEPALIVE_INTERVAL: Final = 15.0
"""Seconds of silence after which the stream sends an empty line, so proxies and clients with
read timeouts keep the connection open."""

POLL_INTERVAL: Final = 0.5
"""How often an idle stream checks whether its client left or the daemon is stopping.

aiohttp does not cancel a handler when its client disconnects, and a stream with nothing to send
would otherwise hold its bus subscription until the next keep-alive write fails.
"""

MAX_RECENT: Final = 10_000
"""Most records one ``/usage/recent`` answer holds."""

DEFAULT_SUMMARY_WINDOW: Final = 3600.0


def record_matches(record: UsageRecord, key: str | None, model: str | None) -> bool:
    """Whether ``record`` passes the stream's filters: ``key`` is an id or a name."""
    if key is not None and key not in (record.key_id, record.key_name):
        return False
    return model is None or record.model == model


class UsageApi:
    """The ``/usage`` handlers; ``closing`` is set when the admin server stops."""

    def __init__(
        self, state: RuntimeState, closing: asyncio.Event, *, every_worker: bool = False
    ) -> None:
        self._state = state
        self._closing = closing
        self._every_worker = every_worker
        """Several workers write the usage file: the stream follows it rather than the bus."""

    def _shared(self, sink: UsageSink) -> bool:
        """Others write to this process's usage store (workers, or replicas on PostgreSQL)."""
        return self._every_worker or is_postgres_url(sink.config.usage.database)

    def register(self, router: web.UrlDispatcher) -> None:
        """Add the ``/usage`` routes."""
        router.add_get("/usage/recent", self.recent)
        router.add_get("/usage/summary", self.summary)
        router.add_get("/usage/stream", self.stream)
        router.add_get("/usage/dead-letters", self.dead_letters)
        router.add_post("/usage/dead-letters/requeue", self.requeue)

    def _sink(self) -> UsageSink:
        sink = self._state.usage
        if sink is None:
            raise AdminError(
                409, "this daemon keeps no usage records (no usage sink)", "no_usage_store"
            )
        return sink

    def _store(self) -> UsageStore:
        try:
            return self._sink().store
        except RuntimeError:
            raise AdminError(
                503, "the usage store is not open yet", "usage_store_starting"
            ) from None

    def _currency(self) -> str:
        """The current config's ``pricing_currency`` (what every ``cost`` is counted in)."""
        return self._state.current.config.pricing_currency

    @staticmethod
    async def _read(work: Awaitable[_T]) -> _T:
        """A read of the store; its failure (a database down) is a 503 naming it."""
        try:
            return await work
        except Exception as exc:
            raise AdminError(503, f"the usage store failed: {exc}", "usage_store_failed") from None

    async def recent(self, request: web.Request) -> web.Response:
        store = self._store()
        limit = query_int(request, "limit", 100, low=1, high=MAX_RECENT)
        key, model = query_text(request, "key"), query_text(request, "model")
        records = await self._read(store.recent(limit, key=key, model=model))
        return json_response({"records": [msgspec.to_builtins(r) for r in records]})

    async def summary(self, request: web.Request) -> web.Response:
        store = self._store()
        since = time.time() - query_seconds(request, "since", DEFAULT_SUMMARY_WINDOW)
        rows = await self._read(store.summary(since))
        return json_response(
            {
                "since": since,
                "currency": self._currency(),
                "rows": [row.as_json() for row in rows],
            }
        )

    async def dead_letters(self, request: web.Request) -> web.Response:
        """Records the webhook receiver failed ``max_attempts`` times, newest first."""
        store = self._store()
        limit = query_int(request, "limit", 100, low=1, high=MAX_RECENT)
        letters = await self._read(store.dead_letter_records(limit))
        return json_response(
            {
                "count": store.dead_letter_count(),
                "records": [
                    {
                        "id": letter.id,
                        "attempts": letter.attempts,
                        "error": letter.error,
                        "moved_at": letter.moved_at,
                        "record": msgspec.json.decode(letter.body),
                    }
                    for letter in letters
                ],
            }
        )

    async def requeue(self, _request: web.Request) -> web.Response:
        """Move every dead letter back to the outbox; the webhook is tried again at once."""
        sink = self._sink()
        self._store()  # 503 while the store is not open yet
        return json_response({"requeued": await self._read(sink.requeue_dead_letters())})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """NDJSON, one record per line as requests settle; an empty line after 15 s of quiet."""
        sink = self._sink()
        key, model = query_text(request, "key"), query_text(request, "model")
        if self._shared(sink):
            # Following before the headers go out: a client that saw them sees every later one.
            batches = await self._read(self._store().follow())
            return await self._ndjson(request, batches, key, model)
        # Subscribe before the headers go out: a client that saw them sees every later record.
        with contextlib.closing(sink.bus.subscribe()) as subscription:
            return await self._ndjson(request, _from_bus(subscription), key, model)

    async def _ndjson(
        self,
        request: web.Request,
        batches: Follower,
        key: str | None,
        model: str | None,
    ) -> web.StreamResponse:
        """Write the matching records of each batch (an empty batch: nothing new within an
        interval) until the client leaves or the admin server stops, with keep-alive lines.
        ``batches`` is closed however this ends (it may hold a database connection)."""
        async with contextlib.aclosing(batches):
            response = web.StreamResponse(
                headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"}
            )
            await response.prepare(request)
            try:
                await self._write_batches(request, response, batches, key, model)
            except ConnectionResetError:
                pass  # the client left between two checks
            except Exception as exc:  # the store failed while following it: the stream ends
                log.warning("usage stream ended: the usage store failed: %s", exc)
            return response

    async def _write_batches(
        self,
        request: web.Request,
        response: web.StreamResponse,
        batches: Follower,
        key: str | None,
        model: str | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        last_write = loop.time()
        async for records in batches:
            if self._closing.is_set() or _client_gone(request):
                break
            lines = [r.to_json() + b"\n" for r in records if record_matches(r, key, model)]
            if lines:
                await response.write(b"".join(lines))
                last_write = loop.time()
            elif loop.time() - last_write >= KEEPALIVE_INTERVAL:
                await response.write(b"\n")
                last_write = loop.time()


async def _from_bus(
    subscription: AsyncIterator[UsageRecord],
) -> AsyncGenerator[list[UsageRecord], None]:
    """This process's records as they settle, or an empty batch every POLL_INTERVAL of quiet."""
    while True:
        try:
            async with asyncio.timeout(POLL_INTERVAL):
                record = await anext(subscription)
        except TimeoutError:
            yield []
            continue
        yield [record]


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
