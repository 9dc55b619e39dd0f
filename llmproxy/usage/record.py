"""One usage record: what a request cost, who pays for it, and its idempotency key.

The gateway builds one record per finished request, from the settled :class:`Usage`::

    record = UsageRecord.from_usage(
        usage,
        request_id=request_id,
        key_id=key.id, key_name=key.name, key_prefix=key.prefix, user_id=key.user_id,
        metadata=decision.metadata,
        model=model, backend=backend.display_name, endpoint="/v1/chat/completions",
        stream=True, status=200, latency_ms=812.5, ttft_ms=95.0,
    )
    sink.submit(record)

``id`` is unique and time-ordered (a millisecond timestamp, a random per-process tag and a
counter, as 32 hex digits): receivers deduplicate on it, since delivery is at least once. The
record never holds the API key itself, only ``key_prefix``.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

from llmproxy.finish import UsageSource
from llmproxy.usage.extract import Usage

MetadataValue = str | int | float | bool | None


def flat_metadata(metadata: Mapping[str, object]) -> dict[str, MetadataValue]:
    """Usage records carry flat metadata; anything nested is written as text."""
    return {
        name: value if value is None or isinstance(value, str | int | float | bool) else str(value)
        for name, value in metadata.items()
    }


_PROCESS_TAG = os.urandom(4).hex()
_sequence = itertools.count(int.from_bytes(os.urandom(5), "big"))


def new_record_id() -> str:
    """A unique id whose lexical order follows creation time (to the millisecond).

    A random tag per process and a counter (started at a random point) instead of fresh random
    bits per record: unique without a system call on every request. After a fork the child
    draws a new tag (:func:`_new_process`).
    """
    millis = time.time_ns() // 1_000_000
    return f"{millis:012x}{_PROCESS_TAG}{next(_sequence) & _SEQUENCE_MASK:012x}"


_SEQUENCE_MASK = (1 << 48) - 1


def _new_process() -> None:
    global _PROCESS_TAG, _sequence
    _PROCESS_TAG = os.urandom(4).hex()
    _sequence = itertools.count(int.from_bytes(os.urandom(5), "big"))


os.register_at_fork(after_in_child=_new_process)


class UsageRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The tokens one request cost, as stored, delivered and shown by ``llmproxy usage``."""

    request_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    usage_source: UsageSource
    id: str = msgspec.field(default_factory=new_record_id)
    time: float = msgspec.field(default_factory=time.time)
    key_id: str = ""
    key_name: str = ""
    key_prefix: str = ""
    user_id: str = ""
    metadata: dict[str, MetadataValue] = msgspec.field(default_factory=dict)
    backend: str = ""
    endpoint: str = ""
    api: str = ""
    """The model API (``chat``, ``completions``, ``embeddings``, ``messages``, ``responses``:
    :mod:`llmproxy.apis`); "" for another path."""
    stream: bool = False
    status: int | Literal["interrupted"] = 200
    """The HTTP status sent; ``"interrupted"`` for a request the gateway was killed while serving
    (settled at its next start from the journal: :mod:`llmproxy.usage.journal`)."""
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    finish_reason: str | None = None
    cancelled: bool = False
    cached_tokens: int = 0
    """Of ``prompt_tokens``, those the backend read from its prefix cache."""
    team: str = ""
    """The team of the key ("" for none)."""
    cost: float = 0.0
    """What the request cost by the gateway's ``pricing`` table, in its ``pricing_currency``
    (0 for a model without a price): a whole number of nano-units (:mod:`llmproxy.pricing`)."""

    @classmethod
    def from_usage(cls, usage: Usage, **fields: Any) -> UsageRecord:
        """A record carrying ``usage``'s counts, source and finish reason, plus ``fields``."""
        if usage.finish_reason is not None:
            fields.setdefault("finish_reason", usage.finish_reason)
        return cls(
            cached_tokens=usage.cached_tokens,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            usage_source=usage.source,
            **fields,
        )

    def to_json(self) -> bytes:
        """The record as a JSON object (the shape stored and delivered)."""
        return _encoder.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> UsageRecord:
        """Read back what :meth:`to_json` wrote."""
        return _decoder.decode(data)


_encoder = msgspec.json.Encoder()


def records_json(records: Sequence[UsageRecord]) -> bytes:
    """``records`` as one JSON array, in one call (the usage writer stores batches this way)."""
    return _encoder.encode(records)


_decoder = msgspec.json.Decoder(UsageRecord)
