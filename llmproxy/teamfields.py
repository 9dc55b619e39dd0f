"""The fields of a team, defined once: key store, admin API, CLI and docs read this.

Like :mod:`llmproxy.keyfields` for keys (and with its :class:`~llmproxy.keyfields.KeyField`): a
team's ``name``, ``description``, ``budget`` and ``period``, and its limits ``rpm``, ``tpm``,
``max_concurrent`` and ``total_quota``, each with its description, its rule for an operator's
value and its "none". A row of the store's ``teams`` table, a body of the admin API's ``/teams``
and the options of ``llmproxy teams add/update`` are these fields; a new one is an entry here plus
its column (both stores) and its option, which ``tests/test_teamfields.py`` checks.

Names are case-sensitive (``ML`` and ``ml`` are two teams), like key names and user ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

from llmproxy.budgets import check_period
from llmproxy.keyfields import (
    KeyField,
    check_limit,
    check_money,
    check_team_name,
    check_text,
    check_values,
)


def _used_quota(field: str, value: object) -> int:
    checked = check_limit(0)(field, value)
    if checked is None:
        raise ValueError(f"{field}: expected a whole number, got None")
    return checked


TEAM_FIELDS: Final[tuple[KeyField, ...]] = (
    KeyField(
        "name",
        "The team's name, unique and case-sensitive.",
        "text",
        check_team_name,
        clearable=False,
    ),
    KeyField("description", "What the team is, for operators.", "text", check_text),
    KeyField(
        "budget",
        "What the team's keys together may cost per `period`, in `pricing_currency`; unset "
        "means no team budget.",
        "money",
        check_money,
    ),
    KeyField(
        "period",
        "Period of the team's budget: daily, weekly, monthly (calendar, UTC) or total.",
        "period",
        check_period,
        clearable=False,
    ),
    KeyField(
        "rpm",
        "Requests per minute for all the team's keys together.",
        "count",
        check_limit(1),
    ),
    KeyField("tpm", "Tokens per minute for all the team's keys together.", "count", check_limit(1)),
    KeyField(
        "max_concurrent",
        "Requests the team's keys may have in flight at once, together.",
        "count",
        check_limit(1),
    ),
    KeyField(
        "total_quota",
        "Tokens the team's keys may use together in total; unset means no quota.",
        "count",
        check_limit(1),
        option="quota",
    ),
    KeyField(
        "used_quota",
        "Tokens the team's keys have used, counted against `total_quota`.",
        "count",
        _used_quota,
        on_add=False,
        clearable=False,
    ),
)

TEAM_FIELD_MAP: Final[Mapping[str, KeyField]] = MappingProxyType({f.name: f for f in TEAM_FIELDS})
""":data:`TEAM_FIELDS` by name."""
TEAM_ADD_FIELDS: Final[tuple[str, ...]] = tuple(f.name for f in TEAM_FIELDS if f.on_add)
"""The fields given when a team is added (``name`` required, the rest optional)."""
TEAM_SETTABLE: Final[tuple[str, ...]] = tuple(f for f in TEAM_FIELD_MAP if f != "name")
"""The fields an operator may change on a team (its name is its identity)."""
TEAM_CLEARABLE: Final[Mapping[str, KeyField]] = MappingProxyType(
    {f.cli_name: f for f in TEAM_FIELDS if f.clearable}
)
"""``teams update --clear`` choices and the field each clears."""


def team_doc(name: str) -> str:
    """The description of the team field called ``name``."""
    return TEAM_FIELD_MAP[name].doc


def check_team_fields(
    fields: Mapping[str, object], allowed: Iterable[str] = TEAM_SETTABLE
) -> dict[str, object]:
    """``fields`` validated and normalised; raises ``ValueError`` naming the first bad one."""
    return check_values(TEAM_FIELD_MAP, "team", fields, allowed)
