"""``/keys``: the builtin key store as the admin API serves it (``llmproxy keys ...``).

The API works on the store of the running config's ``builtin`` provider (``auth.builtin_db``: the
SQLite file, or the PostgreSQL database replicas share). After each write it makes the
gateway see the change at once — :meth:`BuiltinProvider.reload_now` rebuilds the in-memory index
and :meth:`AuthPipeline.invalidate` drops any cached lookup — so a revoked key is refused on the
very next request rather than after the provider's next poll.

A key's secret is in exactly one answer, the ``POST /keys`` that created it; its hash is in none.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from aiohttp import web

from llmproxy.apikey import digests_equal, looks_like_secret
from llmproxy.auth.keydata import parse_timestamp
from llmproxy.auth.providers.base import ProviderError
from llmproxy.daemon.admin_http import (
    AdminError,
    invalid,
    json_object,
    json_response,
    query_flag,
    query_text,
)
from llmproxy.daemon.runtime import RuntimeState, builtin_providers
from llmproxy.keyfields import ADD_FIELDS, FIELDS, KeyField
from llmproxy.keystore import KeyNotFound, KeyRecord, KeyStoreError, TeamConflict, TeamNotFound
from llmproxy.keystore.access import KeyStoreAccess
from llmproxy.notices import Notice

log = logging.getLogger("llmproxy.admin")

_T = TypeVar("_T")


def key_json(record: KeyRecord) -> dict[str, object]:
    """A stored key as the API shows it: every field but the hash."""
    return {
        "id": record.id,
        "prefix": record.prefix,
        **record.fields(),
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "revoked_at": record.revoked_at,
    }


def store_fields(
    body: Mapping[str, object],
    allowed: frozenset[str],
    table: Mapping[str, KeyField] = FIELDS,
) -> dict[str, object]:
    """A request body as store arguments: unknown fields refused, ``null`` clears, and
    ``expires_at`` also read from an ISO-8601 text. The store validates the values themselves.
    ``table`` holds the fields (a key's; :data:`~llmproxy.teamfields.TEAM_FIELD_MAP` for a team).
    """
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid(
            f"unknown field(s) {', '.join(unknown)}; fields: {', '.join(sorted(allowed))}"
        )
    fields: dict[str, object] = {}
    for name, value in body.items():
        if value is None:
            # null clears a field to its "none"; for one that has none the store refuses it.
            field = table.get(name)
            fields[name] = field.cleared() if field is not None and field.clearable else None
        elif table[name].kind == "time" and isinstance(value, str):
            try:
                fields[name] = parse_timestamp(value)
            except ValueError as exc:
                raise invalid(f"{exc} (give Unix seconds or an ISO-8601 time)") from None
        else:
            fields[name] = value
    return fields


NO_KEY_FOR_SECRET = "no active key has this secret (it is unknown, or revoked already)"
"""The one answer for the hash of a secret no live key has: it says nothing of the secret."""

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


async def find_by_secret_hash(store: KeyStoreAccess, sha256: object) -> KeyRecord:
    """The live key whose secret hashes to ``sha256`` (``POST /keys/lookup``).

    The client hashes the secret itself (SHA-256, as the store keeps it), so the secret never
    crosses the admin channel and no URL, log line or error can hold it. A revoked key's
    secret gets the same 404 as an unknown one.
    """
    if not isinstance(sha256, str) or _SHA256_HEX.fullmatch(sha256) is None:
        raise invalid("sha256: required, the lowercase hex SHA-256 of the key's secret")
    for record in await store.list(include_revoked=False):
        if digests_equal(record.sha256, sha256):
            return record
    raise AdminError(404, NO_KEY_FOR_SECRET, "key_not_found")


async def resolve_key(store: KeyStoreAccess, ref: str) -> KeyRecord:
    """The key ``ref`` names: an id, else a display prefix, else a name.

    Several keys behind one prefix or name are ambiguous unless exactly one of them is still
    live (a name reused after a revoke means the new key). A secret is refused without being
    echoed: it belongs hashed in the body of ``POST /keys/lookup``, never in a URL.
    """
    if looks_like_secret(ref):
        raise AdminError(
            400,
            "a key's secret does not belong in a URL: send its SHA-256 to POST /keys/lookup "
            "(llmproxy keys show|update|revoke SECRET does)",
            "secret_in_url",
        )
    record = await store.get(ref)
    if record is not None:
        return record
    records = await store.list(include_revoked=True)
    by_prefix = [r for r in records if ref in (r.prefix, r.prefix.removesuffix("…"))]
    by_name = [r for r in records if r.name == ref]
    for what, matches in (("prefix", by_prefix), ("name", by_name)):
        if len(matches) > 1:
            live = [r for r in matches if not r.revoked]
            if len(live) != 1:
                ids = ", ".join(r.id for r in matches)
                raise AdminError(
                    400,
                    f"{len(matches)} keys have the {what} {ref!r}: use an id ({ids})",
                    "ambiguous_key",
                )
            matches = live
        if matches:
            return matches[0]
    raise AdminError(404, f"no key with id, prefix or name {ref!r}", "key_not_found")


class KeysApi:
    """The ``/keys`` handlers, on the store of the running config's ``builtin`` provider."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    def register(self, router: web.UrlDispatcher) -> None:
        """Add the ``/keys`` routes."""
        router.add_get("/keys", self.list_keys)
        router.add_post("/keys", self.add_key)
        router.add_post("/keys/lookup", self.lookup_key)
        router.add_get("/keys/{ref}", self.show_key)
        router.add_patch("/keys/{ref}", self.update_key)
        router.add_post("/keys/{ref}/revoke", self.revoke_key)

    async def close(self) -> None:
        """Nothing to close: the store belongs to the provider (kept for the admin server)."""

    # Handlers ------------------------------------------------------------------------------

    async def list_keys(self, request: web.Request) -> web.Response:
        store = self._store()
        include_revoked, user_id = query_flag(request, "all"), query_text(request, "user_id")
        records = await call(store.list(include_revoked, user_id=user_id))
        return json_response({"keys": [key_json(r) for r in records]})

    async def add_key(self, request: web.Request) -> web.Response:
        fields = store_fields(await json_object(request), frozenset(ADD_FIELDS))
        name = fields.pop("name", None)
        if not isinstance(name, str) or not name.strip():
            raise invalid("name: required, as non-empty text")
        store = self._store()
        # The store checks every value (and names the field it refuses).
        extra: dict[str, Any] = fields
        secret, record = await call(store.add(name=name, **extra))
        await self._publish(record)
        return json_response({"secret": secret, "key": key_json(record)}, status=201)

    async def show_key(self, request: web.Request) -> web.Response:
        store = self._store()
        record = await call(resolve_key(store, request.match_info["ref"]))
        return json_response({"key": key_json(record)})

    async def lookup_key(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        unknown = sorted(set(body) - {"sha256"})
        if unknown:
            raise invalid(f"unknown field(s) {', '.join(unknown)}; fields: sha256")
        record = await call(find_by_secret_hash(self._store(), body.get("sha256")))
        return json_response({"key": key_json(record)})

    async def update_key(self, request: web.Request) -> web.Response:
        changes = store_fields(await json_object(request), frozenset(FIELDS))
        store = self._store()
        key = await call(resolve_key(store, request.match_info["ref"]))
        record = await call(store.update(key.id, **changes))
        await self._publish(record)
        return json_response({"key": key_json(record)})

    async def revoke_key(self, request: web.Request) -> web.Response:
        store = self._store()
        key = await call(resolve_key(store, request.match_info["ref"]))
        record = await call(store.revoke(key.id))
        await self._publish(record)
        return json_response({"key": key_json(record)})

    # Store access --------------------------------------------------------------------------

    def _store(self) -> KeyStoreAccess:
        return key_store(self._state)

    async def _publish(self, record: KeyRecord) -> None:
        await publish(self._state, f"key {record.id}", record.sha256)


def key_store(state: RuntimeState) -> KeyStoreAccess:
    """The store of the running config's ``builtin`` provider, or the 409 ``no_key_store``."""
    providers = builtin_providers(state.current)
    if not providers:
        raise AdminError(
            409,
            "this daemon has no builtin key store: its auth pipeline has no provider of "
            "type builtin (or auth is disabled)",
            "no_key_store",
        )
    return providers[0].store


async def publish(state: RuntimeState, what: str, sha256: str | None = None) -> None:
    """Make the running gateway see a write to the key store at once (call after every one):
    this worker reloads its keys and teams and forgets the cached lookup of ``sha256`` (None:
    of every key); the other workers reload before their next request (:mod:`llmproxy.notices`).
    ``what`` names the written thing in the log."""
    runtime = state.current
    for provider in builtin_providers(runtime):
        try:
            await provider.reload_now()
        except ProviderError as exc:
            # The write is committed; the provider's poll retries the reload (the store's
            # version moved past the one it loaded), so this delays the change, never loses it.
            log.warning("%s written but not reloaded yet: %s", what, exc)
    if runtime.auth is not None:
        runtime.auth.invalidate(sha256)
    notices = state.notices
    if notices is not None:
        # The other workers load the store again before their next request; this one has.
        seen = notices.bump(Notice.KEYS)
        if runtime.auth is not None:
            runtime.auth.keys_seen = seen


async def call(work: Awaitable[_T]) -> _T:
    """Await store work; its failures as the API's errors."""
    try:
        return await work
    except KeyNotFound as exc:
        raise AdminError(404, str(exc), "key_not_found") from None
    except TeamNotFound as exc:
        raise AdminError(404, str(exc), "team_not_found") from None
    except TeamConflict as exc:
        raise AdminError(409, str(exc), exc.code) from None
    except ValueError as exc:  # a bad field value, named by the store
        raise invalid(str(exc)) from None
    except KeyStoreError as exc:  # not open, not a key store, locked too long, server down
        raise AdminError(
            503, f"the key store cannot be used: {exc}", "key_store_unavailable"
        ) from None
