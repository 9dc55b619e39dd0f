"""The typed, frozen configuration model.

Every key an operator may write lives here, with its type and default, so that the loader can reject
typos with the exact path and a suggestion, ``config.yaml.example`` can document it, and the rest of
the code reads attributes instead of dict lookups. Sections whose behaviour lands later (auth
providers, limits, usage delivery) are parsed and validated now so that an operator's seed config is
accepted as a whole. Nothing here performs I/O.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from llmproxy.config.units import parse_duration, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, written as ``10s``, ``500ms``, ``1m`` or a plain number of seconds."""

Size = Annotated[int, BeforeValidator(parse_size)]
"""Bytes, written as ``10MiB``, ``512KB`` or a plain number of bytes."""


class Section(BaseModel):
    """Base of every config section: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class TLSConfig(Section):
    """``server.tls``: serve HTTPS with a certificate and key in PEM files."""

    enabled: bool = False
    cert_file: str = ""
    key_file: str = ""

    @model_validator(mode="after")
    def _files_when_enabled(self) -> TLSConfig:
        if self.enabled and not (self.cert_file and self.key_file):
            raise ValueError("tls.enabled needs both cert_file and key_file")
        return self


class CORSConfig(Section):
    """``server.cors``: browser access (preflight answered by the gateway itself)."""

    enabled: bool = False
    allow_origins: tuple[str, ...] = ("*",)
    allow_methods: tuple[str, ...] = ("GET", "POST", "OPTIONS")
    allow_headers: tuple[str, ...] = ("Authorization", "Content-Type", "X-API-Key", "X-Request-Id")
    expose_headers: tuple[str, ...] = ("X-Request-Id",)
    allow_credentials: bool = False
    max_age: Duration = 600.0


class ServerConfig(Section):
    """``server``: the client-facing listener."""

    listen: str | None = None
    read_timeout: Duration = 60.0
    write_timeout: Duration = 0.0
    idle_timeout: Duration = 75.0
    max_header_size: Size = 64 * 1024
    max_body_size: Size = 10 * 1024 * 1024
    shutdown_timeout: Duration = 30.0
    workers: int = Field(default=1, ge=1, le=256)
    tls: TLSConfig = TLSConfig()
    cors: CORSConfig = CORSConfig()


class BackendConfig(Section):
    """``backends[]``: one inference server."""

    url: str
    name: str = ""
    weight: int = Field(default=1, ge=0, le=1000)
    models: tuple[str, ...] = ()
    api_key: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    connect_timeout: Duration = 5.0
    first_byte_timeout: Duration = 300.0
    idle_timeout: Duration = 120.0
    max_connections: int = Field(default=0, ge=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"scheme must be http or https, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"url has no host: {url!r}")
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
    max_retries: int = Field(default=2, ge=0, le=20)
    initial_wait: Duration = 0.05
    max_wait: Duration = 2.0
    multiplier: float = Field(default=2.0, ge=1.0)
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)
    retry_on_status: tuple[int, ...] = (429, 502, 503, 504)


class FallbackConfig(Section):
    """``routing.fallback[]``: where to go when ``primary`` (url or name) is down."""

    primary: str
    fallback: tuple[str, ...]


class RoutingConfig(Section):
    """``routing``: how a backend is chosen."""

    load_balance_strategy: Literal["round_robin", "least_connections", "latency_based"] = (
        "round_robin"
    )
    retry: RetryConfig = RetryConfig()
    fallback: tuple[FallbackConfig, ...] = ()


class PassiveHealthConfig(Section):
    """``health_check.passive``: eject a backend after consecutive request failures."""

    enabled: bool = True
    failure_threshold: int = Field(default=5, ge=1)
    ejection_time: Duration = 30.0


class HealthCheckConfig(Section):
    """``health_check``: active probes of every backend."""

    enabled: bool = True
    interval: Duration = 10.0
    path: str = "/health"
    timeout: Duration = 2.0
    unhealthy_threshold: int = Field(default=3, ge=1)
    healthy_threshold: int = Field(default=2, ge=1)
    passive: PassiveHealthConfig = PassiveHealthConfig()


class RedisConnection(Section):
    """Connection to a Redis server (providers and limit storage)."""

    addr: str = "localhost:6379"
    password: str = ""
    username: str = ""
    db: int = Field(default=0, ge=0)
    key_pattern: str = "llmproxy:key:{api_key}"
    timeout: Duration = 0.5
    tls: bool = False


class DatabaseConnection(Section):
    """``database`` provider: a SQL table or a parameterised query."""

    driver: Literal["postgres", "postgresql", "mysql", "mariadb", "sqlite", "sqlite3"]
    dsn: str
    table: str = "api_keys"
    key_column: str = "key"
    fields: tuple[str, ...] = ()
    query: str = ""
    pool_size: int = Field(default=10, ge=1)
    timeout: Duration = 2.0


class WebhookConnection(Section):
    """``webhook`` provider: POST the key (or its hash) and take the JSON reply as data."""

    url: str
    method: Literal["POST", "GET"] = "POST"
    timeout: Duration = 3.0
    headers: dict[str, str] = Field(default_factory=dict)
    send_key: Literal["hash", "plain"] = "hash"


class StaticKey(Section):
    """One key inline in a ``static`` provider, or in top-level ``api_keys``."""

    key: str
    name: str = ""
    user_id: str = ""
    status: str | int = "active"
    total_quota: int | None = None
    used_quota: int = 0
    expires_at: str | int | None = None
    models: tuple[str, ...] = ()
    allowed_ips: tuple[str, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    priority: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ProviderConfig(Section):
    """``auth.pipeline[]``: one key source, optionally followed by a Lua decision."""

    name: str
    type: Literal["file", "static", "builtin", "redis", "database", "webhook"]
    enabled: bool = True
    lua_script: str = ""
    lua_file: str = ""
    redis: RedisConnection | None = None
    database: DatabaseConnection | None = None
    webhook: WebhookConnection | None = None
    keys: tuple[StaticKey, ...] = ()
    path: str = ""

    @model_validator(mode="after")
    def _connection_for_type(self) -> ProviderConfig:
        needed = {"redis": self.redis, "database": self.database, "webhook": self.webhook}
        if self.type in needed and needed[self.type] is None:
            raise ValueError(f"provider type {self.type!r} needs a {self.type!r} section")
        if self.lua_script and self.lua_file:
            raise ValueError("give lua_script or lua_file, not both")
        return self


class AuthCacheConfig(Section):
    """``auth.cache``: bounded TTL cache of auth decisions."""

    enabled: bool = True
    ttl: Duration = 10.0
    negative_ttl: Duration = 2.0
    max_entries: int = Field(default=100_000, ge=1)


class AuthConfig(Section):
    """``auth``: key extraction and the provider pipeline."""

    enabled: bool = False
    header_names: tuple[str, ...] = ("Authorization", "X-API-Key")
    mode: Literal["first_match", "all"] = "first_match"
    storage: Literal["file", "builtin", ""] = ""
    skip_paths: tuple[str, ...] = ("/health", "/ready", "/metrics")
    pipeline: tuple[ProviderConfig, ...] = ()
    cache: AuthCacheConfig = AuthCacheConfig()
    builtin_db: str = "llmproxy-keys.db"


class RateSpec(Section):
    """A token bucket: ``requests_per_second`` or ``requests_per_minute`` with ``burst_size``."""

    enabled: bool = False
    requests_per_second: float | None = Field(default=None, gt=0)
    requests_per_minute: float | None = Field(default=None, gt=0)
    burst_size: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_rate(self) -> RateSpec:
        if self.requests_per_second is not None and self.requests_per_minute is not None:
            raise ValueError("give requests_per_second or requests_per_minute, not both")
        return self


class PerKeyRateSpec(RateSpec):
    """``rate_limit.per_key``: the bucket plus concurrency and token budgets per key."""

    max_concurrent: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)


class RateLimitConfig(Section):
    """``rate_limit``: global and per-key limits, in memory or shared through Redis."""

    enabled: bool = False
    storage: Literal["memory", "redis"] = "memory"
    redis: RedisConnection | None = None
    redis_failure: Literal["open", "closed", "local"] = "local"
    global_: RateSpec = Field(default=RateSpec(), alias="global")
    per_key: PerKeyRateSpec = PerKeyRateSpec()
    default_max_tokens: int = Field(default=1024, ge=1)

    model_config = ConfigDict(populate_by_name=True)


class UsageHookConfig(Section):
    """``usage_hook``: webhook delivery of usage records."""

    enabled: bool = False
    url: str = ""
    timeout: Duration = 3.0
    retry: int = Field(default=3, ge=0)
    secret: str = ""
    batch_size: int = Field(default=100, ge=1)
    batch_interval: Duration = 1.0
    format: Literal["batch", "seed"] = "batch"
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _url_when_enabled(self) -> UsageHookConfig:
        if self.enabled and not self.url:
            raise ValueError("usage_hook.enabled needs a url")
        return self


class MetricsConfig(Section):
    """``metrics``: the Prometheus endpoint."""

    enabled: bool = True
    path: str = "/metrics"


class LoggingConfig(Section):
    """``logging``: level, format and the access log."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    access_log: bool = False


class AdminConfig(Section):
    """``admin``: the local admin socket the CLI talks to."""

    enabled: bool = True
    socket: str = ""


class Config(Section):
    """The whole file. ``listen`` is the seed's top-level listen address."""

    listen: str = ":8000"
    server: ServerConfig = ServerConfig()
    backends: tuple[BackendConfig, ...] = Field(min_length=1)
    routing: RoutingConfig = RoutingConfig()
    health_check: HealthCheckConfig = HealthCheckConfig()
    auth: AuthConfig = AuthConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    usage_hook: UsageHookConfig = UsageHookConfig()
    api_keys: tuple[StaticKey, ...] = ()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    admin: AdminConfig = AdminConfig()

    @property
    def listen_address(self) -> str:
        """``server.listen`` wins over the seed's top-level ``listen``."""
        return self.server.listen or self.listen

    @model_validator(mode="after")
    def _unique_backend_names(self) -> Config:
        seen: set[str] = set()
        for backend in self.backends:
            if backend.display_name in seen:
                raise ValueError(f"two backends are named {backend.display_name!r}")
            seen.add(backend.display_name)
        known = seen | {b.url for b in self.backends}
        for chain in self.routing.fallback:
            for ref in (chain.primary, *chain.fallback):
                if ref.rstrip("/") not in known:
                    raise ValueError(f"routing.fallback names {ref!r}, which is not a backend")
        return self
