"""The usage sink: one :class:`~llmproxy.usage.record.UsageRecord` per ended request."""

from __future__ import annotations

import asyncio

from llmproxy.apis import ENDPOINT_API
from llmproxy.finish import Finished, Sink, milliseconds
from llmproxy.usage.record import UsageRecord, flat_metadata, new_record_id
from llmproxy.usage.sink import UsageSink


def usage_sink(sink: UsageSink) -> Sink:
    """The finish sink writing to ``sink``; under ``usage.acknowledge: durable`` it returns
    the future the response's end waits for."""

    def finished(done: Finished) -> asyncio.Future[None] | None:
        # Built in one call, without a dict of fields: this runs for every request.
        record = UsageRecord(
            id=done.record_id or new_record_id(),
            request_id=done.request_id,
            model=done.model,
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            total_tokens=done.total_tokens,
            usage_source=done.usage_source,
            finish_reason=done.finish_reason,
            backend=done.backend,
            endpoint=done.endpoint,
            api=ENDPOINT_API.get(done.endpoint, ""),
            stream=done.stream,
            status=done.status,
            latency_ms=milliseconds(done.duration),
            ttft_ms=milliseconds(done.ttft) if done.ttft is not None else None,
            cancelled=done.cancelled,
            key_id=done.key_id,
            key_name=done.key_name,
            key_prefix=done.key_prefix,
            user_id=done.user_id,
            metadata=flat_metadata(done.metadata),
            cached_tokens=done.cached_tokens,
            team=done.team,
            cost=done.cost,
        )
        if sink.durable:
            return sink.submit_durable(record)
        sink.submit(record)
        return None

    return finished
