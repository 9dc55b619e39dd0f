"""A request that has ended, as every finish sink reads it.

The request path ends each request by building one :class:`Finished` and handing it to the
finish sinks in order — metrics, access log, usage record, recorder — each in its own package,
each reading only this. Adding a sink is one module and one line where the daemon composes them
(:func:`llmproxy.daemon.runtime.finish_sinks`). The record is plain data: no sink depends on the
gateway, and the gateway depends on no sink.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Literal

import msgspec

UsageSource = Literal["backend", "counted", "estimated"]
"""Where a request's token counts come from (see :class:`llmproxy.usage.Usage`)."""


MS_DIGITS = 2
"""Decimals of the milliseconds records and logs carry: 0.01 ms, below any timing that matters."""


def milliseconds(seconds: float) -> float:
    """``seconds`` as milliseconds rounded to :data:`MS_DIGITS`.

    A duration is a difference of clock readings, so 0.102 s comes out as 101.99999999997544
    ms; the usage record, its webhook and the JSON access log carry 102.0 instead.
    """
    return round(seconds * 1000, MS_DIGITS)


class Finished(msgspec.Struct, frozen=True):
    """One ended request (a msgspec struct: one is built per request, cheaply)."""

    request_id: str
    method: str
    endpoint: str
    """The judged, lower-case path (a bounded label)."""
    client_ip: str | None
    model: str
    stream: bool
    backend: str
    status: int
    """Sent to the client; 499 when the client left before anything was sent."""
    duration: float
    """Seconds from arrival to the end."""
    ttft: float | None
    """Seconds to the first streamed body chunk."""
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    usage_source: UsageSource
    finish_reason: str | None
    cancelled: bool
    bytes_sent: int
    key_id: str = ""
    key_name: str = ""
    key_prefix: str = ""
    user_id: str = ""
    metadata: Mapping[str, object] = msgspec.field(default_factory=dict)
    arrival: float | None = None
    """When recording sampled it: its arrival time (else None)."""
    body: bytes | None = None
    """When recording sampled it: the body as judged, before the gateway's own edits."""
    cached_tokens: int = 0
    """Of ``prompt_tokens``, those read from the backend's prefix cache."""
    team: str = ""
    """The key's team ("" for none)."""
    cost: float = 0.0
    """What the tokens cost by the ``pricing`` table, in ``pricing_currency`` (a whole number of
    nano-units: :mod:`llmproxy.pricing`)."""
    record_id: str = ""
    """The usage record id its journal row was given ("" when not journalled): the record keeps
    it, so a request settled as interrupted by another gateway is never stored twice."""

    @property
    def served(self) -> bool:
        """A backend answered it successfully (its model may become a metric label)."""
        return 0 < self.status < 300


Sink = Callable[[Finished], "asyncio.Future[None] | None"]
"""A finish sink: takes the ended request; may return a future that is done once what it wrote
is durable (the usage record under ``usage.acknowledge: durable``)."""
