"""The ``redis`` provider: a key's data in a Redis hash or a JSON string.

``key_pattern`` names the Redis key of one API key, with exactly one placeholder:
``{api_key}`` (the secret, as the seed stored it) or ``{api_key_sha256}`` (its hex digest, so the
store never holds a usable key)::

    redis:
      addr: "redis:6379"
      key_pattern: "llmproxy:key:{api_key_sha256}"

The value may be a hash (``HSET llmproxy:key:<digest> status active balance 12``: every value
arrives as a string, as Redis keeps it) or a string holding a JSON object
(``SET ... '{"status": "active", "balance": 12}'``: values keep their JSON types). One round
trip answers both: a small script run with ``EVALSHA`` checks the type and returns the hash or the
string (the client loads the script again after a ``SCRIPT FLUSH`` or a failover). A missing key
is an unknown key; anything else that goes wrong — server down, timeout, a list where a hash was
expected, a string that is not a JSON object — is a :class:`ProviderError`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec

from llmproxy.apikey import PresentedKey
from llmproxy.auth.providers._redact import scrub, without_secret
from llmproxy.auth.providers.base import KeyData, ProviderError
from llmproxy.config.model import RedisConnection
from llmproxy.connections import ConnectionPools, PoolError

if TYPE_CHECKING:  # redis is an extra; the client comes from the pools
    from redis.commands.core import AsyncScript

_PLACEHOLDERS = ("{api_key}", "{api_key_sha256}")

# TYPE, then HGETALL or GET, atomically and in one round trip. A nested table comes back as a
# nested array: {"hash", {field, value, ...}}, {"string", value} or {"none"} / {<other type>}.
_READ_KEY_LUA = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'hash' then
  return {kind, redis.call('HGETALL', KEYS[1])}
elseif kind == 'string' then
  return {kind, redis.call('GET', KEYS[1])}
end
return {kind}
"""


class RedisProvider:
    """Looks keys up in Redis; ``pools`` supplies the (shared) client."""

    def __init__(self, name: str, conn: RedisConnection, pools: ConnectionPools) -> None:
        found = [p for p in _PLACEHOLDERS if p in conn.key_pattern]
        count = sum(conn.key_pattern.count(p) for p in _PLACEHOLDERS)
        if count != 1 or len(found) != 1:
            raise ValueError(
                f"redis provider {name!r}: key_pattern {conn.key_pattern!r} must contain exactly "
                "one placeholder, {api_key} or {api_key_sha256}"
            )
        self.name = name
        self._conn = conn
        self._pools = pools
        self._placeholder = found[0]
        self._script: AsyncScript | None = None
        self._redis_error: type[Exception] = ProviderError

    async def open(self) -> None:
        """Get the shared client; no connection is made until the first lookup."""
        try:
            client = await self._pools.redis(self._conn)
        except PoolError as exc:
            raise ProviderError(f"redis {self.name!r}: {exc}") from None
        from redis.exceptions import RedisError  # installed: the client above exists

        self._redis_error = RedisError
        self._script = client.register_script(_READ_KEY_LUA)

    def redis_key(self, key: PresentedKey) -> str:
        """The Redis key holding ``key``'s data."""
        value = key.secret if self._placeholder == "{api_key}" else key.sha256
        return self._conn.key_pattern.replace(self._placeholder, value)

    async def lookup(self, key: PresentedKey) -> KeyData | None:
        """The key's data, ``None`` when the Redis key does not exist."""
        if self._script is None or self._pools.closed:
            raise ProviderError(
                f"redis {self.name!r}: provider is not open (or its runtime has shut down)"
            )
        try:
            async with asyncio.timeout(self._conn.timeout):
                reply = await self._script(keys=[self.redis_key(key)])
        except TimeoutError:
            raise self._error(f"timeout after {self._conn.timeout:g}s") from None
        except self._redis_error as exc:
            # Error text may quote the command's arguments, and the Redis key can hold the secret.
            raise self._error(scrub(str(exc), key.secret) or type(exc).__name__) from None
        except UnicodeDecodeError:
            raise self._error("the stored value is not UTF-8 text") from None
        data = self._data(reply)
        return None if data is None else without_secret(data, key)

    async def close(self) -> None:
        """Forget the client; the shared pool is closed by its :class:`ConnectionPools`."""
        self._script = None

    def _data(self, reply: Any) -> KeyData | None:
        kind = reply[0] if isinstance(reply, list) and reply else None
        if kind == "none":
            return None
        if kind == "hash" and isinstance(reply[1], list):
            fields = reply[1]
            return dict(zip(fields[::2], fields[1::2], strict=True))
        if kind == "string":
            try:
                data = msgspec.json.decode(reply[1])
            except msgspec.DecodeError:
                raise self._error("the stored string is not valid JSON") from None
            if not isinstance(data, dict):
                raise self._error(
                    f"the stored JSON is a {type(data).__name__}, expected an object"
                ) from None
            return data
        raise self._error(f"the key holds a Redis {kind}, expected a hash or a JSON string")

    def _error(self, cause: str) -> ProviderError:
        return ProviderError(f"redis {self.name!r}: {cause}")
