"""Forward one request to a backend and relay the answer as it arrives.

The rules that make this a gateway rather than a buffer:

* a streamed answer (``text/event-stream``) is relayed chunk by chunk, as bytes, the moment each
  arrives — never decoded, never re-encoded, never held;
* a failure is retried on another backend only while nothing was sent to the client; after the
  first byte a failure ends the stream with an SSE ``error`` event, never a fake ``finish_reason``;
* a non-streamed answer is relayed as it arrives too (its ``usage`` read on the way), so a huge
  answer is never held whole;
* whatever ends the request — completion, error, or cancellation because the client left — the
  upstream response is closed at once (so the inference server stops generating) and the backend's
  in-flight count is released;
* the request sent is the canonical one the gateway judged: its raw target byte for byte (the
  HTTP client is told not to normalise it again) and the judged body;
* an answer the gateway cannot relay faithfully (a status outside 200–599, a malformed or
  oversized header block, broken framing) is a 502, never passed on or turned into a traceback;
* a 5xx answer or a timeout counts against a backend's health only when it cannot be the
  request's own doing (see :func:`_judge_suspect_failures`); failures no client can cause
  always count.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from time import time_ns
from typing import Literal

from llmproxy.apis import CHAT, MESSAGES
from llmproxy.auth.pipeline import Identity
from llmproxy.config.model import PassiveHealthConfig
from llmproxy.errors import (
    ANTHROPIC_STATUS,
    GatewayError,
    anthropic_error_event,
    sse_error_event,
)
from llmproxy.gateway.asgi import BodyWriter, Message, Send
from llmproxy.gateway.exchange import Exchange
from llmproxy.gateway.headers import (
    client_response_headers,
    unsendable_header,
    upstream_request_headers,
)
from llmproxy.gateway.request_body import with_priority, without_priority
from llmproxy.gateway.snapshot import Snapshot as Runtime
from llmproxy.gateway.upstream_http import UpstreamConnection, UpstreamError, UpstreamPool
from llmproxy.routing import Backend
from llmproxy.routing.admission import DEFAULT_PRIORITY, AdmissionRefused
from llmproxy.routing.affinity import prefix_key
from llmproxy.routing.backend import REFUSED
from llmproxy.routing.prefix import prompt_prefix
from llmproxy.routing.responses import Home, response_id_in
from llmproxy.tracing import RequestTrace
from llmproxy.translate import (
    ChatStreamToMessages,
    TranslationError,
    UpstreamResponseError,
    chat_error_to_messages,
    chat_response_to_messages,
    messages_request_to_chat,
)
from llmproxy.usage import ResponseUsage, StreamMeter, stream_meter, usage_from_body

log = logging.getLogger("llmproxy.gateway")

_SSE = "text/event-stream"

HELD_END = "llmproxy.held_end"
"""Key of a body message that starts the end of a stream (its ``[DONE]``): held back under
``usage.acknowledge: durable`` until the usage record is written (never sent to the server)."""

Relayed = Literal["done", "timeout", "broken"]
"""How a relay ended: the backend's own end, a silence past its timeout, or a broken answer."""
_END = {"type": "http.response.body", "body": b"", "more_body": False}


class _Retryable(Exception):
    """A failure before anything reached the client: another attempt may succeed."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


async def forward(runtime: Runtime, request: Exchange, send: Send) -> None:
    """Serve ``request`` from the best backend, retrying and failing over as configured.

    Raises :class:`GatewayError` when no backend can answer; the caller turns it into the error
    body. Returns once the whole response was sent.
    """
    model = request.peek.model
    router = runtime.router
    if model is not None and not router.serves_any(model):
        raise GatewayError(
            404, f"The model `{model}` does not exist.", "model_not_found", param="model"
        )
    key = None
    if runtime.routes_by_prefix and request.body:
        # Only for prefix_affinity: which prompt prefix this is, so it goes where it is cached.
        prefix = prompt_prefix(request.body, runtime.prefix_chars)
        key = prefix_key(prefix) if prefix is not None else None
    priority = request_priority(request.identity)
    policy = runtime.retry_policy
    retry = runtime.config.routing.retry
    fleet = runtime.fleet
    fleet.sync()  # a drain made through another worker applies here before this request routes
    tried: list[Backend] = []
    unable = _unable(runtime, request)
    last_error = GatewayError(503, _no_backend_message(model), "no_backend_available")
    try:
        for attempt in range(policy.attempts):
            if attempt:
                if not fleet.may_retry(retry.budget_percent, retry.min_retry_concurrency):
                    # The retry budget is spent: failing fast beats doubling a struggling fleet.
                    break
                await asyncio.sleep(policy.delay(attempt, runtime.rng))
            backend, taken = await _choose(
                runtime,
                priority,
                model,
                [*tried, *unable] if unable else tried,
                key,
                request.refused_by,
                request.pinned,
                request.trace,
            )
            if backend is None:
                break
            tried.append(backend)
            request.attempts = attempt + 1
            if attempt:
                runtime.metrics.retry(tried[-2].name)
                fleet.retries_in_flight += 1
            final = attempt == policy.attempts - 1
            try:
                await _attempt(
                    runtime, backend, taken, request, send, priority, tried, final_attempt=final
                )
                return
            except _Retryable as retryable:
                last_error = retryable.error
                if request.trace is not None:
                    request.trace.attempt_failed(last_error.code or "upstream_error")
            finally:
                if attempt:
                    fleet.retries_in_flight -= 1
        last_error.headers = (*last_error.headers, _attempts_header(request.attempts))
        raise last_error
    finally:
        if request.suspect_failures:
            _judge_suspect_failures(runtime, request)


def _unable(runtime: Runtime, request: Exchange) -> tuple[Backend, ...]:
    """The backends that cannot take this request's API (``backends[].apis``); a 404 when no
    backend serving its model can."""
    api = request.api
    if api is None or not runtime.apis_limited:
        return ()
    router = runtime.router
    model = request.peek.model
    # count_tokens has no chat completions form: a backend that would need translating cannot.
    usable = (True,) if request.canonical.endpoint != MESSAGES else (True, None)
    unable = tuple(b for b in router.backends if b.speaks(api) not in usable)
    if all(b in unable for b in router.backends if b.serves(model)):
        raise GatewayError(
            404,
            f"no backend serves the {api} API for model `{model}` (backends[].apis)",
            "api_not_served",
            param="model",
        )
    return unable


_ATTEMPTS = tuple(str(n).encode() for n in range(32))


def _attempts_header(attempts: int) -> tuple[bytes, bytes]:
    """``x-llmproxy-attempts``: how many backends were tried for this answer."""
    value = _ATTEMPTS[attempts] if attempts < len(_ATTEMPTS) else str(attempts).encode()
    return (b"x-llmproxy-attempts", value)


def _suspect(request: Exchange, backend: Backend) -> None:
    if request.suspect_failures is None:
        request.suspect_failures = []
    request.suspect_failures.append(backend)


def _judge_suspect_failures(runtime: Runtime, request: Exchange) -> None:
    """Count this request's 5xx answers and timeouts against the backends' health, unless the
    request itself is the likely cause.

    A 5xx can be a broken backend or a request the backend chokes on; a timeout can be a hung
    backend or a request that takes long by design (a huge prompt, ``max_tokens`` in the
    thousands without streaming). A client must not be able to take a backend away from
    everyone by sending the second kind. So, once per backend per request (retries on one
    backend are one failure):

    * the request ended well on another backend: the ones that failed it are at fault, and
      counted like a refused connection;
    * several backends all failed it: the request is the common factor, none is counted;
    * the only backend tried failed it: counted, attributed to the client, so an ejection
      needs ``health_check.passive.min_clients`` different clients in the failure run.
    """
    failed = list(dict.fromkeys(request.suspect_failures or ()))
    succeeded = 0 < request.status < 500
    if not succeeded and len(failed) > 1:
        return
    passive = runtime.config.health_check.passive
    now = asyncio.get_running_loop().time()
    client = None if succeeded else request.client_id
    for backend in failed:
        if succeeded and backend.name == request.backend:
            continue  # failed, then served the retry itself: a passing fault
        _failed(runtime, backend, now, passive, client=client, model=request.peek.model)


async def _choose(
    runtime: Runtime,
    priority: int,
    model: str | None,
    tried: list[Backend],
    key: int | None,
    refused_by: set[Backend] | None = None,
    only: Backend | None = None,
    trace: RequestTrace | None = None,
) -> tuple[Backend | None, int]:
    """The backend for this attempt and the slot taken on it (:meth:`Backend.try_begin`: pass
    it to ``end()``); while every backend is full, wait in the admission queue (best priority first)
    instead of failing. A request does not take a free slot while one at least as important
    waits, and leaves the reserved slots to the important ones."""
    router = runtime.router
    admission = runtime.admission
    reserve = admission.reserve_for(priority)
    loop = asyncio.get_running_loop()
    ticket: int | None = None
    deadline = 0.0
    queued = 0
    looked_again = False
    while True:
        now = loop.time()
        if ticket is not None or not admission.ahead(priority):
            fallen = runtime.count_fallback
            backend = router.route(
                model, now, exclude=tried, key=key, reserve=reserve, on_fallback=fallen, only=only
            )
            if backend is None and tried:
                # Every candidate was tried once: a transient fault may have passed on one
                # (never on one that answered 429: its own client-facing answer is that).
                backend = router.route(
                    model,
                    now,
                    exclude=refused_by or (),
                    key=key,
                    reserve=reserve,
                    on_fallback=fallen,
                    only=only,
                )
            taken = backend.try_begin(reserve) if backend is not None else REFUSED
            if backend is not None and taken == REFUSED:
                continue  # another worker took the last slot since it was read: route again
            if (
                backend is None
                and not router.saturated(model, now, reserve, only)
                and not looked_again
            ):
                # Full when routed, not full now: another worker freed a slot between the two
                # reads. Route once more rather than answer 503 with a slot free.
                looked_again = True
                continue
            if backend is not None or not router.saturated(model, now, reserve, only):
                if ticket is not None:
                    admission.left()
                    if trace is not None:
                        trace.phase("queue", queued)
                return backend, taken
        if ticket is None:
            deadline = now + admission.timeout
            queued = time_ns() if trace is not None else 0
        try:
            ticket = await admission.wait(priority, ticket=ticket, deadline=deadline)
        except AdmissionRefused as refused:
            if trace is not None:
                trace.phase("queue", queued, {"error.type": "backend_capacity"})
            runtime.metrics.limit_rejection("capacity")
            raise GatewayError(503, refused.message, "backend_capacity") from None


def _may_set_priority(identity: Identity | None) -> bool:
    """Whether the key may send its own ``priority`` (its metadata says
    ``client_priority: true``); without auth nobody may."""
    return identity is not None and identity.metadata.get("client_priority") is True


def request_priority(identity: Identity | None) -> int:
    """The request's priority: the Lua decision's ``priority`` metadata, else the key's own,
    else the default (lower values are served first, as in vLLM)."""
    if identity is None:
        return DEFAULT_PRIORITY
    decided = identity.metadata.get("priority")
    if isinstance(decided, int) and not isinstance(decided, bool):
        return decided
    own = identity.limits.priority
    return own if own is not None else DEFAULT_PRIORITY


def _no_backend_message(model: str | None) -> str:
    if model is None:
        return "no backend is available"
    return f"no backend is available for model `{model}`"


async def _attempt(
    runtime: Runtime,
    backend: Backend,
    taken: int,
    request: Exchange,
    send: Send,
    priority: int,
    tried: list[Backend],
    *,
    final_attempt: bool,
) -> None:
    # The slot was taken when the backend was chosen (_choose); the finally below gives it back,
    # so nothing that can raise comes before it.
    metrics = runtime.metrics
    metrics.in_flight(backend.name, 1)
    connection: UpstreamConnection | None = None
    pool: UpstreamPool | None = None
    consumed = False
    try:
        client = runtime.clients[backend.name]
        pool = client.pool
        passive = runtime.config.health_check.passive
        loop = asyncio.get_running_loop()
        canonical = request.canonical
        request.backend = backend.name
        started = loop.time()
        headers = upstream_request_headers(
            canonical.headers,
            runtime.secret_headers,
            (*client.extra_headers, *request.extra_headers)
            if request.extra_headers
            else client.extra_headers,
            canonical.upstream_id,
            canonical.client.forwarded_for,
            trusted_forwarding=canonical.client.via_trusted_proxy,
        )
        trace = request.trace
        if trace is not None:
            # The backend's spans (vLLM's) become children of this attempt's span.
            headers["traceparent"] = trace.begin_attempt(backend.name)
            if trace.tracestate:
                headers["tracestate"] = trace.tracestate
        body = request.body
        target = canonical.target
        translating = canonical.endpoint == MESSAGES and backend.speaks("messages") is None
        if translating:
            body, target = _as_chat(request), CHAT
        if backend.send_priority and body and request.peek.model is not None:
            body = with_priority(body, request.peek, priority)
        elif request.peek.has_priority and not _may_set_priority(request.identity):
            # The field belongs to the gateway: a client's own would jump vLLM's queue.
            body = without_priority(body)
        # The judged target goes out byte for byte, never re-normalised.
        wire = request_bytes(canonical.method, pool, target, headers, body)
        try:
            connection = await _exchange(
                pool, wire, client.first_byte_timeout, no_body=canonical.method == "HEAD"
            )
        except UpstreamError as error:
            if error.kind == "timeout":
                _suspect(request, backend)
                raise _Retryable(
                    GatewayError(
                        504, f"backend {backend.name} did not answer in time", "upstream_timeout"
                    )
                ) from None
            _failed(runtime, backend, loop.time(), passive)
            if error.kind == "invalid":
                # An answer that is not HTTP we can relay: a header block over the limits,
                # malformed framing, a bad status line.
                raise _Retryable(_invalid_answer(backend, error.detail)) from None
            raise _Retryable(
                GatewayError(
                    502,
                    f"backend {backend.name} is unreachable: {error.detail}",
                    "upstream_unreachable",
                )
            ) from None
        backend.record_first_byte(loop.time() - started)
        status = connection.status
        if not 200 <= status <= 599:
            _failed(runtime, backend, loop.time(), passive)
            raise _Retryable(_invalid_answer(backend, f"status {status}"))
        bad = unsendable_header(connection.raw_headers)
        if bad is not None:
            _failed(runtime, backend, loop.time(), passive)
            raise _Retryable(_invalid_answer(backend, f"a control character in header {bad!r}"))
        if status >= 500:
            _suspect(request, backend)
        if not final_attempt and runtime.retry_policy.retryable_status(status):
            retry_elsewhere = True
            if status == 429:
                # Never again to the backend that said "too many"; and when no other backend
                # can take the request, its 429 (with Retry-After) goes to the client now.
                if request.refused_by is None:
                    request.refused_by = set()
                request.refused_by.add(backend)
                retry_elsewhere = runtime.router.can_serve_elsewhere(
                    request.peek.model, loop.time(), tried
                )
            if retry_elsewhere:
                raise _Retryable(
                    GatewayError(
                        status, f"backend {backend.name} answered {status}", "upstream_error"
                    )
                )
        writer = canonical.writer
        if writer is None:
            raise RuntimeError("the listener offers no body writer (llmproxy.body_writer)")
        if connection.content_type == _SSE:
            translator = ChatStreamToMessages(request.peek.model or "") if translating else None
            outcome = await _relay_stream(
                backend, client.idle_timeout, connection, writer, request, send, translator
            )
        elif translating:
            outcome = await _relay_translated_body(
                backend,
                client.hold_limit,
                client.first_byte_timeout,
                connection,
                request,
                send,
            )
        else:
            try:
                outcome = await _relay_body(
                    backend,
                    client.hold_limit,
                    client.first_byte_timeout,
                    connection,
                    writer,
                    request,
                    send,
                )
            except _Retryable as retryable:
                if retryable.error.status == 504:
                    _suspect(request, backend)
                else:
                    _failed(runtime, backend, loop.time(), passive)
                raise
        consumed = outcome == "done"
        if outcome != "done" and request.trace is not None:
            request.trace.attempt_failed(f"upstream_{outcome}")
        if outcome == "timeout":
            _suspect(request, backend)
            return
        if outcome == "broken":
            _failed(runtime, backend, loop.time(), passive)
            return
        if status < 500:
            backend.record_success(request.peek.model)
    finally:
        if connection is not None and pool is not None:
            if not consumed:
                # Not read to the end (error or cancellation): drop the connection so the backend
                # sees the client leave and stops generating.
                connection.abort()
            pool.release(connection)
        backend.end(taken)
        if request.trace is not None:
            request.trace.end_attempt(connection.status if connection is not None else 0)
        metrics.in_flight(backend.name, -1)
        if backend.max_in_flight:
            runtime.admission.release()


async def _exchange(
    pool: UpstreamPool, wire: bytes, first_byte_timeout: float | None, *, no_body: bool
) -> UpstreamConnection:
    """Send ``wire`` on a pooled connection and wait for the answer's head. A kept-alive
    connection the backend closed before answering (its keep-alive ran out as the request went
    out) is not the backend failing: the request goes again on another connection."""
    for _ in range(_STALE_RETRIES):
        connection = await pool.acquire()
        reused = connection.used > 0
        try:
            await connection.send(wire, first_byte_timeout, no_body=no_body)
        except UpstreamError as error:
            pool.release(connection)
            if reused and error.kind == "unreachable" and connection.received == 0:
                continue
            raise
        except BaseException:
            pool.release(connection)  # not answered: release closes it
            raise
        return connection
    raise UpstreamError("unreachable", "every pooled connection was closed")


_STALE_RETRIES = 4


def request_bytes(
    method: str, pool: UpstreamPool, target: str, headers: dict[str, str], body: bytes
) -> bytes:
    """The request as it goes to the backend: request line, ``Host``, the forwarded headers,
    ``Content-Length`` (when there is a body, or the method takes one), the body."""
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
        # Never reached through the listener (its parser refuses such bytes) nor from a checked
        # config; kept so no path can ever split the request the backend reads.
        raise GatewayError(400, "a header value holds a line break", "invalid_header")
    parts = [
        b"%s %s%s HTTP/1.1\r\nhost: %s\r\n"
        % (method.encode("ascii"), pool.path_prefix, target.encode("ascii"), pool.host_header),
        lines.encode(),
    ]
    if body or method in _BODY_METHODS:
        parts.append(b"content-length: %d\r\n" % len(body))
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _invalid_answer(backend: Backend, what: str) -> GatewayError:
    log.warning("backend %s sent an answer that cannot be relayed: %s", backend.name, what)
    return GatewayError(
        502, f"backend {backend.name} sent an invalid response", "upstream_invalid_response"
    )


def _start(request: Exchange, status: int, raw_headers: list[tuple[bytes, bytes]], *,
           body_changes: bool = False) -> Message:  # fmt: skip
    return {
        "type": "http.response.start",
        "status": status,
        "headers": client_response_headers(
            raw_headers,
            request.request_id.encode("latin-1"),
            (*request.response_headers, _attempts_header(request.attempts)),
            body_changes=body_changes,
        ),
    }


class _BodySink:
    """Relays a non-streamed answer's chunks from the parser to the client as they come,
    reading the usage on the way; under the durable hold the newest chunk stays back, so the
    last one goes with the end of the response (which the hold keeps)."""

    __slots__ = ("_connection", "_hold_last", "_reader", "_request", "_writer", "last")

    def __init__(
        self,
        reader: ResponseUsage | None,
        writer: BodyWriter,
        connection: UpstreamConnection,
        request: Exchange,
        hold_last: bool,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._connection = connection
        self._request = request
        self._hold_last = hold_last
        self.last = b""
        """The chunk held back (with the durable hold), sent with the end."""

    def __call__(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._hold_last:
            chunk, self.last = self.last, chunk
            if not chunk:
                return
        if self._reader is not None:
            self._reader.feed(chunk)
        self._request.bytes_sent += len(chunk)
        if not self._writer.write(chunk):
            self._connection.pause()


async def _relay_body(
    backend: Backend,
    hold_limit: int,
    read_timeout: float | None,
    connection: UpstreamConnection,
    writer: BodyWriter,
    request: Exchange,
    send: Send,
) -> Relayed:
    """Relay a non-streamed body as it arrives, reading its usage on the way; ``"timeout"`` or
    ``"broken"`` when the backend stopped or broke it off (the client's connection is then cut,
    never ended as if complete).

    The first body bytes are awaited before the status line is sent, so a backend that fails at
    once is still retried. Chunks are relayed as they come (an NDJSON stream stays a stream).
    """
    connection.watch_idle(read_timeout)
    try:
        await connection.body_started()
    except UpstreamError as error:
        if error.kind == "timeout":
            raise _Retryable(
                GatewayError(504, f"backend {backend.name} timed out", "upstream_timeout")
            ) from None
        raise _Retryable(
            GatewayError(502, f"backend {backend.name} closed the connection", "upstream_reset")
        ) from None
    status = connection.status
    if request.journal is not None:
        await request.journal.durable()  # journalled before the first byte (usage.journal)
    await send(_start(request, status, connection.raw_headers))
    request.status = status
    if connection.complete:
        # Most answers arrive whole before the status line goes: sent with their end, at once.
        pending = connection.take_pending()
        if status < 300:
            request.usage = usage_from_body(pending)
            if request.response_homes is not None:
                _note_response(request, backend, pending)
        request.bytes_sent = len(pending)
        request.complete = True
        await send({"type": "http.response.body", "body": pending, "more_body": False})
        return "done"
    reader = ResponseUsage(hold_limit) if status < 300 else None
    body = _BodySink(reader, writer, connection, request, request.hold_last)
    sink: Callable[[bytes], None] = body
    if status < 300 and request.response_homes is not None:
        # The response's id comes first in its body.
        sink = _NotingSink(body, functools.partial(_note_response, request, backend))
    sink(connection.take_pending())
    connection.sink = sink
    writer.on_resume(connection.resume)
    try:
        await connection.finished()
    except UpstreamError as error:
        log.warning("backend %s broke off its answer: %s", backend.name, error.detail)
        if request.canonical.abort is not None:
            request.canonical.abort()
        return "timeout" if error.kind == "timeout" else "broken"
    finally:
        writer.on_resume(None)
    last = body.last
    if reader is not None:
        reader.feed(last)
        request.usage = reader.usage()
    request.bytes_sent += len(last)
    request.complete = True
    await send({"type": "http.response.body", "body": last, "more_body": False})
    return "done"


class _NotingSink:
    """A body sink that looks for a response id in what it relays until it is found."""

    __slots__ = ("_note", "_sink")

    def __init__(self, sink: _BodySink, note: Callable[[bytes], bool]) -> None:
        self._sink = sink
        self._note: Callable[[bytes], bool] | None = note

    def __call__(self, chunk: bytes) -> None:
        if self._note is not None and self._note(chunk):
            self._note = None
        self._sink(chunk)


class _StreamSink:
    """Relays an SSE answer's chunks from the parser to the client's socket, each the moment it
    is parsed: one scan (usage, ``[DONE]``) and one socket write per chunk, nothing scheduled.
    Under the durable hold, the chunk that completes ``[DONE]`` and what follows stay back for
    the relay to send once the usage record is written."""

    __slots__ = (
        "_connection",
        "_hold_end",
        "_loop",
        "_note",
        "_request",
        "_scanner",
        "_translate",
        "_writer",
        "held",
    )  # fmt: skip

    def __init__(
        self,
        scanner: StreamMeter,
        writer: BodyWriter,
        connection: UpstreamConnection,
        request: Exchange,
        hold_end: bool,
        note: Callable[[bytes], bool] | None = None,
        translate: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self._scanner = scanner
        self._translate = translate
        """Turns the relayed chat chunks into another API's events (Messages)."""
        self._note = note
        """Looks for a Responses API response id in what is relayed, until it is found."""
        self._writer = writer
        self._connection = connection
        self._request = request
        self._loop = asyncio.get_running_loop()
        self._hold_end = hold_end
        self.held: list[bytes] | None = None
        """The held end of the stream (the durable hold), or None."""

    def __call__(self, chunk: bytes) -> None:
        scanner = self._scanner
        relayed = scanner.feed(chunk)
        if self._translate is not None and relayed:
            relayed = self._translate(relayed)
        if not relayed:
            return
        request = self._request
        if request.first_token_at is None:
            request.first_token_at = self._loop.time()
            if request.trace is not None:
                request.trace.first_token_now()
        if self._note is not None and self._note(relayed):
            self._note = None
        request.bytes_sent += len(relayed)
        if self.held is not None:
            self.held.append(relayed)
            return
        if self._hold_end and scanner.done:
            self.held = [relayed]  # the chunk that completed [DONE]: the hold keeps it
            return
        if not self._writer.write(relayed):
            self._connection.pause()


async def _relay_stream(
    backend: Backend,
    idle_timeout: float | None,
    connection: UpstreamConnection,
    writer: BodyWriter,
    request: Exchange,
    send: Send,
    translator: ChatStreamToMessages | None = None,
) -> Relayed:
    """Relay an SSE body chunk by chunk; ``"timeout"`` or ``"broken"`` when a mid-stream
    failure ended it with an ``error`` event instead of the backend's own end. ``translator``:
    the backend's chat completion chunks become Anthropic Messages events on the way (the
    usage is read from the chunks, before translation)."""
    # The first byte may take a long prefill; between chunks a shorter silence means trouble.
    connection.watch_idle(idle_timeout)
    # Cut usage events, an error event on a broken stream: never the backend's length.
    if request.journal is not None:
        await request.journal.durable()  # journalled before the first byte (usage.journal)
    await send(_start(request, connection.status, connection.raw_headers, body_changes=True))
    request.status = connection.status
    scanner = request.stream_usage = stream_meter(
        "chat" if translator is not None else request.api, strip_usage_event=request.strip_usage
    )
    note = None
    if request.response_homes is not None and connection.status < 300:
        note = functools.partial(_note_response, request, backend)
    sink = _StreamSink(
        scanner,
        writer,
        connection,
        request,
        request.hold_last,
        note,
        translator.feed if translator is not None else None,
    )
    sink(connection.take_pending())
    connection.sink = sink
    writer.on_resume(connection.resume)
    try:
        await connection.finished()
    except UpstreamError as error:
        if error.kind == "timeout":
            log.warning("backend %s went silent mid-stream; ending the stream", backend.name)
            text, code, status = f"backend {backend.name} stopped sending", "upstream_timeout", 504
        else:
            log.warning("backend %s broke the stream: %s", backend.name, error.detail)
            text = f"backend {backend.name} closed the stream before it finished"
            code, status = "upstream_reset", 502
        if translator is not None:
            message = translator.error(text)
        elif request.api == "messages":
            message = anthropic_error_event(text, status)
        else:
            message = sse_error_event(text, code, status)
        request.complete = True
        await send({"type": "http.response.body", "body": message, "more_body": False})
        return "timeout" if error.kind == "timeout" else "broken"
    finally:
        writer.on_resume(None)
    request.complete = True
    if sink.held is not None:
        await send(
            {
                "type": "http.response.body",
                "body": b"".join(sink.held),
                "more_body": True,
                HELD_END: True,
            }
        )
    if request.first_token_at is not None and scanner.events > 2:
        # The stream's mean gap between tokens: a slowed-down backend shows here at once.
        elapsed = asyncio.get_running_loop().time() - request.first_token_at
        backend.record_token_gap(elapsed / (scanner.events - 1))
    tail = scanner.finish()
    if translator is not None:
        tail = translator.feed(tail) + translator.finish() if tail else translator.finish()
    if tail:
        await send({"type": "http.response.body", "body": tail, "more_body": True})
    await send(_END)
    return "done"


def _as_chat(request: Exchange) -> bytes:
    """The Messages request as chat completions (once per request: retries reuse it); a request
    that cannot be said that way is the client's 400, never sent with a part dropped."""
    if request.translated is None:
        if request.peek.max_tokens is None:
            # Anthropic's API requires it, and a chat backend would generate without bound.
            raise GatewayError(
                400, "max_tokens: Field required", "invalid_request", param="max_tokens"
            )
        try:
            request.translated = messages_request_to_chat(request.body)
        except TranslationError as error:
            raise GatewayError(400, error.message, "invalid_request", param=error.param) from None
    return request.translated


async def _relay_translated_body(
    backend: Backend,
    limit: int,
    read_timeout: float | None,
    connection: UpstreamConnection,
    request: Exchange,
    send: Send,
) -> Relayed:
    """A chat completion (or the backend's error) answered to a Messages request: read whole
    — at most ``limit`` bytes (``backends[].max_response_size``), with no silence longer than
    ``read_timeout`` — then sent as the Anthropic message (or error) it stands for, and billed
    from its usage once it is one."""
    parts = [connection.take_pending()]
    held = len(parts[0])

    def take(chunk: bytes) -> None:
        nonlocal held
        held += len(chunk)
        if held > limit:
            connection.give_up(f"an answer over {limit} bytes to translate")
        else:
            parts.append(chunk)

    connection.sink = take
    connection.watch_idle(read_timeout)
    try:
        await connection.finished()
    except UpstreamError as error:
        if error.kind == "timeout":
            raise _Retryable(
                GatewayError(504, f"backend {backend.name} timed out", "upstream_timeout")
            ) from None
        if error.kind == "invalid":
            raise _Retryable(_invalid_answer(backend, error.detail)) from None
        raise _Retryable(
            GatewayError(502, f"backend {backend.name} broke off its answer", "upstream_reset")
        ) from error
    status = connection.status
    chat = b"".join(parts)
    if status < 300:
        try:
            body = chat_response_to_messages(chat, request.peek.model or "")
        except UpstreamResponseError as error:
            raise _Retryable(_invalid_answer(backend, str(error))) from None
        request.usage = usage_from_body(chat)
    else:
        body = chat_error_to_messages(status, chat)
        status = ANTHROPIC_STATUS.get(status, status)
    if request.journal is not None:
        await request.journal.durable()
    await send(_start(request, status, connection.raw_headers, body_changes=True))
    request.status = status
    request.bytes_sent = len(body)
    request.complete = True
    await send({"type": "http.response.body", "body": body, "more_body": False})
    return "done"


_ID_WITHIN = 16 * 1024
"""A Responses stream names its response in its first event (``response.created``)."""


def _note_response(request: Exchange, backend: Backend, data: bytes) -> bool:
    """Remember which backend made the Responses API response named in the answer's first
    bytes (``data`` and what came before it: an id may be cut between two reads), and by which
    key and model; whether to stop looking (found, or not in the first bytes)."""
    homes = request.response_homes
    if homes is None:
        return False
    seen = request.response_head = (request.response_head + data)[:_ID_WITHIN]
    response_id = response_id_in(seen)
    if response_id is None:
        return len(seen) >= _ID_WITHIN  # not in its first bytes: not there at all
    table, redis = homes
    identity = request.identity
    owner = identity.key_id if identity is not None else ""
    table.remember(response_id, Home(backend.name, owner, request.peek.model or ""), redis)
    request.response_head = b""
    return True


def _failed(
    runtime: Runtime,
    backend: Backend,
    now: float,
    passive: PassiveHealthConfig,
    *,
    client: str | None = None,
    model: str | None = None,
) -> None:
    """Count a failed request; passive ejection takes the backend (or, with ``model``, that
    model on it) out after a run of them.

    ``client`` names who a 5xx answer or timeout may be the doing of; None is a failure no
    client can cause (a refused or reset connection, a broken or invalid answer).
    """
    threshold = passive.failure_threshold if passive.enabled else 0  # 0: never eject
    if backend.record_failure(
        now,
        threshold,
        passive.ejection_time,
        client=client,
        min_clients=passive.min_clients,
        model=model,
    ):
        runtime.metrics.ejection(backend.name)
