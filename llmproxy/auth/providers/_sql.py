"""The SQL a ``database`` provider runs, built and checked without I/O.

Two ways to say what to read:

- ``table`` / ``key_column`` / ``fields``: names matching ``name`` or ``schema.name`` (letters,
  digits, ``_``), quoted for the dialect and therefore case-sensitive as written, so the config can
  never inject SQL::

      SELECT "user_id", "status" FROM "api_keys" WHERE "key" = $1 LIMIT 1

- ``query``: the operator's own SQL with one parameter, the key, written ``$1``, ``?`` or ``%s``
  (whichever the operator is used to) and rewritten to the driver's form. The parameter may appear
  more than once; each place receives the key. Placeholders inside string literals, quoted names
  and comments are left alone, and a literal ``%`` is written as itself (it is escaped for the
  MySQL driver here). With PostgreSQL, write ``$1`` when the query also uses the ``jsonb`` ``?``
  operators. Only the first row is used.

The key bound is the secret the client presented. A store that keeps digests can hash in SQL:
``WHERE key_sha256 = encode(sha256(convert_to($1, 'UTF8')), 'hex')`` (PostgreSQL 11+),
``WHERE key_sha256 = SHA2(?, 256)`` (MySQL/MariaDB). SQLite has no built-in SHA-256.

Rows become flat mappings of JSON-like values (:func:`json_like`).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

Dialect = Literal["postgres", "mysql", "sqlite"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_PLACEHOLDER = {"postgres": "$1", "mysql": "%s", "sqlite": "?"}
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$]")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_DOLLAR_PARAM = re.compile(r"\$(\d+)")


@dataclass(frozen=True, slots=True)
class KeyQuery:
    """SQL in the driver's placeholder style, and how many times the key is bound."""

    sql: str
    arity: int

    def arguments(self, key: str) -> tuple[str, ...]:
        return (key,) * self.arity


def is_identifier(name: str) -> bool:
    """True for ``name`` or ``schema.name`` made of letters, digits and ``_``."""
    return _IDENTIFIER.fullmatch(name) is not None


def quote_identifier(name: str, dialect: Dialect) -> str:
    """``name`` quoted for ``dialect``; callers have checked it with :func:`is_identifier`."""
    mark = "`" if dialect == "mysql" else '"'
    return ".".join(f"{mark}{part}{mark}" for part in name.split("."))


def table_query(table: str, key_column: str, fields: Sequence[str], dialect: Dialect) -> KeyQuery:
    """``SELECT fields FROM table WHERE key_column = <key> LIMIT 1``; ValueError on a bad name."""
    for what, name in [("table", table), ("key_column", key_column)] + [
        ("fields", field) for field in fields
    ]:
        if not is_identifier(name):
            raise ValueError(
                f"{what}: {name!r} is not a plain name (letters, digits and _, optionally "
                "schema.name); write a custom `query` for anything else"
            )
    columns = ", ".join(quote_identifier(field, dialect) for field in fields) or "*"
    sql = (
        f"SELECT {columns} FROM {quote_identifier(table, dialect)} "
        f"WHERE {quote_identifier(key_column, dialect)} = {_PLACEHOLDER[dialect]} LIMIT 1"
    )
    return KeyQuery(sql, 1)


def custom_query(sql: str, dialect: Dialect) -> KeyQuery:
    """``sql`` with its key parameter written the dialect's way; ValueError when unclear."""
    spans = list(_placeholders(sql, dialect))
    styles = {style for _, _, style in spans}
    if "$" in styles:
        if any(sql[start + 1 : end] != "1" for start, end, style in spans if style == "$"):
            raise ValueError("query: only one parameter, $1 (the key), can be used")
        chosen = "$"  # "?" is then PostgreSQL's jsonb operator, and "%s" is not a parameter
    elif len(styles) > 1:
        raise ValueError("query: mixes ? and %s; write the key parameter one way")
    elif styles:
        chosen = styles.pop()
    else:
        raise ValueError("query: needs one parameter for the key, written $1, ? or %s")
    chosen_spans = [(start, end) for start, end, style in spans if style == chosen]
    pieces: list[str] = []
    cursor = 0
    for start, end in chosen_spans:
        pieces.append(_literal(sql[cursor:start], dialect))
        pieces.append(_PLACEHOLDER[dialect])
        cursor = end
    pieces.append(_literal(sql[cursor:], dialect))
    arity = 1 if dialect == "postgres" else len(chosen_spans)
    return KeyQuery("".join(pieces), arity)


def _literal(text: str, dialect: Dialect) -> str:
    # PyMySQL formats the whole statement with "%", so every literal percent sign must be doubled.
    return text.replace("%", "%%") if dialect == "mysql" else text


def _placeholders(sql: str, dialect: Dialect) -> list[tuple[int, int, str]]:
    """Spans of ``$n``, ``?`` and ``%s`` outside literals, quoted names and comments."""
    found: list[tuple[int, int, str]] = []
    i, length = 0, len(sql)
    while i < length:
        char = sql[i]
        if char == "'":
            backslashes = dialect == "mysql" or (i > 0 and sql[i - 1] in "eE")
            i = _skip_quoted(sql, i, "'", backslashes)
        elif char == '"' or (char == "`" and dialect != "postgres"):
            i = _skip_quoted(sql, i, char, backslashes=dialect == "mysql" and char == '"')
        elif sql.startswith("--", i) or (char == "#" and dialect == "mysql"):
            newline = sql.find("\n", i)
            i = length if newline == -1 else newline + 1
        elif sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            i = length if close == -1 else close + 2
        elif char == "$" and (i == 0 or not _IDENT_CHAR.match(sql[i - 1])):
            param = _DOLLAR_PARAM.match(sql, i)
            tag = _DOLLAR_TAG.match(sql, i)
            if param is not None:
                found.append((i, param.end(), "$"))
                i = param.end()
            elif tag is not None and dialect == "postgres":
                close = sql.find(tag.group(0), tag.end())
                i = length if close == -1 else close + len(tag.group(0))
            else:
                i += 1
        elif char == "?":
            found.append((i, i + 1, "?"))
            i += 1
        elif sql.startswith("%s", i):
            found.append((i, i + 2, "%s"))
            i += 2
        else:
            i += 1
    return found


def _skip_quoted(sql: str, start: int, mark: str, backslashes: bool) -> int:
    """The index just after the quoted text opening at ``start`` (doubled marks are escapes)."""
    i = start + 1
    while i < len(sql):
        if backslashes and sql[i] == "\\":
            i += 2
        elif sql[i] == mark:
            if sql.startswith(mark, i + 1):
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return len(sql)


JSONLike = None | bool | int | float | str | list["JSONLike"] | dict[str, "JSONLike"]


def json_like(value: object) -> JSONLike:
    """A database value as a JSON-like value the decision (and Lua) can read.

    ``None``, ``bool``, ``int``, ``float`` and ``str`` stay as they are. ``Decimal`` becomes an
    ``int`` when it is whole (quota columns are often ``NUMERIC(20)``), else a ``float``.
    ``datetime``, ``date`` and ``time`` become ISO 8601 strings; a value stored without a time zone
    stays without one (the decision treats those as UTC, as the seed's Go driver did by default).
    Intervals (``timedelta``) become seconds. ``bytes`` become text when they are UTF-8, else hex.
    Arrays become lists; anything else (UUID, inet, ...) becomes its text form.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        if value.is_finite() and value == value.to_integral_value():
            return int(value)
        return float(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
        return int(seconds) if seconds.is_integer() else seconds
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.hex()
    if isinstance(value, Mapping):
        return {str(k): json_like(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return [member for member in sorted(str(item) for item in value)]
    if isinstance(value, list | tuple):
        return [json_like(item) for item in value]
    return str(value)
