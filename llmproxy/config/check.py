"""``llmproxy config check FILE``: validate a file and say what it configures, without I/O beyond
reading it.

The CLI prints the returned lines as they are; on success they summarise what the gateway would do
(listen address, backends, strategy, which features are on), so an operator can confirm that the
file means what they think before a reload.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from llmproxy.config.errors import ConfigError
from llmproxy.config.loader import load_config, parse_config
from llmproxy.config.model import Config, RateSpec
from llmproxy.config.reference import format_duration


def check_config(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    deeper: Callable[[Config], str | None] | None = None,
    text: str | None = None,
) -> tuple[list[str], bool]:
    """Load ``path``; return ``(lines to print, ok)``.

    On success the lines are ``"FILE: OK"`` followed by :func:`summarize`; on failure they are the
    ``file:line: key.path: message`` issues, one per line. ``deeper`` runs on a valid config for
    what only the layers above the model can find (the daemon compiles Lua scripts there) and
    returns a problem or None. ``text``, when given, is the config itself (``config check -``
    reads stdin) and ``path`` only names it.
    """
    try:
        if text is None:
            config = load_config(path, environ)
        else:
            config = parse_config(text, os.fspath(path), environ)
    except ConfigError as error:
        return [str(issue) for issue in error.issues], False
    problem = deeper(config) if deeper is not None else None
    if problem is not None:
        return [f"{os.fspath(path)}: {problem}"], False
    return [f"{os.fspath(path)}: OK", *summarize(config)], True


def summarize(config: Config) -> list[str]:
    """What the config sets up, in a few lines for people."""
    server = config.server
    scheme = "https" if server.tls.enabled else "http"
    workers = f", {server.workers} workers" if server.workers > 1 else ""
    lines = [f"listen: {config.listen_address} ({scheme}{workers})"]
    trusted = server.trusted_proxies
    lines.append(
        "client address: from X-Forwarded-For / Forwarded when the peer is in " + ", ".join(trusted)
        if trusted
        else "client address: the connection's peer (no trusted proxies)"
    )
    lines.append(f"backends: {len(config.backends)}")
    for backend in config.backends:
        models = ", ".join(backend.models) if backend.models else "any model"
        label = f"{backend.name} ({backend.url})" if backend.name else backend.url
        lines.append(f"  {label}  weight {backend.weight}  models: {models}")
    routing = config.routing
    retry = routing.retry
    retries = f"up to {retry.max_retries} retries" if retry.enabled else "no retries"
    fallbacks = f", {len(routing.fallback)} fallback chain(s)" if routing.fallback else ""
    lines.append(f"routing: {routing.load_balance_strategy.value}, {retries}{fallbacks}")
    lines += _features(config)
    return lines


def _features(config: Config) -> list[str]:
    health = config.health_check
    hook = config.usage_hook
    features = [
        (
            "health checks",
            health.enabled,
            f"GET {health.path} every {format_duration(health.interval)}",
        ),
        ("auth", config.auth.enabled, _auth_detail(config)),
        ("rate limits", config.rate_limit.enabled, _limits_detail(config)),
        ("usage hook", hook.enabled, hook.url),
        ("metrics", config.metrics.enabled, config.metrics.path),
        ("admin socket", config.admin.enabled, config.admin.socket or "default path"),
    ]
    lines = [f"{name}: on ({detail})" if on else f"{name}: off" for name, on, detail in features]
    enabled = [name for name, on, _ in features if on]
    lines.append("enabled: " + (", ".join(enabled) if enabled else "nothing optional"))
    return lines


def _auth_detail(config: Config) -> str:
    auth = config.auth
    providers = [f"{p.name} [{p.type}]" for p in auth.pipeline if p.enabled]
    if providers:
        return f"{auth.mode}: " + ", ".join(providers)
    if auth.storage:
        return f"{auth.storage} key storage"
    return "no providers: every request will be refused"


def _limits_detail(config: Config) -> str:
    limits = config.rate_limit
    parts: list[str] = [limits.storage]
    if limits.global_.enabled:
        parts.append(f"global {_rate(limits.global_)}")
    if limits.per_key.enabled:
        per_key = f"per key {_rate(limits.per_key)}"
        if limits.per_key.max_concurrent:
            per_key += f", {limits.per_key.max_concurrent} concurrent"
        parts.append(per_key)
    return "; ".join(parts)


def _rate(spec: RateSpec) -> str:
    if spec.requests_per_second is not None:
        rate = f"{spec.requests_per_second:g}/s"
    elif spec.requests_per_minute is not None:
        rate = f"{spec.requests_per_minute:g}/min"
    else:
        rate = "no rate"
    return f"{rate} burst {spec.burst_size}" if spec.burst_size else rate
