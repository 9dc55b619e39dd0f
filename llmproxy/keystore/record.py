"""One stored key (:class:`KeyRecord`) and the rules its fields follow.

The validators are pure functions: the store runs every value an operator gives it (``add``,
``import_key``, ``update``) through :func:`check_fields` before touching the database, so a bad
value is refused with a message naming the field, and the database only ever holds values the auth
pipeline understands.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, cast

KeyStatus = Literal["active", "disabled", "expired", "quota_exceeded"]
STATUSES: Final[tuple[KeyStatus, ...]] = ("active", "disabled", "expired", "quota_exceeded")


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

    def as_data(self) -> dict[str, object]:
        """The key data the auth pipeline reads (the fields of a ``static`` key), without secret."""
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "sha256": self.sha256,
            "user_id": self.user_id,
            "status": self.status,
            "expires_at": self.expires_at,
            "models": list(self.models),
            "allowed_ips": list(self.allowed_ips),
            "total_quota": self.total_quota,
            "used_quota": self.used_quota,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_concurrent": self.max_concurrent,
            "priority": self.priority,
            "metadata": dict(self.metadata),
        }


def _text(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected text, got {value!r}")
    text = value.strip()
    if not text.isprintable():
        raise ValueError(f"{field}: control characters are not allowed, got {value!r}")
    return text


def _status(field: str, value: object) -> KeyStatus:
    if value not in STATUSES:
        raise ValueError(f"{field}: expected one of {', '.join(STATUSES)}, got {value!r}")
    return value


def _string_items(field: str, value: object) -> list[str]:
    # A bare string is iterable too, and would silently become a list of characters.
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise ValueError(f"{field}: expected a list, got {value!r}")
    items: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"{field}: expected non-empty text items, got {item!r}")
        if item.strip() not in items:
            items.append(item.strip())
    return items


def _models(field: str, value: object) -> tuple[str, ...]:
    return tuple(_string_items(field, value))


def _networks(field: str, value: object) -> tuple[str, ...]:
    """Addresses and CIDR ranges, normalised (``10.1.2.3/8`` → ``10.0.0.0/8``)."""
    networks: list[str] = []
    for item in _string_items(field, value):
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(
                f"{field}: {item!r} is not an IP address or CIDR range (e.g. 10.0.0.0/8)"
            ) from None
        single = network.prefixlen == network.max_prefixlen
        text = str(network.network_address) if single else str(network)
        if text not in networks:
            networks.append(text)
    return tuple(networks)


def _timestamp(field: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field}: expected Unix seconds or None, got {value!r}")
    # The pipeline reads 0 as "never expires", so a zero here would not mean what it says.
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{field}: expected a positive Unix time, got {value!r}")
    return float(value)


def _count(field: str, value: object, *, minimum: int | None, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        expected = "a whole number or None" if optional else "a whole number"
        raise ValueError(f"{field}: expected {expected}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{field}: must be at least {minimum}, got {value}")
    return value


def _limit(minimum: int | None) -> Callable[[str, object], int | None]:
    def check(field: str, value: object) -> int | None:
        return _count(field, value, minimum=minimum, optional=True)

    return check


def _used_quota(field: str, value: object) -> int:
    return cast(int, _count(field, value, minimum=0, optional=False))


def _metadata(field: str, value: object) -> dict[str, object]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(name, str) for name in value):
        raise ValueError(f"{field}: expected a mapping with text keys, got {value!r}")
    try:
        # A JSON round trip both proves the value storable and detaches it from the caller's.
        copy: dict[str, object] = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field}: must hold JSON values only ({exc})") from None
    return copy


_CHECKS: Final[dict[str, Callable[[str, object], object]]] = {
    "name": _text,
    "user_id": _text,
    "status": _status,
    "models": _models,
    "allowed_ips": _networks,
    "expires_at": _timestamp,
    # 0 would read as "no quota" to the pipeline; None is how to say that.
    "total_quota": _limit(minimum=1),
    "used_quota": _used_quota,
    "rpm": _limit(minimum=0),
    "tpm": _limit(minimum=0),
    "max_concurrent": _limit(minimum=0),
    "priority": _limit(minimum=None),
    "metadata": _metadata,
}
SETTABLE_FIELDS: Final[tuple[str, ...]] = tuple(_CHECKS)
"""The fields :meth:`KeyStore.update` may change."""


def check_fields(fields: Mapping[str, object]) -> dict[str, object]:
    """``fields`` validated and normalised; raises ``ValueError`` naming the first bad one."""
    checked: dict[str, object] = {}
    for field, value in fields.items():
        check = _CHECKS.get(field)
        if check is None:
            close = difflib.get_close_matches(field, SETTABLE_FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"{field}: not a key field{hint}; fields: {', '.join(SETTABLE_FIELDS)}"
            )
        checked[field] = check(field, value)
    return checked
