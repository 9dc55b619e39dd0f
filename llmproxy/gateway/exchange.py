"""One request, from the edge to its finish: the context every phase reads and extends.

The request path is plain functions over one :class:`Exchange` — the canonical request, the
judged body, the identity, the limits settlement, the backends tried, the timings and the usage —
rather than locals of one long handler. Its finish turns it into the plain
:class:`~llmproxy.finish.Finished` record the finish sinks read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmproxy.apis import GENERATING, Api
from llmproxy.auth.pipeline import Identity
from llmproxy.finish import Finished
from llmproxy.gateway.canonical import CanonicalRequest
from llmproxy.gateway.limits_step import Settlement
from llmproxy.gateway.request_body import RequestPeek
from llmproxy.pricing import NANOS
from llmproxy.routing import Backend
from llmproxy.routing.responses import ResponseHomes
from llmproxy.tracing import RequestTrace
from llmproxy.translate import messages_stop_reason
from llmproxy.usage import StreamMeter, Usage
from llmproxy.usage.journal import JournalHandle
from llmproxy.usage.record import UsageRecord, flat_metadata

if TYPE_CHECKING:  # redis is an extra
    from redis.asyncio import Redis


@dataclass(slots=True)
class Exchange:
    """One request in flight; see the module docstring."""

    canonical: CanonicalRequest
    """The request as judged: method, raw target, headers, client address, request id."""
    body: bytes
    """The body forwarded (the judged one, with the gateway's own edits)."""
    peek: RequestPeek
    started: float = 0.0
    """Loop time when forwarding began (durations and time to first token count from it)."""
    prompt_estimate: int = 0
    """The prompt's estimated tokens (the reservation, and the bill when none is reported)."""
    settlement: Settlement | None = None
    """The key's limits admission, settled when the request ends."""
    arrival: float | None = None
    """When recording sampled the request: its arrival time."""
    judged_body: bytes | None = None
    """When sampled: the body as judged, before the gateway's own edits (what is recorded)."""
    identity: Identity | None = None
    """Who the request belongs to, when auth is on."""
    extra_headers: tuple[tuple[str, str], ...] = ()
    """Per-request upstream headers (forwarded decision metadata)."""
    response_headers: tuple[tuple[bytes, bytes], ...] = ()
    """Extra headers for the client's response (the rate-limit headers)."""
    strip_usage: bool = False
    """The gateway asked for the usage event; the client did not, so it is removed."""
    usage: Usage | None = None
    """A non-streamed response's usage, when the backend reported it."""
    stream_usage: StreamMeter | None = None
    """The scanner of the streamed response relayed to the client."""
    api: Api | None = None
    """The model API the request speaks (None: another path)."""
    response_homes: tuple[ResponseHomes, Redis | None] | None = None
    """Where to note the backend of the Responses API response this request creates."""
    response_head: bytes = b""
    """The answer's first bytes, until its response id is found in them."""
    forget_response: str = ""
    """A ``DELETE /v1/responses/{id}``: the id, forgotten once its backend deleted it."""
    translated: bytes | None = None
    """The body as chat completions, for a backend that does not speak its API (Messages)."""
    pinned: Backend | None = None
    """The one backend that can serve it (it holds a Responses API response the request
    names)."""
    backend: str = ""
    """Name of the backend that answered (the last one tried)."""
    status: int = 0
    """Status sent to the client by the forwarder (0: nothing was sent)."""
    first_token_at: float | None = None
    """Loop time of the first streamed body chunk (time to first token)."""
    complete: bool = False
    """Set just before the last byte is sent, so a later ``http.disconnect`` is not a cancel."""
    cancelled: bool = False
    """The client left before the response was complete."""
    bytes_sent: int = 0
    """Body bytes relayed to the client (for the access log)."""
    hold_last: bool = False
    """Send the last chunk of a non-streamed answer with its end (``usage.acknowledge:
    durable`` holds that end until the usage record is written)."""
    attempts: int = 0
    """Backends tried so far (``x-llmproxy-attempts`` on the answer)."""
    refused_by: set[Backend] | None = None
    """Backends that answered 429: a retry never goes back to them."""
    journal: JournalHandle | None = None
    """The request's row in the usage journal (billed as interrupted if the process dies)."""
    suspect_failures: list[Backend] | None = None
    """Backends that failed this request in a way the request itself may have caused: a 5xx
    answer, or a timeout (a long prompt, a long non-streamed generation); judged when the
    request ends (:func:`_judge_suspect_failures`)."""
    trace: RequestTrace | None = None
    """The request's trace notes, when tracing is on and keeps this request (else None: each
    phase's tracing is one ``is None`` check)."""

    @property
    def request_id(self) -> str:
        return self.canonical.request_id

    @property
    def client_id(self) -> str:
        """Who sent it, for health attribution: the key, else the client's address."""
        if self.identity is not None:
            return self.identity.key_id
        return self.canonical.client_ip or ""

    def counted(self) -> tuple[int, int]:
        """(prompt, completion) tokens so far, for the journal's checkpoints."""
        if self.usage is not None:
            return self.usage.prompt_tokens, self.usage.completion_tokens
        if self.stream_usage is not None:
            return self.stream_usage.counted(self.prompt_estimate)
        return self.prompt_estimate, 0

    def interrupted(self) -> UsageRecord:
        """The request's usage record if it were cut now (the journal's skeleton)."""
        identity = self.identity
        return UsageRecord(
            request_id=self.canonical.request_id,
            model=self.peek.model or "",
            prompt_tokens=self.prompt_estimate,
            completion_tokens=0,
            total_tokens=self.prompt_estimate,
            usage_source="estimated",
            endpoint=self.canonical.endpoint,
            api=self.api or "",
            stream=self.peek.streaming,
            status="interrupted",
            key_id=identity.key_id if identity is not None else "",
            key_name=identity.name if identity is not None else "",
            key_prefix=identity.key_prefix if identity is not None else "",
            user_id=identity.user_id if identity is not None else "",
            metadata=flat_metadata(identity.metadata) if identity is not None else {},
            team=identity.team if identity is not None else "",
        )

    def used_usage(self) -> Usage | None:
        """What this request consumed (see :meth:`_used`); a request translated for its
        backend says why it stopped as its own API does."""
        used = self._used()
        if used is not None and self.translated is not None and used.finish_reason is not None:
            return dataclasses.replace(used, finish_reason=messages_stop_reason(used.finish_reason))
        return used

    def _used(self) -> Usage | None:
        """What this request consumed: the backend's count, or what was streamed; None when
        nothing reached the client (the backend was never reached, or it refused)."""
        if self.usage is not None:
            return self.usage
        if self.stream_usage is not None and self.status < 300:
            return self.stream_usage.usage(self.prompt_estimate)
        if 200 <= self.status < 300 and self.canonical.endpoint in GENERATING:
            # Answered without a usage the gateway could read: the prompt, as estimated.
            estimate = self.prompt_estimate
            return Usage(estimate, 0, estimate, "estimated")
        return None

    def finished(self, now: float, used: Usage | None, cost_nanos: int = 0) -> Finished:
        """The ended request as the finish sinks read it."""
        canonical = self.canonical
        identity = self.identity
        first = self.first_token_at
        return Finished(
            request_id=canonical.request_id,
            method=canonical.method,
            endpoint=canonical.endpoint,
            client_ip=canonical.client_ip,
            model=self.peek.model or "",
            stream=self.peek.streaming,
            backend=self.backend,
            status=self.status or 499,  # nothing sent: the client left first (nginx's code)
            duration=now - self.started,
            ttft=first - self.started if first is not None else None,
            prompt_tokens=used.prompt_tokens if used is not None else 0,
            completion_tokens=used.completion_tokens if used is not None else 0,
            total_tokens=used.total_tokens if used is not None else 0,
            usage_source=used.source if used is not None else "counted",
            finish_reason=used.finish_reason if used is not None else None,
            cancelled=self.cancelled,
            bytes_sent=self.bytes_sent,
            key_id=identity.key_id if identity is not None else "",
            key_name=identity.name if identity is not None else "",
            key_prefix=identity.key_prefix if identity is not None else "",
            user_id=identity.user_id if identity is not None else "",
            metadata=identity.metadata if identity is not None else {},
            arrival=self.arrival,
            body=self.judged_body,
            record_id=self.journal.skeleton.id if self.journal is not None else "",
            cached_tokens=used.cached_tokens if used is not None else 0,
            team=identity.team if identity is not None else "",
            cost=cost_nanos / NANOS,
        )
