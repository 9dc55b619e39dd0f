"""Connection strings and addresses: every accepted form, the refusals, and password scrubbing."""

from __future__ import annotations

import pytest

from llmproxy.dsn import (
    MySQLTarget,
    parse_mysql_dsn,
    postgres_dsn,
    scrub_dsn,
    split_host_port,
    sqlite_path,
    sqlite_readonly_uri,
)


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            "mysql://app:s3cret@db.internal:3307/keys",
            MySQLTarget("db.internal", 3307, "app", "s3cret", "keys"),
        ),
        ("mariadb://root@127.0.0.1/test", MySQLTarget("127.0.0.1", 3306, "root", "", "test")),
        (
            "mysql://app:p%40ss%3Aw%2Fd@db/keys?charset=utf8",
            MySQLTarget("db", 3306, "app", "p@ss:w/d", "keys", charset="utf8"),
        ),
        (
            "mysql://app@localhost/keys?unix_socket=/run/mysqld/mysqld.sock",
            MySQLTarget(
                "localhost", 3306, "app", "", "keys", unix_socket="/run/mysqld/mysqld.sock"
            ),
        ),
    ],
)
def test_mysql_url_form(dsn, expected):
    """mysql:// and mariadb:// URLs give host, port (3306 by default), credentials and database."""
    assert parse_mysql_dsn(dsn) == expected


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("root:@tcp(127.0.0.1:3306)/test", MySQLTarget("127.0.0.1", 3306, "root", "", "test")),
        (
            "app:s3cret@tcp(db.internal:3307)/keys?charset=utf8mb4&parseTime=True&loc=Local",
            MySQLTarget("db.internal", 3307, "app", "s3cret", "keys"),
        ),
        ("app:p@ss:w/rd@tcp(db)/keys", MySQLTarget("db", 3306, "app", "p@ss:w/rd", "keys")),
        ("app@tcp([::1]:3306)/keys", MySQLTarget("::1", 3306, "app", "", "keys")),
        ("app:x@/keys", MySQLTarget("127.0.0.1", 3306, "app", "x", "keys")),
        ("/keys", MySQLTarget("127.0.0.1", 3306, "", "", "keys")),
        (
            "app:x@unix(/run/mysqld/mysqld.sock)/keys",
            MySQLTarget(
                "127.0.0.1", 3306, "app", "x", "keys", unix_socket="/run/mysqld/mysqld.sock"
            ),
        ),
        (
            "app:x@tcp(db:3306)/keys?charset=utf8mb4,utf8",
            MySQLTarget("db", 3306, "app", "x", "keys"),
        ),
    ],
)
def test_mysql_go_form(dsn, expected):
    """The seed's Go DSN user:pass@tcp(host:port)/db parses as go-sql-driver reads it."""
    assert parse_mysql_dsn(dsn) == expected


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("", "empty"),
        ("app:x@tcp(db:3306)", "expected user:pass@tcp"),
        ("app:x@udp(db)/keys", "unknown network 'udp'"),
        ("app:x@tcp(db:99999)/keys", "port must be a number"),
        ("app:x@unix()/keys", "needs a socket path"),
        ("app:x@tcp(db/keys", "expected tcp"),
        ("postgres://app:x@db/keys", "scheme must be mysql://"),
        ("app:x@tcp(db)/keys?tls=true", "TLS .* is not supported"),
        ("mysql://app:x@db/keys?ssl-mode=REQUIRED", "TLS .* is not supported"),
        ("app:x@tcp(db)/keys?frobnicate=1", "unknown parameter 'frobnicate'"),
        ("mysql://app:x@db:port/keys", "invalid MySQL dsn"),
    ],
)
def test_mysql_bad_dsn_is_refused_without_the_password(dsn, message):
    """A DSN that cannot work is a ValueError that says why and never shows the password."""
    with pytest.raises(ValueError, match=message) as caught:
        parse_mysql_dsn(dsn)
    assert ":x@" not in str(caught.value)


def test_mysql_target_repr_hides_the_password():
    """A MySQLTarget printed in a log or traceback does not show its password."""
    assert "s3cret" not in repr(parse_mysql_dsn("app:s3cret@tcp(db)/keys"))


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgres://app:x@db:5432/keys", "postgres://app:x@db:5432/keys"),
        ("postgresql://db/keys?sslmode=disable", "postgresql://db/keys?sslmode=disable"),
        (
            "host=db port=5433 user=app password='s3 cr\\'et' dbname=keys sslmode=disable",
            "postgresql://app:s3%20cr%27et@db:5433/keys?sslmode=disable",
        ),
        (
            "host=/var/run/postgresql dbname=keys",
            "postgresql:///keys?host=%2Fvar%2Frun%2Fpostgresql",
        ),
        ("host=::1 user=app", "postgresql://app@[::1]/"),
    ],
)
def test_postgres_dsn_forms(dsn, expected):
    """PostgreSQL URLs pass through; libpq key=value strings become the equivalent URL."""
    assert postgres_dsn(dsn) == expected


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("mysql://app:x@db/keys", "scheme must be postgres://"),
        ("postgres://app:x@db:port/keys", "invalid PostgreSQL dsn"),
        ("host=db this is not a dsn", "expected a postgres:// URL"),
        ("", "empty PostgreSQL dsn"),
    ],
)
def test_postgres_bad_dsn_is_refused(dsn, message):
    """A PostgreSQL DSN that cannot work is a ValueError without the password."""
    with pytest.raises(ValueError, match=message) as caught:
        postgres_dsn(dsn)
    assert ":x@" not in str(caught.value)


@pytest.mark.parametrize(
    ("dsn", "scrubbed"),
    [
        ("postgres://app:hunter2@db/keys", "postgres://app:***@db/keys"),
        ("postgres://app@db/keys", "postgres://app@db/keys"),
        ("postgres://db/keys?password=hunter2&x=1", "postgres://db/keys?password=***&x=1"),
        ("app:hun@ter2@tcp(db:3306)/keys", "app:***@tcp(db:3306)/keys"),
        ("host=db password='hun ter2' user=app", "host=db password=*** user=app"),
        ("host=db password=hunter2", "host=db password=***"),
        ("/var/lib/keys.db", "/var/lib/keys.db"),
    ],
)
def test_scrub_dsn_hides_passwords(dsn, scrubbed):
    """scrub_dsn replaces the password of every DSN form with ***."""
    assert scrub_dsn(dsn) == scrubbed


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("redis:6380", ("redis", 6380)),
        ("redis", ("redis", 6379)),
        ("[::1]:6380", ("::1", 6380)),
        ("[::1]", ("::1", 6379)),
        ("::1", ("::1", 6379)),
    ],
)
def test_split_host_port(addr, expected):
    """Addresses are host:port, host alone (default port) or bracketed IPv6."""
    assert split_host_port(addr, 6379) == expected


@pytest.mark.parametrize("addr", [":6379", "redis:0", "redis:x", "[::1", "[::1]x"])
def test_split_host_port_refuses_bad_addresses(addr):
    """An address without a host, or with a bad port, is a ValueError."""
    with pytest.raises(ValueError, match="invalid address"):
        split_host_port(addr, 6379)


@pytest.mark.parametrize(
    ("dsn", "path"),
    [
        ("/var/lib/keys.db", "/var/lib/keys.db"),
        ("keys.db", "keys.db"),
        ("sqlite:///var/lib/keys.db", "/var/lib/keys.db"),
        ("sqlite://keys.db", "keys.db"),
        ("file:keys.db?cache=shared", "keys.db"),
        ("file:///var/lib/keys%20old.db", "/var/lib/keys old.db"),
    ],
)
def test_sqlite_path(dsn, path):
    """A SQLite DSN is a path, sqlite:// + a path, or a file: URI (its options dropped)."""
    assert sqlite_path(dsn) == path


@pytest.mark.parametrize("dsn", ["", ":memory:", "sqlite://", "sqlite://:memory:"])
def test_sqlite_without_a_file_is_refused(dsn):
    """An in-memory or empty SQLite DSN holds no keys and is refused."""
    with pytest.raises(ValueError, match="names no file"):
        sqlite_path(dsn)


def test_sqlite_uri_is_read_only_and_quoted():
    """The SQLite URI opens the file read-only, with ?, # and spaces in the path escaped."""
    assert sqlite_readonly_uri("/tmp/a b?#.db") == "file:/tmp/a%20b%3F%23.db?mode=ro"
