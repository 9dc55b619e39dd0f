"""Values operators type on the command line, turned into what the admin API expects.

Pure functions that raise ``ValueError`` with a message fit to show as is; the commands turn it
into a usage error (exit code 2) naming the option. Durations are read by the config's own
:func:`parse_duration`, so ``--since 1h30m`` means what ``timeout: 1h30m`` means in the config.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

from llmproxy.config.units import parse_duration

NEVER = ("never", "none")
"""Words for "no expiry" in ``--expires``."""

_PLAUSIBLE_UNIX_TIME = 1_000_000_000
"""2001-09-09: a bare number below it is more likely a forgotten unit than a Unix time."""


def parse_since(text: str) -> float:
    """Seconds back from now for ``--since``: ``1h``, ``30m``, ``7d``, ``90`` (seconds)."""
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"expected a duration above zero, like 1h or 30m, got {text!r}")
    return seconds


def parse_expiry(text: str, now: float) -> float | None:
    """Unix time for ``--expires``, or ``None`` for ``never``.

    Accepts a duration from now (``30d``, ``12h``), an ISO 8601 date or time (``2027-01-01``,
    ``2027-01-01T12:00+02:00``; UTC when no zone is given, as in the config's ``expires_at``) or
    Unix seconds. A time in the past is refused: such a key would be useless from the start.
    """
    value = text.strip()
    if value.lower() in NEVER:
        return None
    moment: float
    try:
        moment = float(value)
    except ValueError:
        moment = _duration_or_date(value, now)
    else:
        if not math.isfinite(moment) or moment < _PLAUSIBLE_UNIX_TIME:
            raise ValueError(
                f"{value!r} is not a plausible Unix time; for a duration give its unit, like 30d"
            )
    if moment <= now:
        when = datetime.fromtimestamp(moment, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        raise ValueError(f"{value!r} is in the past ({when})")
    return moment


def _duration_or_date(value: str, now: float) -> float:
    try:
        return now + parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"expected a duration (30d, 12h), a date (2027-01-01), a time "
            f"(2027-01-01T12:00Z), Unix seconds or 'never', got {value!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_list(text: str) -> list[str]:
    """``a,b, c`` → ``["a", "b", "c"]``; empty items are dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_metadata(items: list[str]) -> dict[str, object]:
    """``--metadata`` items: ``name=text`` sets a string, ``name:=json`` a JSON value (``n:=5``).

    The ``:=`` form (as in httpie) keeps ``team=007`` a string while still allowing numbers,
    booleans and nested values for decision scripts that need them.
    """
    metadata: dict[str, object] = {}
    for item in items:
        equals = item.find("=")
        if equals < 0:
            raise ValueError(f"expected name=value or name:=json, got {item!r}")
        typed = equals > 0 and item[equals - 1] == ":"
        name = item[: equals - 1 if typed else equals].strip()
        raw = item[equals + 1 :]
        if not name:
            raise ValueError(f"expected name=value or name:=json, got {item!r}")
        if not typed:
            metadata[name] = raw
            continue
        try:
            metadata[name] = json.loads(raw)
        except ValueError:
            raise ValueError(
                f"{name}: the value after := must be JSON, got {raw!r} (use name=value for text)"
            ) from None
    return metadata
