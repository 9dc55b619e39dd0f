"""The fields of an API key, defined once: config, key store, admin API, CLI and docs read this.

A key's fields (``name``, ``user_id``, ``models``, ``rpm``…) appear in a static key in the config
(:class:`~llmproxy.config.model.StaticKey`), a row of the builtin key store, a body of the admin
API's ``/keys`` and the options of ``llmproxy keys``. Each of them takes the field's name, its
one-line description, its rule for an operator-given value and its "none" value (what ``null``
in the API and ``--clear`` in the CLI set) from :data:`KEY_FIELDS`; a new field is one entry here
plus its column and its option, which ``tests/test_keyfields.py`` checks are all present.

The rules are pure functions that raise ``ValueError`` naming the field, so a bad value is
refused before it is stored and the stores only hold values the auth pipeline understands.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal, cast

from llmproxy.budgets import MAX_BUDGET, check_period

KeyStatus = Literal["active", "disabled", "expired", "quota_exceeded"]
STATUSES: Final[tuple[KeyStatus, ...]] = ("active", "disabled", "expired", "quota_exceeded")

FieldKind = Literal["text", "status", "list", "time", "count", "mapping", "money", "period"]
"""How a value is written on a command line and kept in a SQL row: lists and mappings as JSON,
money as a float (in ``pricing_currency``), a period as one of :data:`~llmproxy.budgets.PERIODS`."""


@dataclass(frozen=True, slots=True)
class KeyField:
    """One field an operator may give a key (or a team: :mod:`llmproxy.teamfields` reuses it)."""

    name: str
    doc: str
    """One sentence, shown by the configuration reference, ``--help`` and the admin API docs."""
    kind: FieldKind
    check: Callable[[str, object], object]
    """Validates and normalises an operator's value; ``ValueError`` names the field."""
    on_add: bool = True
    """Given when a key is issued; ``status`` and ``used_quota`` only change afterwards."""
    option: str = ""
    """The ``llmproxy keys add/update`` option, when it differs from the name."""
    clearable: bool = True
    """``keys update --clear`` may set it back to :attr:`empty`."""

    @property
    def cli_name(self) -> str:
        """The name on the command line: ``--quota``'s ``quota``, ``allowed-ips``."""
        return self.option or self.name.replace("_", "-")

    def cleared(self) -> object:
        """The value meaning "none" (no limit, any model, never expires), which ``null`` in the
        admin API and ``--clear`` in the CLI set; a new object each time, ready for JSON."""
        if self.kind == "list":
            return []
        if self.kind == "mapping":
            return {}
        if self.kind == "text":
            return ""
        if self.kind == "period":
            return "monthly"
        return None

    @property
    def stored_as_json(self) -> bool:
        """Kept in a SQL column as JSON text."""
        return self.kind in ("list", "mapping")


# Rules ---------------------------------------------------------------------------------------


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


MAX_COUNT: Final = 2**63 - 1
"""The largest count a store keeps (a 64-bit SQL integer, in SQLite and PostgreSQL alike)."""


def _count(field: str, value: object, *, minimum: int | None, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        expected = "a whole number or None" if optional else "a whole number"
        raise ValueError(f"{field}: expected {expected}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{field}: must be at least {minimum}, got {value}")
    if value > MAX_COUNT:
        raise ValueError(f"{field}: must be at most {MAX_COUNT}, got {value}")
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
        copy: dict[str, object] = json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field}: must hold JSON values only ({exc})") from None
    return copy


TEAM_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A team's name: letters, digits, ``.``, ``_``, ``-``, at most 64 characters; case-sensitive.

Kept this narrow because it is part of the limit store's id (``team:<name>``), of URLs
(``/teams/<name>``) and of usage reports, and an operator types it."""


def check_team_name(field: str, value: object) -> str:
    """A team's name (see :data:`TEAM_NAME`)."""
    text = _text(field, value)
    if not TEAM_NAME.fullmatch(text):
        raise ValueError(
            f"{field}: expected 1-64 letters, digits, '.', '_' or '-' (starting with a letter "
            f"or digit), got {value!r}"
        )
    return text


def _team(field: str, value: object) -> str:
    """The team a key belongs to; "" for none."""
    if value == "" or value is None:
        return ""
    return check_team_name(field, value)


def check_money(field: str, value: object) -> float | None:
    """An amount of money (``pricing_currency``), at least 0; None for none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field}: expected an amount or None, got {value!r}")
    if not math.isfinite(value) or not 0 <= value <= MAX_BUDGET:
        raise ValueError(f"{field}: must be an amount from 0 to {MAX_BUDGET:,.0f}, got {value!r}")
    return float(value)


def check_text(field: str, value: object) -> str:
    """Printable text, stripped."""
    return _text(field, value)


def check_limit(minimum: int | None) -> Callable[[str, object], int | None]:
    """A whole number of at least ``minimum`` (None: no bound below), or None for no limit."""
    return _limit(minimum)


# The table -----------------------------------------------------------------------------------

KEY_FIELDS: Final[tuple[KeyField, ...]] = (
    KeyField("name", "Label shown in usage records and the CLI.", "text", _text, clearable=False),
    KeyField("user_id", "Owner the key's usage is billed to.", "text", _text),
    KeyField(
        "status",
        "Key state; only `active` keys are let in.",
        "status",
        _status,
        on_add=False,
        clearable=False,
    ),
    KeyField(
        "total_quota",
        "Tokens the key may use in total; unset means no quota.",
        "count",
        # 0 would read as "no quota" to the pipeline; None is how to say that.
        _limit(minimum=1),
        option="quota",
    ),
    KeyField(
        "used_quota",
        "Tokens already used, counted against `total_quota`.",
        "count",
        _used_quota,
        on_add=False,
        clearable=False,
    ),
    KeyField(
        "expires_at",
        "Expiry as an ISO 8601 date or time, or a Unix timestamp; unset never expires.",
        "time",
        _timestamp,
        option="expires",
    ),
    KeyField("models", "Models the key may use; empty means any.", "list", _models),
    KeyField(
        "allowed_ips",
        "Client addresses or CIDR ranges the key may be used from; empty means any.",
        "list",
        _networks,
    ),
    KeyField(
        "rpm",
        "Requests per minute for this key, instead of `rate_limit.per_key`.",
        "count",
        _limit(minimum=0),
    ),
    KeyField(
        "burst",
        "Requests this key may send at once, the bucket of its request rate; unset means the "
        "rate's own: a minute's count for a per-minute rate (60 in any minute), a second's "
        "for a per-second one.",
        "count",
        _limit(minimum=1),
    ),
    KeyField("tpm", "Tokens per minute for this key.", "count", _limit(minimum=0)),
    KeyField(
        "max_concurrent",
        "Requests this key may have in flight at once.",
        "count",
        _limit(minimum=0),
    ),
    KeyField(
        "priority",
        "Priority of this key's requests relative to other keys (lower is served first).",
        "count",
        _limit(minimum=None),
    ),
    KeyField(
        "metadata",
        "Free-form data handed to the decision script and the usage records.",
        "mapping",
        _metadata,
    ),
    KeyField(
        "team",
        "Team the key belongs to (`llmproxy teams`): its limits apply too, the stricter wins.",
        "text",
        _team,
    ),
    KeyField(
        "budget",
        "What the key's requests may cost per `budget_period`, in `pricing_currency`; unset "
        "means no budget of its own.",
        "money",
        check_money,
    ),
    KeyField(
        "budget_period",
        "Period of the key's budget: daily, weekly, monthly (calendar, UTC) or total.",
        "period",
        check_period,
        clearable=False,
    ),
)

FIELDS: Final[Mapping[str, KeyField]] = MappingProxyType({f.name: f for f in KEY_FIELDS})
""":data:`KEY_FIELDS` by name."""
SETTABLE_FIELDS: Final[tuple[str, ...]] = tuple(FIELDS)
"""The fields an operator may change on a stored key."""
ADD_FIELDS: Final[tuple[str, ...]] = tuple(f.name for f in KEY_FIELDS if f.on_add)
"""The fields given when a key is issued (``name`` required, the rest optional)."""
CLEARABLE: Final[Mapping[str, KeyField]] = MappingProxyType(
    {f.cli_name: f for f in KEY_FIELDS if f.clearable}
)
"""``keys update --clear`` choices and the field each clears."""


def doc(name: str) -> str:
    """The description of the field called ``name``."""
    return FIELDS[name].doc


def check_fields(
    fields: Mapping[str, object], allowed: Iterable[str] = SETTABLE_FIELDS
) -> dict[str, object]:
    """``fields`` validated and normalised; raises ``ValueError`` naming the first bad one."""
    return check_values(FIELDS, "key", fields, allowed)


def check_values(
    table: Mapping[str, KeyField],
    what: str,
    fields: Mapping[str, object],
    allowed: Iterable[str],
) -> dict[str, object]:
    """``fields`` of a ``what`` (key, team) validated by ``table``'s rules; ``ValueError``
    naming the first bad one, or an unknown one with the closest known name."""
    allowed = tuple(allowed)
    checked: dict[str, object] = {}
    for name, value in fields.items():
        field = table.get(name)
        if field is None or name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{name}: not a {what} field{hint}; fields: {', '.join(allowed)}")
        checked[name] = field.check(name, value)
    return checked
