"""The SQL a database provider runs: quoted names, placeholder rewriting and value conversion."""

from __future__ import annotations

import datetime
import uuid
from decimal import Decimal

import pytest

from llmproxy.auth.providers._sql import KeyQuery, custom_query, json_like, table_query


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        ("postgres", 'SELECT * FROM "api_keys" WHERE "key" = $1 LIMIT 1'),
        ("mysql", "SELECT * FROM `api_keys` WHERE `key` = %s LIMIT 1"),
        ("sqlite", 'SELECT * FROM "api_keys" WHERE "key" = ? LIMIT 1'),
    ],
)
def test_table_query_quotes_names_for_each_dialect(dialect, sql):
    """Names are quoted (so `key`, reserved in MySQL, works) with the driver's placeholder."""
    assert table_query("api_keys", "key", (), dialect) == KeyQuery(sql, 1)


def test_table_query_selects_fields_and_schema_names():
    """fields become the select list; schema.table is quoted part by part."""
    query = table_query("auth.api_keys", "secret", ("user_id", "k.status"), "postgres")
    assert query.sql == (
        'SELECT "user_id", "k"."status" FROM "auth"."api_keys" WHERE "secret" = $1 LIMIT 1'
    )


@pytest.mark.parametrize(
    ("table", "key_column", "fields", "where"),
    [
        ("api_keys; DROP TABLE users", "key", (), "table"),
        ("api keys", "key", (), "table"),
        ("1keys", "key", (), "table"),
        ("a.b.c", "key", (), "table"),
        ("api_keys", 'key" OR 1=1 --', (), "key_column"),
        ("api_keys", "key", ("user_id", "*"), "fields"),
        ("api_keys", "key", ("sleep(10)",), "fields"),
        ("api_keys", "", (), "key_column"),
        ("ключи", "key", (), "table"),
    ],
)
def test_table_query_refuses_anything_but_plain_names(table, key_column, fields, where):
    """A name that is not letters/digits/_ (optionally schema.name) is refused: no SQL injection."""
    with pytest.raises(ValueError, match=f"^{where}: .* is not a plain name"):
        table_query(table, key_column, fields, "postgres")


@pytest.mark.parametrize(
    ("sql", "dialect", "expected", "arity"),
    [
        ("SELECT * FROM k WHERE key = $1", "postgres", "SELECT * FROM k WHERE key = $1", 1),
        ("SELECT * FROM k WHERE key = ?", "postgres", "SELECT * FROM k WHERE key = $1", 1),
        ("SELECT * FROM k WHERE key = %s", "postgres", "SELECT * FROM k WHERE key = $1", 1),
        ("SELECT * FROM k WHERE key = $1", "mysql", "SELECT * FROM k WHERE key = %s", 1),
        ("SELECT * FROM k WHERE key = ?", "mysql", "SELECT * FROM k WHERE key = %s", 1),
        ("SELECT * FROM k WHERE key = $1", "sqlite", "SELECT * FROM k WHERE key = ?", 1),
        ("SELECT * FROM k WHERE key = %s", "sqlite", "SELECT * FROM k WHERE key = ?", 1),
        # The key may be used more than once; each place receives it.
        (
            "SELECT * FROM k WHERE a = ? OR b = ?",
            "mysql",
            "SELECT * FROM k WHERE a = %s OR b = %s",
            2,
        ),
        (
            "SELECT * FROM k WHERE a = $1 OR b = $1",
            "postgres",
            "SELECT * FROM k WHERE a = $1 OR b = $1",
            1,
        ),
        (
            "SELECT * FROM k WHERE a = $1 OR b = $1",
            "sqlite",
            "SELECT * FROM k WHERE a = ? OR b = ?",
            2,
        ),
    ],
)
def test_custom_query_placeholders_are_rewritten(sql, dialect, expected, arity):
    """$1, ? and %s are all accepted and rewritten to the driver's own placeholder."""
    assert custom_query(sql, dialect) == KeyQuery(expected, arity)


@pytest.mark.parametrize(
    ("sql", "dialect", "expected"),
    [
        # Literals, quoted names and comments are not scanned for placeholders.
        (
            "SELECT '?', \"$1\", k.* FROM k WHERE key = ? -- or ?\n AND 1 = 1 /* ? */",
            "postgres",
            "SELECT '?', \"$1\", k.* FROM k WHERE key = $1 -- or ?\n AND 1 = 1 /* ? */",
        ),
        (
            "SELECT 'it''s ?' FROM k WHERE key = $1",
            "sqlite",
            "SELECT 'it''s ?' FROM k WHERE key = ?",
        ),
        (
            "SELECT 'a\\' ?' FROM `k?` WHERE `key` = ? # ?",
            "mysql",
            "SELECT 'a\\' ?' FROM `k?` WHERE `key` = %s # ?",
        ),
        # PostgreSQL dollar quoting, and the jsonb ? operator next to $1.
        (
            "SELECT $tag$ ? $tag$ FROM k WHERE key = $1 AND meta ? 'plan'",
            "postgres",
            "SELECT $tag$ ? $tag$ FROM k WHERE key = $1 AND meta ? 'plan'",
        ),
        # PyMySQL formats with %, so literal percent signs are doubled for MySQL only.
        (
            "SELECT * FROM k WHERE key = ? AND note LIKE 'a%'",
            "mysql",
            "SELECT * FROM k WHERE key = %s AND note LIKE 'a%%'",
        ),
        (
            "SELECT * FROM k WHERE key = ? AND note LIKE 'a%'",
            "postgres",
            "SELECT * FROM k WHERE key = $1 AND note LIKE 'a%'",
        ),
        # $ inside a name is part of the name.
        ("SELECT a$1 FROM k WHERE key = ?", "sqlite", "SELECT a$1 FROM k WHERE key = ?"),
    ],
)
def test_custom_query_leaves_literals_alone(sql, dialect, expected):
    """Placeholder-like text inside strings, quoted names, comments and $$ quotes is untouched."""
    assert custom_query(sql, dialect).sql == expected


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT * FROM k", "needs one parameter"),
        ("SELECT * FROM k WHERE key = '?'", "needs one parameter"),
        ("SELECT * FROM k WHERE key = $2", "only one parameter, \\$1"),
        ("SELECT * FROM k WHERE key = $1 AND user_id = $2", "only one parameter"),
        ("SELECT * FROM k WHERE key = ? AND b = %s", "mixes \\? and %s"),
    ],
)
def test_custom_query_must_have_one_clear_parameter(sql, message):
    """A query without the key parameter, or with a second one, is refused."""
    with pytest.raises(ValueError, match=message):
        custom_query(sql, "postgres")


def test_key_is_bound_once_per_placeholder():
    """The arguments are the key, once per placeholder the driver sees."""
    assert KeyQuery("x", 2).arguments("sk") == ("sk", "sk")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (7, 7),
        (0.5, 0.5),
        ("s", "s"),
        (Decimal("1000000"), 1000000),
        (Decimal("12.00"), 12),
        (Decimal("12.50"), 12.5),
        (Decimal("NaN"), pytest.approx(float("nan"), nan_ok=True)),
        (datetime.datetime(2030, 1, 2, 3, 4, 5), "2030-01-02T03:04:05"),
        (
            datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
            "2030-01-02T03:04:05+00:00",
        ),
        (datetime.date(2030, 1, 2), "2030-01-02"),
        (datetime.time(3, 4, 5), "03:04:05"),
        (datetime.timedelta(hours=1), 3600),
        (datetime.timedelta(seconds=1.5), 1.5),
        (b"text", "text"),
        (b"\xff\x00", "ff00"),
        (memoryview(b"mv"), "mv"),
        ([Decimal("1"), "a"], [1, "a"]),
        ((1, 2), [1, 2]),
        ({"b", "a"}, ["a", "b"]),
        ({"n": Decimal("2.5")}, {"n": 2.5}),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
    ],
)
def test_json_like_conversion(value, expected):
    """Database values become JSON-like values: whole decimals int, times ISO 8601, bytes text."""
    assert json_like(value) == expected
