"""The ``webhook`` provider: ask an HTTP service about each key, take its JSON reply as the data.

With ``method: POST`` (the default) the service receives a JSON body; with ``GET``, the same
fields as query parameters::

    {"api_key_sha256": "9f86d0...", "api_key_prefix": "sk-llmp-AbCd", "timestamp": 1718000000}

``send_key: plain`` adds ``"api_key": "<the secret>"``, as the seed sent it; prefer ``hash``,
which never lets the secret leave the gateway (and with ``GET`` a plain key would sit in the
service's access logs). The configured ``headers`` go with every call, which is where a shared
token belongs.

The reply decides:

- ``200`` with a JSON object: that object is the key's data (at most 1 MiB);
- ``404``: the service does not know the key (``None``), the next provider may;
- anything else — another status (redirects are not followed), a body that is not a JSON object,
  a timeout, a refused connection — is a :class:`ProviderError`, never an allow.

Calls share the HTTP session of :class:`~llmproxy.connections.ConnectionPools` and are bounded,
answer included, by ``timeout``.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import aiohttp
import msgspec

from llmproxy import __version__
from llmproxy.apikey import PresentedKey
from llmproxy.auth.providers._redact import scrub, without_secret
from llmproxy.auth.providers.base import KeyData, ProviderError
from llmproxy.config.model import WebhookConnection
from llmproxy.connections import ConnectionPools, PoolError

MAX_REPLY_BYTES = 1024 * 1024
_USER_AGENT = f"llmproxy/{__version__}"


class WebhookProvider:
    """Looks keys up by calling ``conn.url``; ``pools`` supplies the shared HTTP session."""

    def __init__(self, name: str, conn: WebhookConnection, pools: ConnectionPools) -> None:
        parts = urlsplit(conn.url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise ValueError(
                f"webhook provider {name!r}: url must be an http:// or https:// URL with a host "
                f"and a valid port, got {_where(conn.url)!r}"
            )
        self.name = name
        self._conn = conn
        self._pools = pools
        self._where = _where(conn.url)
        self._headers = {"Accept": "application/json", "User-Agent": _USER_AGENT, **conn.headers}
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Get the shared HTTP session."""
        try:
            self._session = self._pools.http()
        except PoolError as exc:
            raise ProviderError(f"webhook {self.name!r}: {exc}") from None

    def payload(self, key: PresentedKey) -> dict[str, str | int]:
        """What the service is told: digest and prefix of ``key``, and the secret in plain mode."""
        fields: dict[str, str | int] = {"api_key_sha256": key.sha256, "api_key_prefix": key.prefix}
        if self._conn.send_key == "plain":
            fields["api_key"] = key.secret
        fields["timestamp"] = int(time.time())
        return fields

    async def lookup(self, key: PresentedKey) -> KeyData | None:
        """The service's JSON object for ``key``, ``None`` on 404."""
        session = self._session
        if session is None or session.closed or self._pools.closed:
            raise ProviderError(
                f"webhook {self.name!r}: provider is not open (or its runtime has shut down)"
            )
        fields = self.payload(key)
        try:
            async with asyncio.timeout(self._conn.timeout):
                if self._conn.method == "POST":
                    request = session.post(
                        self._conn.url,
                        data=msgspec.json.encode(fields),
                        headers={"Content-Type": "application/json", **self._headers},
                        allow_redirects=False,
                    )
                else:
                    request = session.get(
                        self._conn.url,
                        params={name: str(value) for name, value in fields.items()},
                        headers=self._headers,
                        allow_redirects=False,
                    )
                async with request as response:
                    status = response.status
                    # Reading a 404's body keeps its connection reusable: unknown keys are common.
                    body = await self._read_body(response) if status in (200, 404) else b""
        except TimeoutError:
            raise self._error(
                f"no answer from {self._where} within {self._conn.timeout:g}s", key
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            cause = str(exc) or type(exc).__name__
            raise self._error(f"request to {self._where} failed: {cause}", key) from None
        if status == 404:
            return None
        if status != 200:
            raise self._error(f"{self._where} answered HTTP {status}", key)
        try:
            data = msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise self._error(f"{self._where} answered with invalid JSON", key) from None
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise self._error(f"{self._where} answered a JSON {kind}, expected an object", key)
        return without_secret(data, key)

    async def close(self) -> None:
        """Forget the session; it is closed by its :class:`ConnectionPools`."""
        self._session = None

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > MAX_REPLY_BYTES:
                raise ProviderError(
                    f"webhook {self.name!r}: {self._where} answered more than "
                    f"{MAX_REPLY_BYTES} bytes"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _error(self, cause: str, key: PresentedKey) -> ProviderError:
        return ProviderError(f"webhook {self.name!r}: {scrub(cause, key.secret)}")


def _where(url: str) -> str:
    """``url`` without credentials or query, fit for errors and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
