"""The ASGI application: one entry for every client request.

It is a bare ASGI callable rather than a framework app because every microsecond on this path is
added to each request: dispatch is a dict lookup on the path, the body is read once, and the only
per-request task is the watcher that notices a client leaving (so the upstream request is closed
at once instead of generating tokens for nobody).

Each request takes the current :class:`~llmproxy.daemon.runtime.Runtime` snapshot once and uses it
to the end, so a reload never changes the rules under a request that is already running.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import logging
import os
import re
from collections.abc import Sequence
from time import time_ns

from llmproxy.apis import (
    ASKS_FOR_USAGE,
    EMBEDDINGS,
    ENDPOINT_API,
    GENERATING,
    RESPONSES,
    is_anthropic,
)
from llmproxy.auth.pipeline import Identity, Recognised
from llmproxy.errors import GatewayError
from llmproxy.gateway import auth_step, cors, limits_step
from llmproxy.gateway.asgi import Message, Receive, Scope, Send
from llmproxy.gateway.body_read import BodyReader, ClientGone
from llmproxy.gateway.canonical import CanonicalRequest, canonical_request
from llmproxy.gateway.exchange import Exchange
from llmproxy.gateway.headers import find_header
from llmproxy.gateway.models import list_models, retrieve_model
from llmproxy.gateway.proxy import HELD_END, forward
from llmproxy.gateway.request_body import (
    EMPTY_PEEK,
    RequestPeek,
    peek_body,
    peek_form,
    with_output_limit,
    with_usage_requested,
)
from llmproxy.gateway.request_path import under
from llmproxy.gateway.responses import send_bytes, send_error
from llmproxy.gateway.snapshot import Snapshot as Runtime
from llmproxy.gateway.snapshot import Snapshots as RuntimeState
from llmproxy.routing.responses import Home
from llmproxy.tracing import RequestTrace
from llmproxy.usage import estimate_prompt_tokens

log = logging.getLogger("llmproxy.gateway")

# Endpoints whose body must name a model (404 model_not_found routing needs it), by the
# lower-case canonical path every rule reads.
_MODEL_ENDPOINTS = frozenset(ENDPOINT_API)
_MODELS = "/v1/models"
_MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(rb"[!-~]{1,%d}" % _MAX_REQUEST_ID)
_OK = b'{"status":"ok"}'
_UNTRACED = frozenset({"/", "/health", "/ready"})
"""Probes: never traced (a span per liveness check is noise in every trace backend)."""


class GatewayApp:
    """The gateway's ASGI app over a swappable runtime snapshot."""

    def __init__(self, state: RuntimeState) -> None:
        self.state = state
        # Request ids: a random prefix per app (so per worker process) and a counter — unique,
        # 32 hex digits, and without the system call os.urandom would cost per request.
        self._id_prefix = os.urandom(10).hex()
        self._id_counter = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            runtime = self.state.acquire()
            try:
                await self._http(runtime, scope, receive, send)
            finally:
                self.state.release(runtime)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.state.open()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                # Everything built at startup lives as long as the process: keep it out of the
                # collector's scans so per-request garbage collections stay short.
                gc.collect()
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.state.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
        tracing = runtime.tracing
        arrived = time_ns() if tracing is not None else 0
        trace: RequestTrace | None = None
        headers = scope["headers"]
        given_id = find_header(headers, b"x-request-id")
        own_id = f"{self._id_prefix}{next(self._id_counter) & 0xFFFFFFFFFFFF:012x}"
        if given_id and _REQUEST_ID.fullmatch(given_id):
            # Kept for the client, the records and the logs; the backend gets it with the
            # gateway's own id after it, so no client can name another's request upstream
            # (vLLM takes X-Request-Id as its engine's request id).
            request_id = given_id.decode("ascii")
            upstream_id = f"{request_id}-{own_id}"
        else:
            request_id = upstream_id = own_id
        rid = request_id.encode("ascii")
        server = runtime.config.server
        if server.cors.enabled:
            origin = find_header(headers, b"origin")
            if origin is not None:
                if scope["method"] == "OPTIONS":
                    await cors.preflight(send, server.cors, origin, rid)
                    return
                send = cors.wrap_send(send, server.cors, origin)
        endpoint = ""
        try:
            request = canonical_request(scope, runtime.proxy_trust, request_id, upstream_id)
            endpoint = request.endpoint
            if tracing is not None and _traced(runtime, endpoint):
                trace = tracing.begin(
                    arrived,
                    headers,
                    request.client.via_trusted_proxy,
                    request.method,
                    endpoint,
                    request_id,
                )
            await self._dispatch(runtime, request, receive, send, trace)
        except GatewayError as error:
            if trace is not None:
                trace.status, trace.error = error.status, error.code or ""
            await send_error(send, error, rid, anthropic=_anthropic(scope, endpoint))
        except ClientGone:
            if trace is not None:
                trace.status, trace.error = 499, "client_gone"
            log.debug("client left before sending its whole body (request %s)", request_id)
        except Exception:
            if trace is not None:
                trace.status, trace.error = 500, "internal_error"
            # A defect, not the client's doing: the operator gets the traceback, the client an
            # OpenAI-style 500 (or, mid-response, a closed connection), never a plain-text page.
            log.exception("request %s failed inside the gateway", request_id)
            with contextlib.suppress(RuntimeError, OSError):
                await send_error(
                    send,
                    GatewayError(500, "internal gateway error", "internal_error"),
                    rid,
                    anthropic=_anthropic(scope, endpoint),
                )
        finally:
            if trace is not None and tracing is not None:
                tracing.end(trace)

    async def _dispatch(
        self,
        runtime: Runtime,
        request: CanonicalRequest,
        receive: Receive,
        send: Send,
        trace: RequestTrace | None = None,
    ) -> None:
        endpoint = request.endpoint
        local_models = endpoint == _MODELS or endpoint.startswith("/v1/models/")
        proxied = endpoint in runtime.proxy_path_set or (
            endpoint.startswith("/v1/") and under(endpoint, runtime.proxy_paths)
        )
        if proxied and runtime.loop_lag.current() >= runtime.shed_lag:
            # Overloaded: refused before anything costs (auth, limits, the body), so the streams
            # already running keep their pace (server.overload).
            runtime.metrics.limit_rejection("overload")
            raise GatewayError(
                503,
                "the gateway is overloaded; retry shortly",
                "gateway_overloaded",
                headers=runtime.shed_headers,
            )
        if proxied and runtime.global_rate is not None and runtime.limits is not None:
            # Before auth: the global bucket also shields the key providers from a flood.
            await limits_step.check_global(runtime, runtime.limits, runtime.global_rate)
        recognised = None
        if auth_step.needs_key(runtime, endpoint):
            key = auth_step.presented_key(runtime, request.headers)
            # Before the body is read: an unknown key costs no more than its headers.
            began = time_ns() if trace is not None else 0
            recognised = await auth_step.recognise(runtime, key, request.client_ip)
            if trace is not None:
                trace.phase("auth", began, auth_step.trace_attributes(recognised))
        if proxied:
            await self._proxy(runtime, request, receive, send, recognised, trace)
            return
        if trace is not None:
            trace.status = 200  # answered here (an error raised below overrides it)
        identity = (
            _decide(runtime, request, recognised, None, stream=False, proxied=False)
            if recognised is not None
            else None
        )
        if local_models:
            await self._models(runtime, request, send, identity)
        elif endpoint == "/health" or (endpoint == "/" and request.method in ("GET", "HEAD")):
            # "/": the reachability check agent tools send (Claude Code: HEAD /).
            await send_bytes(send, 200, _OK)
        elif endpoint == "/ready":
            now = asyncio.get_running_loop().time()
            if any(not backend.is_down(now) for backend in runtime.router.backends):
                await send_bytes(send, 200, _OK)
            else:
                raise GatewayError(503, "no backend is healthy", "not_ready")
        elif endpoint == runtime.config.metrics.path.lower() and runtime.config.metrics.enabled:
            metrics = runtime.metrics
            now = asyncio.get_running_loop().time()
            for backend in runtime.router.backends:
                metrics.backend_health(backend.name, not backend.is_down(now))
            body, content_type = metrics.render()
            await send_bytes(send, 200, body, content_type.encode())
        else:
            raise GatewayError(
                404,
                f"unknown path {request.path}: the gateway serves the OpenAI API under /v1/ "
                "(server.proxy_paths lists what is forwarded)",
                "unknown_path",
            )

    async def _models(
        self, runtime: Runtime, request: CanonicalRequest, send: Send, identity: Identity | None
    ) -> None:
        """``GET /v1/models`` and ``GET /v1/models/{id}``: only what the key may use."""
        if request.method != "GET":
            raise GatewayError(405, f"{request.path} accepts GET only", "method_not_allowed")
        allowed = identity.models if identity is not None else None
        if request.endpoint == _MODELS:
            await send_bytes(send, 200, await list_models(runtime, allowed))
            return
        model = request.path[len(_MODELS) + 1 :]
        found = await retrieve_model(runtime, model, allowed)
        if found is None:
            raise GatewayError(
                404, f"The model `{model}` does not exist.", "model_not_found", param="model"
            )
        await send_bytes(send, 200, found)

    async def _proxy(
        self,
        runtime: Runtime,
        request: CanonicalRequest,
        receive: Receive,
        send: Send,
        recognised: Recognised | None,
        trace: RequestTrace | None = None,
    ) -> None:
        endpoint = request.endpoint
        model_required = endpoint in _MODEL_ENDPOINTS
        content_type = _check_shape(request, model_required)
        recorder = runtime.recorder  # None unless recording: all it costs when it is off
        arrival = recorder.sample() if recorder is not None and model_required else None
        # The body's bytes count against the process's budget until the request ends.
        reader = BodyReader(runtime.body_budget)
        try:
            body = await reader.read(receive, request.headers, runtime.config.server.max_body_size)
            peek = _judge(body, content_type, model_required)
            home = await _response_home(runtime, request, peek)
            # A stored response is judged by the model it was made with (a GET names none).
            model = home.model if home is not None and request.endpoint != RESPONSES else None
            identity = None
            extra_headers: tuple[tuple[str, str], ...] = ()
            if recognised is not None:
                identity = _decide(
                    runtime,
                    request,
                    recognised,
                    model or peek.model,
                    stream=peek.streaming,
                    proxied=True,
                )
                extra_headers = auth_step.metadata_headers(
                    runtime.config.auth.forward_metadata, identity
                )
            await self._forward(
                runtime,
                request,
                receive,
                send,
                body,
                peek,
                identity,
                extra_headers,
                arrival,
                home,
                trace,
            )
        finally:
            reader.release()

    async def _forward(
        self,
        runtime: Runtime,
        request: CanonicalRequest,
        receive: Receive,
        send: Send,
        body: bytes,
        peek: RequestPeek,
        identity: Identity | None,
        extra_headers: tuple[tuple[str, str], ...],
        arrival: float | None,
        home: Home | None,
        trace: RequestTrace | None = None,
    ) -> None:
        """The judged request: admitted against the key's limits, forwarded, accounted."""
        model_required = request.endpoint in _MODEL_ENDPOINTS
        api = ENDPOINT_API.get(request.endpoint)
        exchange = Exchange(
            canonical=request,
            body=body,
            peek=peek,
            api=api,
            identity=identity,
            extra_headers=extra_headers,
            arrival=arrival,
            # Recorded as judged (the client's bytes), before the gateway's own edits.
            judged_body=body if arrival is not None else None,
            trace=trace,
        )
        if (
            peek.streaming
            and request.endpoint in ASKS_FOR_USAGE
            and runtime.counts_tokens
            and not peek.include_usage
        ):
            # Usage is needed to settle budgets and to bill: ask the backend for it, and hide
            # the usage event from a client that did not ask for it.
            exchange.body = with_usage_requested(body, peek)
            exchange.strip_usage = True
        if model_required:
            exchange.prompt_estimate = estimate_prompt_tokens(
                exchange.body, runtime.config.rate_limit.chars_per_token
            )
        if api == "responses" or request.endpoint.startswith(_RESPONSE_PATH):
            _pin_response(runtime, exchange, home)  # before admission: a 404 takes nothing
        if identity is not None:
            began = time_ns() if trace is not None else 0
            # Budgets are charged for what consumes tokens (not count_tokens); an answer is
            # reserved only where one is generated (not embeddings).
            billed = request.endpoint in GENERATING
            generating = billed and request.endpoint != EMBEDDINGS
            budgets = limits_step.budgets_of(identity, runtime.teams) if billed else []
            if generating and budgets and runtime.limits is not None and not peek.answer_limit:
                # No bound on the answer: the budget reserves the default, and that is all the
                # backend may generate (else the whole answer, unbounded, would be billed).
                member = "max_output_tokens" if api == "responses" else "max_tokens"
                tokens = runtime.config.rate_limit.default_max_tokens
                exchange.body = with_output_limit(exchange.body, member, tokens)
            settlement = await _admit(
                runtime, identity, peek, exchange.prompt_estimate, budgets, generating=generating
            )
            if trace is not None:
                trace.phase("limits", began)
            if settlement is not None:
                exchange.settlement = settlement
                exchange.response_headers = settlement.headers
        watch = _DisconnectWatch(receive, exchange)
        loop = asyncio.get_running_loop()
        exchange.started = loop.time()
        usage = runtime.usage
        journal = usage.journal if usage is not None and request.endpoint in GENERATING else None
        if journal is not None:
            settlement = exchange.settlement
            lease = (
                settlement.lease_of(identity.key_id)
                if settlement is not None and identity is not None
                else ""
            )
            exchange.journal = journal.open(exchange.interrupted(), exchange.counted, lease)
        held = None
        if usage is not None and usage.durable:
            held = _HeldEnd(send)
            exchange.hold_last = True
        try:
            await forward(runtime, exchange, held or send)
        except asyncio.CancelledError:
            # Cut before its end: by the client leaving, or by a forced shutdown (re-raised).
            exchange.cancelled = True
            if not watch.fired:
                raise
            log.debug("client left; upstream request %s closed", request.request_id)
        except GatewayError as error:
            exchange.status = error.status
            raise
        finally:
            watch.stop()
            if exchange.journal is not None:
                exchange.journal.end()
            written = _finish(runtime, exchange, loop.time())
        if held is not None and held.messages:
            await held.release(written)


_RESPONSE_PATH = RESPONSES + "/"


def _traced(runtime: Runtime, endpoint: str) -> bool:
    """Whether a request to ``endpoint`` gets a trace: all but probes and metrics scrapes."""
    return endpoint not in _UNTRACED and endpoint != runtime.config.metrics.path


def _anthropic(scope: Scope, endpoint: str) -> bool:
    """Whether an error goes to an Anthropic client, in Anthropic's shape: by the canonical
    endpoint, or, for a path that did not even parse, by its raw spelling."""
    return is_anthropic(endpoint or str(scope.get("path", "")).lower())


def _named_response(request: CanonicalRequest, peek: RequestPeek) -> str | None:
    """The response a Responses API request names (``previous_response_id``, or the id in
    ``/v1/responses/{id}``); None for a new conversation or another path."""
    if request.endpoint == RESPONSES:
        return peek.previous_response_id
    if request.endpoint.startswith(_RESPONSE_PATH):
        return request.path[len(_RESPONSE_PATH) :].partition("/")[0]
    return None


async def _response_home(
    runtime: Runtime, request: CanonicalRequest, peek: RequestPeek
) -> Home | None:
    """Where the response the request names was made (and by whom, with which model); a 404
    when no backend of this gateway made it."""
    wanted = _named_response(request, peek)
    if wanted is None:
        return None
    home = await runtime.fleet.responses.lookup(wanted, runtime.response_redis) if wanted else None
    if home is None:
        raise _no_response(request, wanted)
    return home


def _no_response(request: CanonicalRequest, wanted: str) -> GatewayError:
    previous = request.endpoint == RESPONSES
    return GatewayError(
        404,
        f"Response with id '{wanted}' not found.",
        "previous_response_not_found" if previous else "response_not_found",
        param="previous_response_id" if previous else None,
    )


def _pin_response(runtime: Runtime, exchange: Exchange, home: Home | None) -> None:
    """A Responses API request that names a response goes to the backend that made it — the
    only one that has it — and only for the key that made it, for a model that backend serves
    (anything else is the same 404 as an id never seen); a new response's backend, key and
    model are noted as it is relayed."""
    request = exchange.canonical
    if request.endpoint == RESPONSES:
        exchange.response_homes = (runtime.fleet.responses, runtime.response_redis)
    wanted = _named_response(request, exchange.peek)
    if wanted is None:
        return
    if request.method == "DELETE":
        exchange.forget_response = wanted
    identity = exchange.identity
    owner = identity.key_id if identity is not None else ""
    backend = None
    if home is not None and home.owner == owner:
        backend = runtime.router.named(home.backend)
    model = exchange.peek.model if request.endpoint == RESPONSES else None
    if backend is None or (model is not None and not backend.serves(model)):
        raise _no_response(request, wanted)
    exchange.pinned = backend


def _finish(runtime: Runtime, exchange: Exchange, now: float) -> asyncio.Future[None] | None:
    """The finish phase, whatever the outcome: settle the limits to what was used, then hand
    the ended request to each finish sink. The future is the durable usage record's."""
    used = exchange.used_usage()
    if exchange.forget_response and exchange.status < 300 and exchange.complete:
        runtime.fleet.responses.forget(exchange.forget_response, runtime.response_redis)
    cost = 0
    if used is not None and runtime.prices:
        model = exchange.peek.model or ""
        prompt, cached = used.prompt_tokens, used.cached_tokens
        cost = runtime.prices.cost_nanos(model, prompt, cached, used.completion_tokens)
    if exchange.settlement is not None:
        exchange.settlement.settle(runtime, used.total_tokens if used is not None else 0, cost)
    finished = exchange.finished(now, used, cost)
    if exchange.trace is not None:
        peek = exchange.peek
        asked = peek.max_tokens or peek.max_completion_tokens or peek.max_output_tokens
        exchange.trace.ended(finished, asked)
    written = None
    for sink in runtime.finish_sinks:
        result = sink(finished)
        if result is not None:
            written = result
    return written


def _decide(
    runtime: Runtime,
    request: CanonicalRequest,
    recognised: Recognised,
    model: str | None,
    *,
    stream: bool,
    proxied: bool,
) -> Identity:
    return auth_step.decide(
        runtime,
        recognised,
        method=request.method,
        path=request.path,
        headers=request.headers,
        client_ip=request.client_ip,
        model=model,
        stream=stream,
        proxied=proxied,
    )


def _judge(body: bytes, content_type: bytes | None, model_required: bool) -> RequestPeek:
    """The body's judged fields: JSON (no content type is JSON too), a multipart form's
    ``model``, or nothing for other bodies (a key limited to some models is then refused)."""
    if content_type is None or _is_json(content_type):
        return peek_body(body, model_required=model_required)
    if content_type.lower().startswith(b"multipart/form-data"):
        return peek_form(body, content_type)
    return EMPTY_PEEK


def _check_shape(request: CanonicalRequest, model_required: bool) -> bytes | None:
    """Refuse a wrong method, content type or encoding before reading the body, and headers
    the backend would see otherwise than judged; the content type."""
    if model_required and request.method != "POST":
        raise GatewayError(405, f"{request.path} accepts POST only", "method_not_allowed")
    content_type: bytes | None = None
    encodings = 0
    headers = request.headers
    for name, value in headers:
        if name == b"content-type":
            if content_type is not None:
                # Two copies reach the backend joined ("a, b"): not the type judged here.
                raise GatewayError(400, "content-type is sent twice", "duplicate_header")
            content_type = value
        elif name == b"content-encoding":
            encodings += 1
            if value.strip().lower() not in (b"", b"identity") or encodings > 1:
                # The gateway could not judge a compressed body, so none is passed on.
                raise GatewayError(
                    415,
                    "compressed request bodies are not accepted (content-encoding)",
                    "unsupported_media_type",
                )
    if model_required and content_type is not None and not _is_json(content_type):
        raise GatewayError(
            415,
            f"content-type must be application/json, got {content_type.decode('latin-1')}"
            if content_type
            else "content-type must be application/json",
            "unsupported_media_type",
        )
    return content_type


async def _admit(
    runtime: Runtime,
    identity: Identity,
    peek: RequestPeek,
    prompt_estimate: int,
    budgets: Sequence[limits_step.BudgetOwner] = (),
    *,
    generating: bool = True,
) -> limits_step.Settlement | None:
    """The limits of the key and of its team, and the ``budgets`` charged: a 429 now, or what
    to settle when the request ends (None: no limits). Another kind of limit is one more
    :class:`limits_step.Limit`. Only a ``generating`` request reserves an answer."""
    if runtime.limits is None:
        if budgets or identity.team:
            _warn_unenforced()
        return None
    config = runtime.config.rate_limit
    limits = limits_step.limits_of(config.per_key, identity, runtime.teams)
    answer = (
        (peek.answer_limit or config.default_max_tokens) * peek.completions if generating else 0
    )
    if budgets:
        # A budget reserves what the request can cost at most (at least one nano-unit, so a
        # spent budget refuses even an unpriced model).
        most = runtime.prices.cost_nanos(peek.model or "", prompt_estimate, 0, answer)
        limits += await limits_step.budget_limits(runtime, budgets, max(1, most))
    if not limits:
        return None
    return await limits_step.admit(runtime, limits, answer + prompt_estimate)


@functools.cache
def _warn_unenforced() -> None:
    """Once per process: a key or team has a budget or limits, but nothing enforces them."""
    log.warning(
        "a key with a team or a budget is in use but rate_limit.enabled is false: team limits "
        "and budgets are not enforced (costs are still recorded)"
    )


class _HeldEnd:
    """The client's ``send``, holding back the end of the response until its usage record is
    written (``usage.acknowledge: durable``): from the message the relay marks as the end (the
    chunk whose events complete a stream's ``data: [DONE]``, as the stream's one SSE scanner
    sees it, however the marker is cut) or the message that ends the body (a non-streamed
    answer's last chunk), and what follows. Everything before is relayed as it comes, so the
    time to first token is untouched; only the end waits a few milliseconds.
    """

    __slots__ = ("_send", "messages")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        if (
            self.messages
            or message.get(HELD_END)
            or (message["type"] == "http.response.body" and not message.get("more_body", False))
        ):
            self.messages.append(message)
            return
        await self._send(message)

    async def release(self, written: asyncio.Future[None] | None) -> None:
        """Send what was held, once ``written`` is done (or after :data:`DURABLE_WAIT`)."""
        if written is not None and not written.done():
            try:
                await asyncio.wait_for(asyncio.shield(written), DURABLE_WAIT)
            except TimeoutError:
                log.error(
                    "usage record not written within %.0f s; ending the response", DURABLE_WAIT
                )
        for message in self.messages:
            await self._send(message)


DURABLE_WAIT = 5.0
"""Longest a response end waits for its usage record (a stuck disk must not hang clients)."""


class _DisconnectWatch:
    """Cancel the request's task when its client disconnects, unless the response is complete.

    uvicorn's ``receive()`` returns ``http.disconnect`` both when the client goes away and once
    the response is complete, so the watcher always ends by itself; ``request.complete`` tells the
    two apart. It is never cancelled: a cancelled task leaves a reference cycle per request for
    the garbage collector, which showed up as 45–60 ms GC pauses under load.
    """

    __slots__ = ("_request", "_task", "_watcher", "fired")

    def __init__(self, receive: Receive, request: Exchange) -> None:
        self.fired = False
        self._request = request
        self._task = asyncio.current_task()
        self._watcher = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        message = await receive()
        if message["type"] == "http.disconnect" and not self._request.complete:
            self.fired = True
            if self._task is not None:
                self._task.cancel()

    def stop(self) -> None:
        """The forward is over (answered, failed or cancelled): a later disconnect is no cancel."""
        self._request.complete = True
        self._task = None


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")
