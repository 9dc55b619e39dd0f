"""One pooled HTTP client per backend, with that backend's timeouts and headers prebuilt.

Proxied requests go through the relay's own pool (:mod:`llmproxy.gateway.upstream_http`: answers
relayed from parser callbacks, nothing scheduled per chunk); the aiohttp session serves the
gateway's own requests to the backend (``/v1/models``). aiohttp rather than httpx because its
pool costs a flat ~0.5 ms of CPU per request where httpx's grows with concurrency (see the
project's dependency measurements). Bodies pass through untouched: no automatic decompression, no
default ``Accept-Encoding``/``User-Agent``/``Content-Type`` added behind the client's back.
"""

from __future__ import annotations

import aiohttp

from llmproxy.config.model import BackendConfig
from llmproxy.gateway.upstream_http import UpstreamPool

_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class UpstreamClient:
    """The connection pool, timeouts and fixed headers for one backend.

    Create it inside the running event loop (:meth:`open`), share it by every request of one
    runtime snapshot, and :meth:`close` it when that snapshot retires.
    """

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.base_url = config.url
        self.timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None,
            sock_connect=config.connect_timeout or None,
            sock_read=config.first_byte_timeout or None,
        )
        self.first_byte_timeout: float | None = config.first_byte_timeout or None
        self.idle_timeout: float | None = config.idle_timeout or None
        self.hold_limit = config.max_response_size
        """Most bytes of a non-streamed answer held to read its usage (``max_response_size``)."""
        extra = {name.lower(): value for name, value in config.headers.items()}
        if config.api_key:
            extra["authorization"] = f"Bearer {config.api_key}"
        self.extra_headers: tuple[tuple[str, str], ...] = tuple(extra.items())
        self._session: aiohttp.ClientSession | None = None
        self._pool: UpstreamPool | None = None

    @property
    def pool(self) -> UpstreamPool:
        """The relay's connections (:mod:`llmproxy.gateway.upstream_http`); :meth:`open` must
        have run."""
        if self._pool is None:
            raise RuntimeError(f"upstream client for {self.config.display_name} is not open")
        return self._pool

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled session; :meth:`open` must have run."""
        if self._session is None:
            raise RuntimeError(f"upstream client for {self.config.display_name} is not open")
        return self._session

    def open(self) -> None:
        """Create the connection pool (needs the running loop)."""
        if self._session is not None:
            return
        self._pool = UpstreamPool(
            self.base_url,
            connect_timeout=self.config.connect_timeout or None,
            max_connections=self.config.max_connections,
        )
        connector = aiohttp.TCPConnector(
            limit=self.config.max_connections,
            limit_per_host=0,
            ttl_dns_cache=60,
            keepalive_timeout=30,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            timeout=self.timeout,
            raise_for_status=False,
        )

    async def close(self) -> None:
        """Close the pool; connections still in use are closed too."""
        if self._pool is not None:
            self._pool.close()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
