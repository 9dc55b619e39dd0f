"""The typed, frozen configuration model.

Every key an operator may write lives here, with its type and default, so that the loader can reject
typos with the exact path and a suggestion, ``config.yaml.example`` can document it, and the rest of
the code reads attributes instead of dict lookups. Sections whose behaviour lands later (auth
providers, limits, usage delivery) are parsed and validated now so that an operator's seed config is
accepted as a whole. Nothing here performs I/O.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict

from llmproxy.budgets import MAX_BUDGET, Period
from llmproxy.config.errors import PathValueError
from llmproxy.config.units import parse_duration, parse_size
from llmproxy.dsn import is_postgres_url, postgres_dsn
from llmproxy.http_fields import header_name_problem, header_value_problem
from llmproxy.keyfields import doc
from llmproxy.routing.strategies import Strategy, strategy_reference

Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, written as ``10s``, ``500ms``, ``1m`` or a plain number of seconds."""

Size = Annotated[int, BeforeValidator(parse_size)]


def parse_workers(value: object) -> object:
    """``auto`` → the CPUs this process may run on; anything else is left to the int check."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return value


Workers = Annotated[int, BeforeValidator(parse_workers)]
"""Bytes, written as ``10MiB``, ``512KB`` or a plain number of bytes."""


RESTART_ONLY: Final[JsonDict] = {"restart_only": True}
"""``Field(json_schema_extra=RESTART_ONLY)``: a key a running daemon cannot change (the
listener, the worker processes, the usage sink, the metrics registry, the admin socket). The
reload diff refuses a change to it and the configuration reference says so, both from this."""


def restart_only(field: Any) -> bool:
    """Whether a model field carries :data:`RESTART_ONLY`."""
    extra = getattr(field, "json_schema_extra", None)
    return isinstance(extra, dict) and extra.get("restart_only") is True


def sendable_headers(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` when every name and value can be sent; else a ValueError naming the bad one."""
    for name, value in headers.items():
        problem = header_name_problem(name)
        if problem is None and (value_problem := header_value_problem(value)):
            problem = f"header {name}: {value_problem}"
        if problem is not None:
            raise ValueError(problem)
    return headers


class Section(BaseModel):
    """Base of every config section: frozen, and unknown keys are errors.

    The docstring under each field is its description: ``docs/configuration.md`` is generated from
    them (``python -m llmproxy.config.reference``).
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", str_strip_whitespace=True, use_attribute_docstrings=True
    )


class TLSConfig(Section):
    """``server.tls``: serve HTTPS with a certificate and key in PEM files."""

    enabled: bool = False
    """Serve HTTPS instead of plain HTTP."""
    cert_file: str = ""
    """PEM file with the certificate chain."""
    key_file: str = ""
    """PEM file with the private key."""

    @model_validator(mode="after")
    def _files_when_enabled(self) -> TLSConfig:
        if self.enabled and not (self.cert_file and self.key_file):
            raise ValueError("tls.enabled needs both cert_file and key_file")
        return self


class OverloadConfig(Section):
    """``server.overload``: refuse new requests while the event loop runs late, instead of
    slowing every running stream (see `docs/operations.md`)."""

    enabled: bool = True
    """Shed new requests past `max_event_loop_lag`; the lag is measured and exported either way."""
    max_event_loop_lag: Duration = Field(default=0.1, gt=0)
    """Event-loop lateness at which new requests are answered 503 `gateway_overloaded` at once,
    until the loop keeps time again (the lag is the largest over the last 0.1 s).
    """
    retry_after: int = Field(default=1, ge=1)
    """Seconds sent in `Retry-After` with a shed request."""


class CORSConfig(Section):
    """``server.cors``: browser access (preflight answered by the gateway itself)."""

    enabled: bool = False
    """Answer preflight requests and add CORS headers, so browser apps can call the API."""
    allow_origins: tuple[str, ...] = ("*",)
    """Origins allowed to call the gateway from a browser; `*` allows any."""
    allow_methods: tuple[str, ...] = ("GET", "POST", "OPTIONS")
    """Methods a browser may use (`Access-Control-Allow-Methods`)."""
    allow_headers: tuple[str, ...] = ("Authorization", "Content-Type", "X-API-Key", "X-Request-Id")
    """Request headers a browser may send (`Access-Control-Allow-Headers`)."""
    expose_headers: tuple[str, ...] = ("X-Request-Id",)
    """Response headers a browser script may read."""
    allow_credentials: bool = False
    """Let browsers send cookies and credentials (`Access-Control-Allow-Credentials`)."""
    max_age: Duration = 600.0
    """How long a browser may reuse a preflight answer."""


class ServerConfig(Section):
    """``server``: the client-facing listener."""

    listen: str | None = Field(default=None, json_schema_extra=RESTART_ONLY)
    """Address to listen on (`host:port`, or `:port` for every interface); overrides the top-level
    `listen` when set.
    """
    header_timeout: Duration = Field(default=10.0, gt=0, json_schema_extra=RESTART_ONLY)
    """Longest time a client may take to send a request's whole header block, counted from a
    new connection's accept (or, on a kept-alive connection, from the request's first byte);
    then 408 and the connection is closed. A connection that sends nothing is closed.
    """
    read_timeout: Duration = Field(default=60.0, json_schema_extra=RESTART_ONLY)
    """Longest time a client may take to send a request's body, counted from the end of its
    headers; then 408 and the connection is closed. 0 waits forever.
    """
    write_timeout: Duration = Field(default=0.0, json_schema_extra=RESTART_ONLY)
    """Longest time to send one response; 0 means no limit, which long streams need."""
    send_timeout: Duration = Field(default=60.0, json_schema_extra=RESTART_ONLY)
    """Longest time a response may wait for the client to take more of it (a client that stops
    reading); then the connection is closed, and the backend request with it, so a client
    cannot hold a GPU slot by not reading. 0 waits forever.
    """
    idle_timeout: Duration = Field(default=75.0, json_schema_extra=RESTART_ONLY)
    """How long an idle keep-alive client connection stays open."""
    max_header_size: Size = Field(default=64 * 1024, ge=1024, json_schema_extra=RESTART_ONLY)
    """Largest request header block (request line included), counted as it arrives: one byte
    more is refused with 431 and the connection closed.
    """
    max_body_size: Size = 10 * 1024 * 1024
    """Largest request body accepted; larger requests are refused with 413."""
    max_connections: int = Field(default=4096, ge=1, json_schema_extra=RESTART_ONLY)
    """Most client connections one gateway process keeps open; one more is answered 503 and
    closed. Every proxied request also holds a connection to a backend, so keep twice this
    below the process's open-file limit.
    """
    body_buffer_limit: Size = Field(default=256 * 1024 * 1024, ge=1024)
    """Most bytes of request bodies one gateway process holds, counted as they arrive and until
    their requests end (waiting for a backend included); a body that would go over is refused
    with 503 `server_busy` and `Retry-After`. Bodies of unknown keys are never read.
    """
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or CIDR ranges of the proxies in front of the gateway (load balancers, ingress).
    Only a connection from one of them may name the client, in `client_address_header`; the
    client is then the nearest address in that chain that is not a trusted proxy. Empty: every
    forwarded header is ignored and the client is the connection's peer.
    """
    proxy_paths: tuple[str, ...] = (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
        "/v1/audio",
        "/v1/images",
        "/v1/moderations",
        "/v1/rerank",
        "/v1/score",
        "/v1/files",
        "/v1/batches",
    )
    """Paths under `/v1/` forwarded to the backends, matched by whole segments (`/v1/audio`
    covers `/v1/audio/transcriptions`); any other `/v1/` path is a 404 from the gateway, so a
    tenant never reaches what else a backend serves there (vLLM's LoRA loading, for one).
    """
    client_address_header: Literal["X-Forwarded-For", "Forwarded"] = "X-Forwarded-For"
    """The header your trusted proxies write the client's address in (only that one is read: a
    client's copy of the other, passed through by the proxy, is not believed).
    """
    shutdown_timeout: Duration = 30.0
    """On SIGTERM, how long in-flight requests may finish before they are cancelled."""
    watch_config: bool = True
    """Reload when the config file or a Lua file it references changes (SIGHUP and
    `llmproxy reload` work either way).
    """
    workers: Workers = Field(default=1, ge=1, le=256, json_schema_extra=RESTART_ONLY)
    """Gateway processes sharing the port; one process uses one CPU core. `auto`: one per CPU
    this process may run on (its affinity mask, so a container's cpuset counts, not the host's
    cores). Limits, in-memory as well, hold for the daemon as a whole.
    """
    tls: TLSConfig = Field(default=TLSConfig(), json_schema_extra=RESTART_ONLY)
    """HTTPS for the listener."""
    cors: CORSConfig = CORSConfig()
    """Browser (CORS) access."""
    overload: OverloadConfig = OverloadConfig()
    """Overload protection: shed new requests while the event loop runs late."""

    @field_validator("proxy_paths")
    @classmethod
    def _api_paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = []
        for path in paths:
            segments = path.split("/")
            if not path.startswith("/v1/") or any(s in ("", ".", "..") for s in segments[1:]):
                raise ValueError(f"{path!r}: a proxy path is a plain path under /v1/")
            cleaned.append(path.lower())
        return tuple(cleaned)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, entries: tuple[str, ...]) -> tuple[str, ...]:
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR range") from None
        return entries


ProbeMode = Literal["path", "models"]


class BackendHealthCheck(Section):
    """``backends[].health_check``: how this backend is probed; unset keys take the global
    ``health_check`` values."""

    mode: ProbeMode | None = None
    """`path`: GET `path`; `models`: GET `/v1/models` and expect a model list (any
    OpenAI-compatible server answers it).
    """
    path: str | None = None
    """Path requested (GET) by a probe in `path` mode."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Headers sent with each probe, beside the backend's `api_key` and `headers`."""
    expect: tuple[int, ...] | None = None
    """Statuses that count as healthy; empty means any 2xx."""

    @field_validator("headers")
    @classmethod
    def _sendable_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        return sendable_headers(headers)


class BackendConfig(Section):
    """``backends[]``: one inference server."""

    url: str
    """Base URL of the inference server (http or https); the client's request path is appended."""
    name: str = ""
    """Short name for logs, metrics, status and fallback chains; empty means the url."""
    weight: int = Field(default=1, ge=0, le=1000)
    """Share of traffic relative to the other backends; 0 takes it out of rotation."""
    models: tuple[str, ...] = ()
    """Model names this backend serves; empty means any model."""
    api_key: str = ""
    """Bearer token the gateway sends to this backend; empty sends none."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra headers added to every request sent to this backend."""
    connect_timeout: Duration = 5.0
    """Longest wait to open a connection to the backend."""
    first_byte_timeout: Duration = 300.0
    """Longest wait for the first byte of the answer (prompt processing included)."""
    idle_timeout: Duration = 120.0
    """Longest silence between two chunks of a streamed answer before it is abandoned."""
    max_connections: int = Field(default=0, ge=0)
    """Most simultaneous connections to this backend; 0 means no limit."""
    max_in_flight: int = Field(default=0, ge=0)
    """Most requests the gateway sends here at once (the server's batch slots); 0 means no
    limit. When every backend is at its limit, requests wait in `routing.admission`, best
    priority first.
    """
    send_priority: bool = False
    """Send each request's priority (the key's `priority`, or the Lua decision's) in vLLM's
    `priority` request field; a client's own value is replaced.
    """
    apis: tuple[
        Literal["chat_completions", "completions", "embeddings", "messages", "responses"], ...
    ] = ()
    """The model APIs this backend speaks; empty means all of them (requests pass through). A
    request for an API it does not list goes to another backend, except Anthropic Messages for
    a backend that lists `chat_completions`: translated to chat completions and back (streams
    too), so Anthropic clients can use a server that speaks only the OpenAI API.
    """
    health_check: BackendHealthCheck = BackendHealthCheck()
    """How this backend is probed, where it differs from the global `health_check`."""
    max_response_size: Size = Field(default=1024 * 1024, ge=1024)
    """Most bytes of one non-streamed answer the gateway holds to read its `usage`. The answer
    is relayed as it arrives whatever its size; past this, the `usage` object is caught as it
    goes by instead (a few KiB held).
    """

    @field_validator("headers")
    @classmethod
    def _sendable_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        return sendable_headers(headers)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"scheme must be http or https, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"url has no host: {url!r}")
        try:
            parts.port  # noqa: B018 - urlsplit checks the port only when it is read
        except ValueError:
            raise ValueError(f"url has an invalid port: {url!r}") from None
        if parts.query or parts.fragment:
            raise ValueError(f"url must not carry a query or fragment: {url!r}")
        return url.rstrip("/")

    @property
    def display_name(self) -> str:
        """The name used in logs, metrics and status: ``name`` or the url."""
        return self.name or self.url


class RetryConfig(Section):
    """``routing.retry``: retries before anything was sent to the client."""

    enabled: bool = True
    """Retry a failed request on another backend, as long as nothing reached the client yet."""
    max_retries: int = Field(default=2, ge=0, le=20)
    """Retries after the first attempt."""
    initial_wait: Duration = 0.05
    """Wait before the first retry."""
    max_wait: Duration = 2.0
    """Upper bound of the wait between two retries."""
    multiplier: float = Field(default=2.0, ge=1.0)
    """Factor the wait grows by after each retry."""
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)
    """Random spread of each wait, as a fraction of it (0.2 is ±20 %)."""
    retry_on_status: tuple[int, ...] = (429, 500, 502, 503, 504)
    """Backend status codes that count as a failure worth retrying. A 429 is never retried on
    the backend that sent it; when no other backend can take the request, the 429 and its
    `Retry-After` go to the client at once (its SDK retries; the gateway must not multiply).
    """
    budget_percent: float = Field(default=20.0, ge=0.0, le=100.0)
    """Retries in flight at once, as a percentage of the requests in flight (Envoy's retry
    budget): when a backend fails every request, retries cannot double the load on the rest.
    """
    min_retry_concurrency: int = Field(default=3, ge=0)
    """Retries in flight that are always allowed, whatever `budget_percent` says (a quiet
    gateway still retries).
    """


class FallbackConfig(Section):
    """``routing.fallback[]``: where to go when ``primary`` (url or name) is down."""

    primary: str
    """Backend (name or url) this chain applies to."""
    fallback: tuple[str, ...]
    """Backends (names or urls) to use, in order, while the primary is down."""


class PrefixAffinityConfig(Section):
    """``routing.prefix_affinity``: requests that share a prompt prefix go to the same backend."""

    prefix_chars: int = Field(default=2048, ge=16)
    """Leading characters of the prompt (roles and texts of the messages, in order) that decide
    the backend: a tenant's system prompt and a conversation's first turns.
    """
    epsilon: float = Field(default=0.25, ge=0.0)
    """Load bound: a backend above (1 + epsilon) × the average in-flight count (unless it has
    free slots under its `max_in_flight`, or else a KV cache with room), at its limit or with a
    queue passes the request on to the next one on the ring. It bounds demand too: a prefix whose
    backend gets more than (1 + epsilon) × the average share of recent requests moves to the
    least asked one, if it stays the lighter of the two (a light tenant leaves a heavy one's
    replica).
    """


class LoadSignalsConfig(Section):
    """``routing.load_signals``: the backends' queue and KV cache, read from their `/metrics`."""

    enabled: bool = False
    """Scrape every backend's Prometheus endpoint (vLLM and SGLang metric names); on by itself
    for `load_aware` and `prefix_affinity`.
    """
    interval: Duration = 1.0
    """Time between two scrapes of one backend."""
    path: str = "/metrics"
    """Path of the backends' metrics endpoint."""
    timeout: Duration = 0.5
    """Longest wait for one scrape; a backend that does not answer is judged by the gateway's
    own counts.
    """


class AdmissionConfig(Section):
    """``routing.admission``: requests waiting while every backend is at `max_in_flight`."""

    max_waiting: int = Field(default=1000, ge=0)
    """Most requests waiting at once; beyond, a request is refused with 503 at once."""
    timeout: Duration = 30.0
    """Longest wait for a free backend before a 503."""
    reserved_slots: int = Field(default=0, ge=0)
    """Slots of every backend with `max_in_flight` kept free for requests of priority at most
    `reserved_priority`, so an important request need not wait for a long generation to end.
    """
    reserved_priority: int = 0
    """Requests of this priority or better (lower) may use the reserved slots."""


class RoutingConfig(Section):
    """``routing``: how a backend is chosen."""

    load_balance_strategy: Strategy = Field(
        default=Strategy.ROUND_ROBIN,
        description=f"How a backend is picked. {strategy_reference()}.",
    )
    prefix_affinity: PrefixAffinityConfig = PrefixAffinityConfig()
    """Settings of the `prefix_affinity` strategy."""
    load_signals: LoadSignalsConfig = LoadSignalsConfig()
    """Reading the backends' load from their Prometheus metrics."""
    admission: AdmissionConfig = AdmissionConfig()
    """The queue of requests waiting for a backend slot (see `backends[].max_in_flight`)."""
    retry: RetryConfig = RetryConfig()
    """Retries of failed requests."""
    fallback: tuple[FallbackConfig, ...] = ()
    """Fallback chains for backends that are down."""


class PassiveHealthConfig(Section):
    """``health_check.passive``: eject a backend after consecutive request failures.

    A failure no client can cause — the connection refused or reset, a broken stream, a
    malformed answer — always counts. A 5xx answer or a timeout (which a long prompt or a long
    non-streamed generation can cause) counts only when it cannot be the request's own doing:
    not when the same request also failed on another backend, and towards an ejection only
    once `min_clients` different clients (keys, or addresses without auth) met one in the same
    run of failures.
    """

    enabled: bool = True
    """Take a backend out after consecutive failed requests, without waiting for a probe."""
    failure_threshold: int = Field(default=5, ge=1)
    """Consecutive failed requests that take a backend out."""
    ejection_time: Duration = 30.0
    """How long a backend taken out this way stays out."""
    min_clients: int = Field(default=3, ge=1)
    """Different clients whose requests must have met a 5xx answer in a run of failures before
    it takes a backend out (so one key sending a request the backend chokes on cannot take the
    backend away from everyone); 1 counts every 5xx as before.
    """


class HealthCheckConfig(Section):
    """``health_check``: active probes of every backend."""

    enabled: bool = True
    """Probe every backend periodically and route only to healthy ones."""
    interval: Duration = 10.0
    """Time between two probes of one backend."""
    mode: ProbeMode = "path"
    """`path`: GET `path`; `models`: GET `/v1/models` and expect a model list (any
    OpenAI-compatible server answers it). A backend's `health_check` overrides it.
    """
    path: str = "/health"
    """Path requested (GET) on each backend by a probe in `path` mode. Probes carry the
    backend's `api_key` and `headers`, so a health route behind a key (LiteLLM's) works.
    """
    expect: tuple[int, ...] = ()
    """Statuses that count as healthy; empty means any 2xx."""
    timeout: Duration = 2.0
    """Longest wait for a probe's answer."""
    unhealthy_threshold: int = Field(default=3, ge=1)
    """Consecutive failed probes that mark a backend down."""
    healthy_threshold: int = Field(default=2, ge=1)
    """Consecutive good probes that bring a backend back."""
    passive: PassiveHealthConfig = PassiveHealthConfig()
    """Ejection on failed requests."""


class RedisConnection(Section):
    """Connection to a Redis server (providers and limit storage)."""

    addr: str = "localhost:6379"
    """Redis server as `host:port`."""
    password: str = ""
    """Redis password; empty for none."""
    username: str = ""
    """Redis ACL user; empty for the default user."""
    db: int = Field(default=0, ge=0)
    """Redis database number."""
    key_pattern: str = "llmproxy:key:{api_key}"
    """Redis key holding one API key's data; `{api_key}` is replaced by the key."""
    timeout: Duration = 0.5
    """Longest wait for one Redis command."""
    tls: bool = False
    """Connect to Redis over TLS."""


class DatabaseConnection(Section):
    """``database`` provider: a SQL table or a parameterised query."""

    driver: Literal["postgres", "postgresql", "mysql", "mariadb", "sqlite", "sqlite3"]
    """SQL database kind."""
    dsn: str
    """Connection string, e.g. `postgres://user:pass@host/db`, or the SQLite file path."""
    table: str = "api_keys"
    """Table holding the keys."""
    key_column: str = "key"
    """Column compared with the key a client presents."""
    fields: tuple[str, ...] = ()
    """Columns handed to the decision as `data`; empty means every column."""
    query: str = ""
    """SQL to run instead of reading `table`, with one parameter: the key."""
    pool_size: int = Field(default=10, ge=1)
    """Most open database connections."""
    timeout: Duration = 2.0
    """Longest wait for one query."""


class WebhookConnection(Section):
    """``webhook`` provider: POST the key (or its hash) and take the JSON reply as data."""

    url: str
    """Endpoint asked about each key; its JSON reply becomes `data`."""
    method: Literal["POST", "GET"] = "POST"
    """HTTP method of the call."""
    timeout: Duration = 3.0
    """Longest wait for the reply."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra headers sent with each call."""

    @field_validator("headers")
    @classmethod
    def _sendable_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        return sendable_headers(headers)

    send_key: Literal["hash", "plain"] = "hash"
    """Send a hash of the key (`hash`) or the key itself (`plain`)."""


class StaticKey(Section):
    """One key inline in a ``static`` provider, or in top-level ``api_keys``.

    The fields and their descriptions are :mod:`llmproxy.keyfields`'s; the types here are wider
    where the seed's files were (a numeric ``status``, an ISO ``expires_at``).
    """

    key: str
    """The API key clients present."""
    name: str = Field(default="", description=doc("name"))
    user_id: str = Field(default="", description=doc("user_id"))
    status: str | int = Field(default="active", description=doc("status"))
    total_quota: int | None = Field(default=None, description=doc("total_quota"))
    used_quota: int = Field(default=0, description=doc("used_quota"))
    expires_at: str | int | None = Field(default=None, description=doc("expires_at"))
    models: tuple[str, ...] = Field(default=(), description=doc("models"))
    allowed_ips: tuple[str, ...] = Field(default=(), description=doc("allowed_ips"))
    rpm: int | None = Field(default=None, description=doc("rpm"))
    burst: int | None = Field(default=None, description=doc("burst"))
    tpm: int | None = Field(default=None, description=doc("tpm"))
    max_concurrent: int | None = Field(default=None, description=doc("max_concurrent"))
    priority: int | None = Field(default=None, description=doc("priority"))
    metadata: dict[str, Any] = Field(default_factory=dict, description=doc("metadata"))
    team: str = Field(default="", description=doc("team"))
    budget: float | None = Field(
        default=None, ge=0, le=MAX_BUDGET, allow_inf_nan=False, description=doc("budget")
    )
    budget_period: Period = Field(default="monthly", description=doc("budget_period"))

    @field_validator("user_id")
    @classmethod
    def _sendable_user_id(cls, user_id: str) -> str:
        # auth.forward_metadata may send it to the backend as a header.
        problem = header_value_problem(user_id) if user_id else None
        if problem is not None:
            raise ValueError(f"user_id cannot be used: {problem}")
        return user_id


class ProviderConfig(Section):
    """``auth.pipeline[]``: one key source, optionally followed by a Lua decision."""

    name: str
    """Name of this provider in logs and metrics."""
    type: Literal["file", "static", "builtin", "redis", "database", "webhook"]
    """Where keys come from: top-level `api_keys` (`file`), `keys` below (`static`), the CLI-managed
    SQLite store (`builtin`), Redis, a SQL database or a webhook.
    """
    enabled: bool = True
    """Skip this provider when false."""
    lua_script: str = ""
    """Lua code that decides from the looked-up `data` whether the request may pass."""
    lua_script_file: str = ""
    """File holding that Lua code, instead of `lua_script` (reloaded with the config)."""
    on_error: Literal["skip", "deny"] = "deny"
    """When this provider cannot answer (server down, timeout, bad reply): `deny` refuses the
    request with 503, `skip` goes on to the next provider. Never an allow.
    """
    redis: RedisConnection | None = None
    """Connection of a `redis` provider."""
    database: DatabaseConnection | None = None
    """Connection of a `database` provider."""
    webhook: WebhookConnection | None = None
    """Endpoint of a `webhook` provider."""
    keys: tuple[StaticKey, ...] = ()
    """Keys of a `static` provider."""
    path: str = ""
    """Key file of a `file` provider (YAML: a list of keys shaped like `api_keys`, or a mapping
    with an `api_keys` list), watched and re-read on reload; empty means the top-level `api_keys`.
    """

    @model_validator(mode="after")
    def _connection_for_type(self) -> ProviderConfig:
        needed = {"redis": self.redis, "database": self.database, "webhook": self.webhook}
        if self.type in needed and needed[self.type] is None:
            raise ValueError(f"provider type {self.type!r} needs a {self.type!r} section")
        if self.lua_script and self.lua_script_file:
            raise ValueError("give lua_script or lua_script_file, not both")
        return self


class AuthCacheConfig(Section):
    """``auth.cache``: bounded TTL cache of auth decisions."""

    enabled: bool = True
    """Reuse decisions, so a key is not looked up on every request."""
    ttl: Duration = 10.0
    """How long a decision to let a key in is reused."""
    negative_ttl: Duration = 2.0
    """How long a refusal is reused; short, so a newly added key works quickly."""
    max_entries: int = Field(default=100_000, ge=1)
    """Most cached decisions; the oldest are dropped first."""


class StatusCodeConfig(Section):
    """How the gateway answers a key in one state: let it pass, or refuse with a status."""

    allow: bool = False
    """Let a key in this state pass."""
    http_code: int = Field(default=401, ge=200, le=599)
    """HTTP status of the refusal."""
    message: str = ""
    """Error message of the refusal (the OpenAI error body's `message`)."""


class StatusCodesConfig(Section):
    """``auth.status_codes``: the answer for each key state, as in the seed."""

    active: StatusCodeConfig = StatusCodeConfig(allow=True, http_code=200, message="")
    """A key in good standing."""
    disabled: StatusCodeConfig = StatusCodeConfig(http_code=403, message="this API key is disabled")
    """A key switched off by its owner or an operator (status `disabled` or 1)."""
    expired: StatusCodeConfig = StatusCodeConfig(http_code=401, message="this API key has expired")
    """A key past its `expires_at` (or status `expired` or 3)."""
    quota_exceeded: StatusCodeConfig = StatusCodeConfig(
        http_code=429, message="this API key has used all of its quota"
    )
    """A key whose `used_quota` reached `total_quota`, or whose `balance` is spent (status 2;
    a provider with a decision script leaves `balance` to the script)."""
    not_found: StatusCodeConfig = StatusCodeConfig(http_code=401, message="invalid API key")
    """A key no provider knows."""


class LuaLimitsConfig(Section):
    """``auth.lua``: the budget every decision script runs under."""

    instruction_limit: int = Field(default=1_000_000, ge=1000)
    """Lua VM instructions one decision may execute before it is stopped (a 500)."""
    memory_limit: Size = 16 * 1024 * 1024
    """Memory the Lua runtime may allocate, in total."""
    timeout: Duration = 0.05
    """Wall-clock time one decision may take before it is stopped."""


class AuthConfig(Section):
    """``auth``: key extraction and the provider pipeline."""

    enabled: bool = False
    """Require an API key on every request outside `skip_paths`."""
    header_names: tuple[str, ...] = ("Authorization", "X-API-Key")
    """Headers searched for the key, in order (`Authorization: Bearer sk-...` is understood)."""
    mode: Literal["first_match", "all"] = "first_match"
    """`first_match`: the first provider that knows the key decides; `all`: every enabled provider
    must let it in.
    """
    storage: Literal["file", "builtin", ""] = ""
    """Seed shortcut for a one-provider pipeline (`file` or `builtin`); empty when `pipeline` is
    given.
    """
    skip_paths: tuple[str, ...] = ("/health", "/ready", "/metrics")
    """Paths served without a key, matched by whole segments: `/v1/models` covers `/v1/models`
    and `/v1/models/x`, never `/v1/modelsX`.
    """
    pipeline: tuple[ProviderConfig, ...] = ()
    """Key providers, asked in order."""
    cache: AuthCacheConfig = AuthCacheConfig()
    """Cache of auth decisions."""
    builtin_db: str = "llmproxy-keys.db"
    """The `builtin` key store: a SQLite file (relative to the config's directory), or a
    `postgresql://user@host:5432/db` URL that several gateways on several machines share (keys
    added or revoked on one are seen by the others within milliseconds, through LISTEN/NOTIFY).
    """
    builtin_refresh_interval: Duration = Field(default=1.0, gt=0)
    """How often the `builtin` store is checked for writes made outside this daemon (the CLI of
    another machine, another gateway); writes through the admin API reach every worker at once,
    and PostgreSQL announces every write as it commits.
    """
    builtin_resync_interval: Duration = Field(default=60.0, gt=0)
    """How often every key is loaded again from the `builtin` store, whatever the change checks
    said: the net under a lost change notice or a row deleted by hand.
    """
    status_codes: StatusCodesConfig = StatusCodesConfig()
    """The answer for each key state."""
    forward_metadata: dict[str, str] = Field(default_factory=dict)
    """Decision metadata sent to the backend as headers: metadata name → header name (e.g.
    `user_id: X-User-Id`). Copies of those headers sent by the client are removed.
    """
    lua: LuaLimitsConfig = LuaLimitsConfig()
    """Budget of the decision scripts."""

    @field_validator("skip_paths")
    @classmethod
    def _whole_paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = []
        for path in paths:
            segments = path.split("/")
            if not path.startswith("/") or any(s in (".", "..") for s in segments):
                raise ValueError(f"{path!r}: a skip path starts with / and has no . or .. segment")
            if "" in segments[1:-1] or any(c in path for c in "%;\\?#"):
                raise ValueError(f"{path!r}: a skip path is a plain path (no //, %, ;, \\, ? or #)")
            cleaned.append(path.rstrip("/") or "/")
        return tuple(cleaned)

    @field_validator("forward_metadata")
    @classmethod
    def _header_names(cls, forward: dict[str, str]) -> dict[str, str]:
        for header in forward.values():
            problem = header_name_problem(header)
            if problem is not None:
                raise ValueError(problem)
        return forward


class RateSpec(Section):
    """A token bucket: ``requests_per_second`` or ``requests_per_minute`` with ``burst_size``."""

    enabled: bool = False
    """Apply this limit."""
    requests_per_second: float | None = Field(default=None, gt=0)
    """Sustained request rate per second; without `burst_size`, one second's worth may come at
    once (5 per second: 5 at once, then one every 0.2 s)."""
    requests_per_minute: float | None = Field(default=None, gt=0)
    """Requests per minute, instead of per second; without `burst_size`, the whole minute's count
    may come at once (60 per minute: 60 at once, then one a second)."""
    burst_size: int | None = Field(default=None, ge=1)
    """Requests allowed at once (the bucket size); unset: a second's worth for a per-second
    rate, a minute's count for a per-minute one. The rate still refills it."""

    @model_validator(mode="after")
    def _one_rate(self) -> RateSpec:
        if self.requests_per_second is not None and self.requests_per_minute is not None:
            raise ValueError("give requests_per_second or requests_per_minute, not both")
        return self


class PerKeyRateSpec(RateSpec):
    """``rate_limit.per_key``: the bucket plus concurrency and token budgets per key."""

    max_concurrent: int | None = Field(default=None, ge=1)
    """Requests one key may have in flight at once."""
    tokens_per_minute: int | None = Field(default=None, ge=1)
    """Tokens one key may use per minute."""


class RateLimitConfig(Section):
    """``rate_limit``: global and per-key limits, in memory or shared through Redis.

    A per-minute limit means what it says: `requests_per_minute: 60` (or a key's `rpm: 60`)
    admits 60 requests in a row, then refills at one a second — a token bucket of the minute's
    count. A per-second limit keeps the per-second meaning: `requests_per_second: 5` admits 5 at
    once. `burst_size` (a key's `burst`, `llmproxy keys add --burst`) sets the bucket otherwise:
    `requests_per_minute: 600` with `burst_size: 20` admits 20 at once, then ten a second.

    Worked example, a key with `rpm: 60` and no burst. Sixty requests sent at once all pass; the
    first answer carries `x-ratelimit-limit-requests: 60` (the configured limit, never the bucket
    size), `x-ratelimit-remaining-requests: 59` (what may still be sent at once) and
    `x-ratelimit-reset-requests: 1s` (until the bucket is full again). The 61st is a 429
    `rate_limit_exceeded` with `Retry-After: 1`; from then on the key gets one request a second,
    and after a minute without requests it has its 60 again. As with the fixed per-minute
    windows of other gateways, a 60-second span that starts with a full bucket can see the
    burst plus what refills in it (up to 119 here); a smaller `burst` bounds that tighter. For
    `tokens_per_minute` (a key's `tpm`) `x-ratelimit-limit-tokens` is the tokens per minute, and
    a request reserves its `max_tokens` (or `default_max_tokens`) plus its prompt's estimate.

    A key's `rpm` bursts by its own `burst`, else `per_key.burst_size`, else its minute's count
    (a team's `rpm` by `per_key.burst_size`, else its count); a key's `burst` without an `rpm`
    resizes the bucket of `per_key`'s rate for that key. A decision script may return `rpm`
    and `burst` in its metadata to override both for one request."""

    enabled: bool = False
    """Apply rate limits."""
    storage: Literal["memory", "redis"] = "memory"
    """`memory` counts in each process; `redis` shares the counts between every gateway process."""
    redis: RedisConnection | None = None
    """Redis connection, needed when `storage` is `redis`."""
    redis_failure: Literal["open", "closed", "local"] = "local"
    """When Redis is unreachable: `open` lets requests through, `closed` refuses them, `local`
    limits in memory.
    """
    global_: RateSpec = Field(default=RateSpec(), alias="global")
    """One bucket for all traffic."""
    per_key: PerKeyRateSpec = PerKeyRateSpec()
    """Limits for each API key."""
    default_max_tokens: int = Field(default=1024, ge=1)
    """Tokens counted for a request that sets no `max_tokens`, when checking token budgets."""
    chars_per_token: float = Field(default=4.0, gt=0)
    """Prompt characters per token when estimating a prompt's tokens for a reservation."""
    instances: int = Field(default=1, ge=1)
    """Gateway processes sharing the Redis limits; with `redis_failure: local` each one limits
    to its share (1/instances) of every limit while Redis is down.
    """
    key_prefix: str = "llmproxy:limits:"
    """Prefix of the Redis keys holding limit state."""
    lease_ttl: Duration = Field(default=30.0, ge=1.0)
    """How long a concurrency slot (and its quota reservation) in Redis outlives a gateway that
    died holding it: live gateways renew their slots every third of this, so a request may run
    for hours, while the slots of a replica killed -9 are free again within this time.
    """

    model_config = ConfigDict(populate_by_name=True)

    @model_validator(mode="after")
    def _redis_when_shared(self) -> RateLimitConfig:
        if self.enabled and self.storage == "redis" and self.redis is None:
            raise ValueError("rate_limit.storage redis needs a rate_limit.redis section")
        return self


MAX_PRICE: Final = 1_000_000.0
"""The largest price per million tokens (one unit a token): costs stay far inside the integers
the limit store counts in."""


class PriceConfig(Section):
    """``pricing.<model>``: what one model's tokens cost, per million, in ``pricing_currency``
    (``<name>`` is a model name as clients send it, or ``"*"`` for every model not listed)."""

    input_per_million: float = Field(ge=0, le=MAX_PRICE, allow_inf_nan=False)
    """Price of a million prompt tokens."""
    cached_input_per_million: float | None = Field(
        default=None, ge=0, le=MAX_PRICE, allow_inf_nan=False
    )
    """Price of a million prompt tokens the backend read from its prefix cache (vLLM's
    `prompt_tokens_details.cached_tokens`); unset means `input_per_million`."""
    output_per_million: float = Field(ge=0, le=MAX_PRICE, allow_inf_nan=False)
    """Price of a million completion tokens."""


class UsageHookConfig(Section):
    """``usage_hook``: webhook delivery of usage records."""

    enabled: bool = False
    """Send usage records to a webhook."""
    url: str = ""
    """Receiver of the usage records."""
    timeout: Duration = 3.0
    """Longest wait for one delivery."""
    retry: int = Field(default=3, ge=0)
    """Delivery attempts after a failed one; undelivered records wait in the local outbox."""
    secret: str = ""
    """Key of the HMAC signature sent with each delivery; empty sends none."""
    batch_size: int = Field(default=100, ge=1)
    """Most records in one delivery."""
    batch_interval: Duration = 1.0
    """Longest time a record waits for its batch to fill."""
    format: Literal["batch", "seed"] = "batch"
    """`batch` posts a JSON array of records; `seed` posts one record at a time, as the Go version
    did.
    """
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra headers sent with each delivery."""

    @field_validator("headers")
    @classmethod
    def _sendable_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        return sendable_headers(headers)

    max_attempts: int = Field(default=50, ge=1)
    """Deliveries tried for one record before it moves to the dead-letter table; `retry + 1` applies
    when larger.
    """
    backoff_initial: Duration = 1.0
    """Wait after the first failed delivery; it doubles (with jitter) after each further failure."""
    backoff_max: Duration = 60.0
    """Longest wait between two deliveries while the receiver keeps failing."""
    max_outbox_records: int = Field(default=1_000_000, ge=1)
    """Undelivered records above which an alarm is raised; new records are still kept."""

    @model_validator(mode="after")
    def _url_when_enabled(self) -> UsageHookConfig:
        if self.enabled and not self.url:
            raise ValueError("usage_hook.enabled needs a url")
        return self


class UsageConfig(Section):
    """``usage``: the store of usage records, the webhook outbox and the journal of requests in
    flight: a local SQLite file, or PostgreSQL shared by replicas."""

    enabled: bool = True
    """Keep a usage record of every request (local store, live tail, webhook); when false only
    metrics and limits count tokens.
    """
    database: str = "llmproxy-usage.db"
    """Where usage records, undelivered webhook records and the journal live: a SQLite file
    (relative to the config file's directory), or a `postgresql://user@host:5432/db` URL that
    several gateways share — records are stored once by id, `llmproxy usage` answers for the
    whole fleet from any machine, and the webhook outbox is delivered by whichever gateway claims
    a batch first.
    """
    acknowledge: Literal["immediate", "durable"] = "immediate"
    """`immediate`: a response ends as soon as the backend's does, and its record is written
    within ~20 ms after (a `kill -9` in that window loses it). `durable`: the end of each response
    (a stream's `data: [DONE]`, a whole non-streamed body) waits until its record is committed
    to this file, a few ms, so no answered request goes unrecorded.
    """
    synchronous: Literal["normal", "full"] = "normal"
    """SQLite: `normal` survives a killed gateway process; `full` also survives a power loss, at
    the cost of an fsync per write batch. (PostgreSQL commits follow the server's own settings.)
    """
    journal: bool = True
    """Journal every model request while it runs (before its first byte, tokens checkpointed
    every 250 ms), so a gateway killed mid-stream bills what it served as
    `status: "interrupted"` records at its next start. With a SQLite file and `synchronous:
    normal` each process journals into a memory-mapped file beside it (`<database>.inflight/`):
    ~2 % CPU per streamed request of 40 to 200 tokens, ~5 % for 16. With PostgreSQL or
    `synchronous: full` rows are committed to the database first (~3-10 % CPU, and up to a
    commit's time before the first byte).
    """
    queue_size: int = Field(default=10_000, ge=1)
    """Records waiting in memory to be written; beyond it records are counted as overflow."""
    keep_records: int = Field(default=100_000, ge=0)
    """Recent usage records kept for `llmproxy usage`; 0 keeps none."""
    subscriber_queue: int = Field(default=1000, ge=1)
    """Records buffered for each live subscriber; a slower subscriber misses records."""

    @field_validator("database")
    @classmethod
    def _database(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("usage.database needs a SQLite path or a postgresql:// URL")
        if is_postgres_url(value):
            postgres_dsn(value)  # a malformed URL fails here, its password not shown
        return value


class RecordConfig(Section):
    """``record``: a sample of the traffic written to a JSON Lines file for ``llmproxy replay``."""

    enabled: bool = False
    """Append sampled requests (arrival time, model, body or its shape, outcome) to `path`; a
    reload starts, stops or redirects the recording without a restart.
    """
    path: str = "llmproxy-record.jsonl"
    """Recording file (relative to the config file's directory); with `server.workers` above 1
    each worker writes its own, `.w<N>` before the extension.
    """
    sample_rate: float = Field(default=1.0, gt=0.0, le=1.0)
    """Share of requests recorded, decided at random when each request arrives (1 records all)."""
    bodies: bool = True
    """Record each request body as the client sent it; false keeps only its shape (message roles
    and lengths, prompt length, max_tokens), enough to replay the load without the text.
    """
    redact: bool = False
    """Replace the text of recorded bodies (message contents, text parts, prompts, embedding
    inputs, tool-call arguments) by as many `x` characters, so a replay keeps the prompt sizes.
    """
    max_bytes: Size = Field(default=100 * 1024 * 1024, ge=1)
    """Size at which the file is rotated: `path` becomes `path.1`, `path.1` becomes `path.2`..."""
    keep_files: int = Field(default=5, ge=0)
    """Rotated files kept besides the current one; older ones are deleted."""
    queue_size: int = Field(default=10_000, ge=1)
    """Lines waiting in memory to be written; beyond it lines are dropped and counted, a request
    never waits for the disk.
    """


class MetricsConfig(Section):
    """``metrics``: the Prometheus endpoint."""

    enabled: bool = True
    """Serve Prometheus metrics."""
    path: str = "/metrics"
    """Path of the metrics endpoint."""


class TracingConfig(Section):
    """``tracing``: an OpenTelemetry trace of each request, exported over OTLP/HTTP (protobuf)
    to `<endpoint>/v1/traces` (the gateway writes OTLP itself: no extra to install). See
    docs/observability.md for the spans, their attributes and how to follow one request.
    """

    enabled: bool = Field(default=False, json_schema_extra=RESTART_ONLY)
    """Trace requests. Off costs nothing per request (an `is None` check per phase)."""
    endpoint: str = Field(default="http://127.0.0.1:4318", json_schema_extra=RESTART_ONLY)
    """The OTLP/HTTP collector's base URL; spans are sent to `<endpoint>/v1/traces` (gRPC is
    not supported: point it at the collector's HTTP receiver, port 4318)."""
    headers: dict[str, str] = Field(default_factory=dict, json_schema_extra=RESTART_ONLY)
    """Headers sent with each export (a collector's `Authorization`); use `${ENV}`."""
    service_name: str = Field(default="llmproxy", min_length=1, json_schema_extra=RESTART_ONLY)
    """`service.name` of the gateway's spans."""
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    """Share of new traces kept (by trace id, as OpenTelemetry's `TraceIdRatioBased`); a
    trusted client's `traceparent` decides for its own trace (parent-based)."""
    sample_errors: bool = True
    """Also export a request that was not sampled when it ends in a 5xx or a failed attempt
    (its spans are built at its end from timestamps every traced request keeps)."""
    client_context: Literal["trusted_proxies", "always", "never"] = "trusted_proxies"
    """Whose `traceparent`/`tracestate` the gateway continues: `trusted_proxies` (only a peer
    in `server.trusted_proxies`), `always`, or `never`. An untrusted one starts a new trace;
    the backend always gets the gateway's own `traceparent`, never the client's."""
    max_queue_size: int = Field(default=4096, ge=1, json_schema_extra=RESTART_ONLY)
    """Spans waiting for export; beyond it spans are dropped and counted
    (`llmproxy_trace_spans_dropped_total`), a request never waits for the collector."""
    batch_delay: Duration = Field(default=1.0, gt=0, json_schema_extra=RESTART_ONLY)
    """Longest a finished span waits before its batch is exported."""
    export_timeout: Duration = Field(default=5.0, gt=0, json_schema_extra=RESTART_ONLY)
    """Longest one export (with its retries) may take; a batch not delivered by then is
    dropped and counted."""

    @field_validator("endpoint")
    @classmethod
    def _http_endpoint(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL, e.g. http://collector:4318")
        return value.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _sendable(cls, value: dict[str, str]) -> dict[str, str]:
        return sendable_headers(value)


class LoggingConfig(Section):
    """``logging``: level, format and the access log."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level that is logged."""
    format: Literal["text", "json"] = Field(default="text", json_schema_extra=RESTART_ONLY)
    """`text` for people, `json` for log collectors."""
    access_log: bool = Field(default=False, json_schema_extra=RESTART_ONLY)
    """Log one line per request."""


class AdminConfig(Section):
    """``admin``: the local admin socket the CLI talks to."""

    enabled: bool = True
    """Open the local admin socket the CLI talks to."""
    socket: str = ""
    """Unix socket path; empty means `$XDG_RUNTIME_DIR/llmproxy/admin.sock`, else
    `./run/admin.sock`.
    """
    listen: str = ""
    """Also serve the admin API over TCP on this address (e.g. `127.0.0.1:9090`), for tools on
    other machines; empty keeps it on the local socket only. Needs `token`.
    """
    token: str = ""
    """Bearer token the TCP admin listener requires (`Authorization: Bearer <token>`), at least
    16 characters; keep it out of the file with `${ENV}`.
    """

    @model_validator(mode="after")
    def _token_for_listen(self) -> AdminConfig:
        # The TCP listener is reachable by anyone who can route to it: never without a secret.
        if self.listen and len(self.token) < 16:
            raise PathValueError(
                "a TCP admin listener needs an admin.token of at least 16 characters", ("listen",)
            )
        return self


class Config(Section):
    """The whole file. ``listen`` is the seed's top-level listen address."""

    listen: str = Field(default=":8000", json_schema_extra=RESTART_ONLY)
    """Address to listen on, as in the seed config; `server.listen` wins when set."""
    server: ServerConfig = ServerConfig()
    """The client-facing listener."""
    backends: tuple[BackendConfig, ...] = Field(min_length=1)
    """Inference servers; at least one."""
    routing: RoutingConfig = RoutingConfig()
    """How a backend is chosen."""
    health_check: HealthCheckConfig = HealthCheckConfig()
    """Health of the backends."""
    auth: AuthConfig = AuthConfig()
    """API keys and who may use the gateway."""
    rate_limit: RateLimitConfig = RateLimitConfig()
    """Request and token rate limits."""
    pricing: dict[str, PriceConfig] = Field(default_factory=dict)
    """Prices per model name as clients send it (`"*"`: every model not listed), so each usage
    record carries its `cost`; a model without a price costs 0."""
    pricing_currency: str = Field(default="USD", pattern=r"^[A-Za-z]{1,12}$")
    """The currency of `pricing` and of every budget (a label: nothing is converted)."""
    usage_hook: UsageHookConfig = Field(default=UsageHookConfig(), json_schema_extra=RESTART_ONLY)
    """Delivery of usage records to a webhook."""
    usage: UsageConfig = Field(default=UsageConfig(), json_schema_extra=RESTART_ONLY)
    """Local storage of usage records."""
    record: RecordConfig = RecordConfig()
    """Traffic recording for replay."""
    api_keys: tuple[StaticKey, ...] = ()
    """Keys served by a `file` provider."""
    metrics: MetricsConfig = Field(default=MetricsConfig(), json_schema_extra=RESTART_ONLY)
    """Prometheus metrics."""
    tracing: TracingConfig = TracingConfig()
    """OpenTelemetry traces of requests."""
    logging: LoggingConfig = LoggingConfig()
    """Logging."""
    admin: AdminConfig = Field(default=AdminConfig(), json_schema_extra=RESTART_ONLY)
    """The local admin socket."""

    @property
    def listen_address(self) -> str:
        """``server.listen`` wins over the seed's top-level ``listen``."""
        return self.server.listen or self.listen

    @model_validator(mode="after")
    def _usage_for_hook(self) -> Config:
        if self.usage_hook.enabled and not self.usage.enabled:
            raise PathValueError(
                "usage_hook needs usage records: set usage.enabled true", ("usage", "enabled")
            )
        return self

    @model_validator(mode="after")
    def _unique_backend_names(self) -> Config:
        # PathValueError (a ValueError) carries the offending key, so the error names its line.
        seen: set[str] = set()
        for index, backend in enumerate(self.backends):
            if backend.display_name in seen:
                key = "name" if backend.name else "url"
                raise PathValueError(
                    f"two backends are named {backend.display_name!r}", ("backends", index, key)
                )
            seen.add(backend.display_name)
        known = seen | {b.url for b in self.backends}
        for index, chain in enumerate(self.routing.fallback):
            refs: list[tuple[tuple[str | int, ...], str]] = [(("primary",), chain.primary)]
            refs += [(("fallback", n), ref) for n, ref in enumerate(chain.fallback)]
            for where, ref in refs:
                if ref.rstrip("/") not in known:
                    raise PathValueError(
                        f"{ref!r} is not the name or url of a backend",
                        ("routing", "fallback", index, *where),
                    )
        return self
