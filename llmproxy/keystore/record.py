"""One stored key (:class:`KeyRecord`): the fields of :mod:`llmproxy.keyfields` plus what the
store itself keeps (id, hash, display prefix, times).

The store runs every value an operator gives it (``add``, ``import_key``, ``update``) through
:func:`~llmproxy.keyfields.check_fields` before touching the database, so a bad value is refused
with a message naming the field, and the database only ever holds values the auth pipeline
understands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from llmproxy.keyfields import KEY_FIELDS, KeyStatus

STORE_FIELDS: Final = ("id", "sha256", "prefix", "created_at", "updated_at", "revoked_at")
"""What the store keeps beside the operator's fields."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as the store keeps it: everything but the secret.

    ``revoked_at`` is set once, by :meth:`KeyStore.revoke`; a revoked key is never served again.
    ``status`` is what an operator set; expiry and quota are judged by the auth pipeline at request
    time from ``expires_at``, ``total_quota`` and ``used_quota``.
    """

    id: str
    sha256: str
    prefix: str
    name: str
    user_id: str
    status: KeyStatus
    created_at: float
    updated_at: float
    expires_at: float | None
    revoked_at: float | None
    models: tuple[str, ...]
    allowed_ips: tuple[str, ...]
    total_quota: int | None
    used_quota: int
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None
    priority: int | None
    metadata: Mapping[str, object]

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def fields(self) -> dict[str, object]:
        """Every field of :data:`~llmproxy.keyfields.KEY_FIELDS`, as JSON-ready values."""
        return {field.name: _plain(getattr(self, field.name)) for field in KEY_FIELDS}

    def as_data(self) -> dict[str, object]:
        """The key data the auth pipeline reads (the fields of a ``static`` key), without secret."""
        return {"id": self.id, "prefix": self.prefix, "sha256": self.sha256, **self.fields()}


def _plain(value: object) -> object:
    """Tuples as lists and read-only mappings as dicts, so the value serialises as JSON."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value
