"""The HTTP side of a replay: one pooled aiohttp session, a pre-flight call, one request measured.

One :class:`aiohttp.ClientSession` serves the whole run with a pool as large as the load needs
(the concurrency, or what a rate keeps in flight), so no request waits for a connection that the
run itself withholds. The session carries the fixed headers (the key, ``--header``), so a send
merges nothing. Every request ends as a :class:`~llmproxy.replay.sample.Sample`; nothing here
raises for a failed request — a failure is a figure of the run.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import msgspec

from llmproxy.replay.outgoing import Outgoing
from llmproxy.replay.sample import (
    BROKEN_STREAM,
    CONNECT,
    DISCONNECTED,
    TIMEOUT,
    Sample,
    http_error,
)
from llmproxy.replay.sse import StreamScan, body_output_tokens

PREFLIGHT_TIMEOUT: Final = 5.0
"""Seconds the pre-flight call may take before the target is declared unreachable."""

CONNECT_TIMEOUT: Final = 10.0
"""Seconds to open one connection during the run."""

FD_HEADROOM: Final = 64
"""File descriptors kept free of the pool for everything else (files, the loop, stdio)."""

MODELS_PATH: Final = "/v1/models"


class TargetUnreachable(Exception):
    """Nothing answers at the target URL (refused, unresolvable, timed out)."""


class TargetRefused(Exception):
    """The target answers but refuses the key (401 or 403 on the pre-flight call)."""


def normalize_target(url: str) -> str:
    """``url`` as the base that recorded paths (``/v1/...``) are appended to.

    A trailing ``/`` or ``/v1`` is dropped, so the base URL of an OpenAI client works as well.
    Raises ``ValueError`` for anything but an ``http(s)://host[:port][/prefix]`` URL.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"the target URL takes no query or fragment, got {url!r}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError(f"the target URL has an invalid port: {url!r}") from None
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return f"{parts.scheme}://{parts.netloc}{path}"


def request_headers(key: str | None, extra: Mapping[str, str]) -> dict[str, str]:
    """The headers every request carries: JSON content, the key as a bearer token, ``extra``."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    headers.update(extra)
    return headers


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; return the limit in force.

    Many systems start processes at 1024 descriptors, which an open-loop run at a few hundred
    requests per second with slow answers can exceed; the pool must not fail for that.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def pool_size(wanted: int, fd_limit: int) -> int:
    """Connections for a pool asked to hold ``wanted``, within the descriptors available."""
    return max(1, min(wanted, fd_limit - FD_HEADROOM))


def open_session(
    headers: Mapping[str, str], *, connections: int, timeout: float
) -> aiohttp.ClientSession:
    """The run's session: ``connections`` keep-alive connections at most, ``timeout`` per request.

    Call inside the running event loop; close it with ``await session.close()``.
    """
    connector = aiohttp.TCPConnector(
        limit=connections, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=30
    )
    return aiohttp.ClientSession(
        connector=connector,
        headers=dict(headers),
        timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, CONNECT_TIMEOUT)),
        raise_for_status=False,
    )


@dataclass(frozen=True, slots=True)
class Preflight:
    """What ``GET /v1/models`` said: its status and the model ids it listed."""

    status: int
    models: tuple[str, ...] = ()


class _ModelList(msgspec.Struct):
    data: list[dict[str, Any]]


async def preflight(session: aiohttp.ClientSession, base: str) -> Preflight:
    """``GET /v1/models``: is anything there, does it take the key, which models does it serve?

    Raises :class:`TargetUnreachable` when nothing answers within :data:`PREFLIGHT_TIMEOUT`, and
    :class:`TargetRefused` on 401/403. Any other answer (even a 404 from a server without the
    endpoint) means the target is alive.
    """
    url = base + MODELS_PATH
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=PREFLIGHT_TIMEOUT)
        ) as response:
            body = await response.read()
            status = response.status
    except TimeoutError:
        raise TargetUnreachable(f"{url}: no answer within {PREFLIGHT_TIMEOUT:g} s") from None
    except aiohttp.ClientError as exc:
        raise TargetUnreachable(f"{url}: {exc}") from None
    if status in (401, 403):
        raise TargetRefused(
            f"{url} answered {status}: the target refused the key (pass --key or set LLMPROXY_KEY)"
        )
    models: tuple[str, ...] = ()
    if status == 200:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            listed = msgspec.json.decode(body, type=_ModelList).data
            models = tuple(str(item["id"]) for item in listed if item.get("id"))
    return Preflight(status, models)


async def send(
    session: aiohttp.ClientSession, base: str, request: Outgoing, scheduled: float
) -> Sample:
    """Send ``request`` (due at ``scheduled``) and measure its answer; never raises for a
    failed request (but does for cancellation)."""
    clock = time.perf_counter
    sent = clock()
    sample = Sample(request.endpoint, request.model, scheduled, sent, sent)
    try:
        async with session.request(
            request.method, base + request.endpoint, data=request.body
        ) as response:
            sample.status = status = response.status
            if status >= 400:
                body = await response.read()
                sample.error = http_error(status)
                sample.detail = body[:200].decode(errors="replace")
            elif request.stream and response.content_type == "text/event-stream":
                scan = StreamScan(request.endpoint)
                async for chunk in response.content.iter_any():
                    scan.feed(chunk, clock())
                sample.first_token = scan.first_content
                sample.mean_gap = scan.mean_gap
                sample.output_tokens = scan.output_tokens
                if not scan.complete:
                    sample.error = BROKEN_STREAM
                    sample.detail = scan.error or "the stream ended before its end event"
            else:
                parts: list[bytes] = []
                async for chunk in response.content.iter_any():
                    if not parts:
                        sample.first_token = clock()
                    parts.append(chunk)
                sample.output_tokens = body_output_tokens(b"".join(parts)) or 0
    except TimeoutError as exc:
        sample.error, sample.detail = TIMEOUT, str(exc) or "timed out"
    except aiohttp.ClientConnectorError as exc:
        sample.error, sample.detail = CONNECT, str(exc)
    except aiohttp.ClientError as exc:
        sample.error = DISCONNECTED if sample.status == 0 else BROKEN_STREAM
        sample.detail = str(exc) or type(exc).__name__
    sample.end = clock()
    if sample.error is None and sample.first_token is None:
        sample.first_token = sample.end  # an empty body: the answer is all there is
    return sample
