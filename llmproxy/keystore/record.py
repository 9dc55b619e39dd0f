"""One stored key (:class:`KeyRecord`): the fields of :mod:`llmproxy.keyfields` plus what the
store itself keeps (id, hash, display prefix, times).

The store runs every value an operator gives it (``add``, ``import_key``, ``update``) through
:func:`~llmproxy.keyfields.check_fields` before touching the database, so a bad value is refused
with a message naming the field, and the database only ever holds values the auth pipeline
understands.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, NamedTuple, Protocol

from llmproxy.apikey import has_valid_checksum, is_llmproxy_key
from llmproxy.budgets import Budget, Period
from llmproxy.keyfields import FIELDS, KEY_FIELDS, KeyStatus
from llmproxy.keystore.errors import TeamConflict
from llmproxy.teams import Team

STORE_FIELDS: Final = ("id", "sha256", "prefix", "created_at", "updated_at", "revoked_at")
"""What the store keeps beside the operator's fields."""

COLUMNS: Final = (*STORE_FIELDS, *FIELDS)
"""A key's columns, in the order every store selects them (SQLite and PostgreSQL alike)."""

_ID_ALPHABET: Final = string.digits + string.ascii_uppercase + string.ascii_lowercase
_ID_LENGTH: Final = 12


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
    team: str = ""
    budget: float | None = None
    budget_period: Period = "monthly"
    burst: int | None = None

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


def new_key_id() -> str:
    """A short random id such as ``key_3kTq9ZxY2bWm``: safe to show, log and type."""
    return "key_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


def check_secret(secret: str) -> None:
    """Refuse a secret no client could send (spaces, control characters) or a mistyped
    llmproxy key (bad checksum); any other shape may be imported."""
    if not secret or not secret.isprintable() or any(char.isspace() for char in secret):
        raise ValueError("key: expected non-empty text without spaces or control characters")
    if is_llmproxy_key(secret) and not has_valid_checksum(secret):
        raise ValueError("key: starts with 'sk-llmp-' but its checksum does not match (a typo?)")


class Row(Protocol):
    """A database row read by column name (``sqlite3.Row``, ``asyncpg.Record``)."""

    def __getitem__(self, name: str, /) -> Any: ...


class KeyChanges(NamedTuple):
    """What a store reports to a reader keeping keys in memory (the ``builtin`` provider)."""

    cursor: object
    """Hand back to the next ``changes()`` call: where this answer left off."""
    records: list[KeyRecord]
    complete: bool
    """Every live key (replace the index); else only changed keys, revoked ones included
    (patch it)."""
    teams: list[Team] | None = None
    """Every team, when the teams may have changed since the cursor (None: they did not)."""


def record_from_row(row: Row) -> KeyRecord:
    """A :class:`KeyRecord` from a row of :data:`COLUMNS` (lists and metadata as JSON text)."""
    values: dict[str, object] = {name: row[name] for name in STORE_FIELDS}
    for field in KEY_FIELDS:
        value = row[field.name]
        if field.kind == "list":
            value = tuple(json.loads(str(value)))
        elif field.kind == "mapping":
            value = MappingProxyType(json.loads(str(value)))
        values[field.name] = value
    return KeyRecord(**values)  # type: ignore[arg-type]  # the columns are the fields


def column_value(field: str, value: object) -> object:
    """A checked field value as a store keeps it: lists and metadata become JSON text."""
    if FIELDS[field].stored_as_json:
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return value


# Teams -----------------------------------------------------------------------------------------

TEAM_COLUMNS: Final = (
    "name",
    "description",
    "budget",
    "period",
    "rpm",
    "tpm",
    "max_concurrent",
    "total_quota",
    "used_quota",
    "created_at",
    "updated_at",
)
"""A team's columns (the fields of :mod:`llmproxy.teamfields` and its times), in the order
every store selects them."""


def team_from_row(row: Row) -> Team:
    """A :class:`~llmproxy.teams.Team` from a row of :data:`TEAM_COLUMNS`."""
    budget = row["budget"]
    return Team(
        name=row["name"],
        description=row["description"],
        budget=None if budget is None else Budget(float(budget), row["period"]),
        rpm=row["rpm"],
        tpm=row["tpm"],
        max_concurrent=row["max_concurrent"],
        total_quota=row["total_quota"],
        used_quota=int(row["used_quota"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )


def team_columns(checked: Mapping[str, object], current: Team | None) -> dict[str, object]:
    """Checked team fields as column values, with the one rule between two of them: a period
    belongs to a budget (given with it, or the team's), and clearing the budget resets it."""
    values = dict(checked)
    has_budget = (
        values["budget"] is not None
        if "budget" in values
        else current is not None and current.budget is not None
    )
    if "period" in values and not has_budget:
        name = values.get("name") or (current.name if current is not None else "")
        raise ValueError(f"period: team {name!r} has no budget; give a budget with its period")
    if "budget" in values and values["budget"] is None:
        values["period"] = "monthly"
    return values


def unknown_team(team: str) -> ValueError:
    """The refusal of a key naming a team the store does not hold."""
    return ValueError(f"team: no team named {team!r}; add it first: llmproxy teams add {team}")


def team_in_use(name: str, keys: int) -> TeamConflict:
    """The refusal to remove a team that live keys still belong to."""
    return TeamConflict(
        f"team {name!r} still has {keys} key(s): move them first (llmproxy keys update KEY "
        "--team OTHER, or --clear team), or remove it with --force, which leaves them without "
        "a team",
        "team_in_use",
    )
