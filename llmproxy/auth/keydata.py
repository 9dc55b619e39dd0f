"""What a provider's raw key data means: status, expiry, quota, allowlists and limits.

Providers return whatever their store holds — Redis hashes give strings, JSON and SQL give typed
values, the seed used numbers for status. This module turns that into one typed :class:`KeyInfo`
once per lookup (it is cached with the data), so the per-request checks are plain comparisons.
Pure functions, no I/O.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from llmproxy.auth.providers.base import KeyData
from llmproxy.budgets import Budget, check_period

KeyState = Literal["active", "disabled", "expired", "quota_exceeded"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# The seed's numeric statuses (types.KeyStatus), and the words operators write.
_STATUS_WORDS: dict[str, KeyState] = {
    "0": "active",
    "active": "active",
    "enabled": "active",
    "1": "disabled",
    "disabled": "disabled",
    "revoked": "disabled",
    "2": "quota_exceeded",
    "quota_exceeded": "quota_exceeded",
    "3": "expired",
    "expired": "expired",
}


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """Per-key overrides of the limits section (the limits issue enforces them)."""

    rpm: int | None = None
    burst: int | None = None
    """The size of the key's request bucket (None: its rate's own)."""
    tpm: int | None = None
    max_concurrent: int | None = None
    priority: int | None = None
    total_quota: int | None = None
    used_quota: int = 0


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One key's data, typed. ``state`` already folds in the stored status."""

    state: KeyState
    key_id: str
    name: str
    user_id: str
    expires_at: float | None
    balance: float | None
    """None when there is none, or when the provider's decision script owns it."""
    models: frozenset[str] | None
    networks: tuple[Network, ...]
    limits: KeyLimits = field(default_factory=KeyLimits)
    metadata: Mapping[str, object] = field(default_factory=dict)
    team: str = ""
    """The key's team (its data's ``team``; "" for none)."""
    budget: Budget | None = None
    """The key's own budget (its data's ``budget`` and ``budget_period``)."""


def parse_status(value: object) -> KeyState:
    """The state for a stored status; anything unrecognised is treated as disabled (fail closed)."""
    if value is None or value == "":
        return "active"
    if isinstance(value, bool):
        return "active" if value else "disabled"
    if isinstance(value, int | float):
        value = str(int(value))
    return _STATUS_WORDS.get(str(value).strip().lower(), "disabled")


def parse_timestamp(value: object) -> float | None:
    """Unix seconds from a number, a numeric string or an ISO 8601 date/time (UTC if no zone)."""
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"expires_at: not a date or a Unix time: {value!r}") from None
    else:
        raise ValueError(f"expires_at: not a date or a Unix time: {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _optional_int(data: KeyData, name: str) -> int | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    try:
        return int(float(value)) if isinstance(value, str) else int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None


def _optional_float(data: KeyData, name: str) -> float | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if math.isnan(number):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    return number


def _string_list(value: object, name: str) -> list[str]:
    """A list from a JSON list or a comma-separated string (what a Redis hash can hold)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, Iterable) and not isinstance(value, Mapping | bytes):
        return [str(item).strip() for item in value if str(item).strip()]
    raise ValueError(f"{name}: expected a list, got {value!r}")


def _networks(value: object) -> tuple[Network, ...]:
    try:
        return tuple(
            ipaddress.ip_network(entry, strict=False) for entry in _string_list(value, "ips")
        )
    except ValueError as exc:
        raise ValueError(f"allowed_ips: {exc}") from None


def key_info(data: KeyData, fallback_id: str, *, scripted: bool = False) -> KeyInfo:
    """Type ``data``; raises ``ValueError`` naming the field when a value makes no sense.

    ``fallback_id`` names keys whose data has no ``id`` (a short hash prefix, never the key).
    ``scripted``: the provider has a decision script, which owns ``balance`` as the seed meant
    (like any custom field of the data): it is neither typed nor judged here, so a key with
    balance 0 — or a balance the script reads its own way — reaches
    ``if tonumber(data.balance) <= 0 then return {allow = false, message = ...} end`` and the
    client sees the script's verdict. Without a script a balance <= 0 is ``quota_exceeded``.
    """
    models = _string_list(data.get("models"), "models")
    metadata = data.get("metadata")
    return KeyInfo(
        state=parse_status(data.get("status")),
        key_id=str(data.get("id") or fallback_id),
        name=str(data.get("name") or ""),
        user_id=str(data.get("user_id") or ""),
        expires_at=parse_timestamp(data.get("expires_at", data.get("expired_at"))),
        balance=None if scripted else _optional_float(data, "balance"),
        models=frozenset(models) if models else None,
        networks=_networks(data.get("allowed_ips")),
        limits=KeyLimits(
            rpm=_optional_int(data, "rpm"),
            burst=_optional_int(data, "burst"),
            tpm=_optional_int(data, "tpm"),
            max_concurrent=_optional_int(data, "max_concurrent"),
            priority=_optional_int(data, "priority"),
            total_quota=_optional_int(data, "total_quota") or None,
            used_quota=_optional_int(data, "used_quota") or 0,
        ),
        metadata=metadata if isinstance(metadata, Mapping) else {},
        team=str(data.get("team") or ""),
        budget=_budget(data),
    )


def _budget(data: KeyData) -> Budget | None:
    amount = _optional_float(data, "budget")
    if amount is None:
        return None
    period = data.get("budget_period") or "monthly"
    return Budget(amount, check_period("budget_period", period))


def effective_state(info: KeyInfo, now: float) -> KeyState:
    """The state at ``now``: the stored one, then expiry, then quota and balance."""
    if info.state != "active":
        return info.state
    if info.expires_at is not None and now >= info.expires_at:
        return "expired"
    limits = info.limits
    if limits.total_quota is not None and limits.used_quota >= limits.total_quota:
        return "quota_exceeded"
    if info.balance is not None and info.balance <= 0:
        return "quota_exceeded"
    return "active"


def ip_allowed(info: KeyInfo, client_ip: str | None) -> bool:
    """True when the key has no IP allowlist or ``client_ip`` is inside it."""
    if not info.networks:
        return True
    if client_ip is None:
        return False
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(address in network for network in info.networks)


def model_allowed(info: KeyInfo, model: str | None) -> bool:
    """True when the key has no model allowlist, or the request names an allowed model."""
    return info.models is None or model is None or model in info.models
