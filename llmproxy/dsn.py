"""Connection strings and addresses, parsed without I/O.

The seed (Go) configs name their servers in the forms its drivers understood; these functions turn
each of them into what the Python drivers take, and raise :class:`ValueError` with a message that
never contains a password.

Accepted forms:

- Redis ``addr``: ``host:port``, ``host`` (port 6379), ``[::1]:6379``.
- PostgreSQL: a URL, ``postgres://user:pass@host:5432/db?sslmode=disable`` (``postgresql://``
  too), or libpq's keyword form ``host=db user=app password='s3 cret' dbname=keys``.
- MySQL / MariaDB: a URL, ``mysql://user:pass@host:3306/db`` (``mariadb://`` too), or the Go
  driver's form ``user:pass@tcp(host:3306)/db?charset=utf8mb4`` (``unix(/run/mysqld.sock)`` for a
  socket). Only ``charset`` is honoured among the query parameters; ``tls``/``ssl-mode`` asking
  for TLS are refused rather than silently ignored; the Go driver's other options (``parseTime``,
  ``loc``, ``timeout``, ...) are accepted and ignored.
- SQLite: a file path, ``sqlite://`` + a path (``sqlite:///var/lib/keys.db`` is
  ``/var/lib/keys.db``; ``sqlite://keys.db`` is relative), or a ``file:`` URI whose query is
  dropped. The file is always opened read-only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

MYSQL_DEFAULT_PORT = 3306
REDIS_DEFAULT_PORT = 6379

_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)", re.IGNORECASE)
_GO_NETWORK = re.compile(r"(?P<net>[a-z0-9]*)(?:\((?P<addr>[^)]*)\))?")
_PG_KEYWORD = re.compile(r"\s*([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")
_MYSQL_IGNORED_PARAMS = frozenset(
    {
        "allowallfiles",
        "allowcleartextpasswords",
        "allownativepasswords",
        "allowoldpasswords",
        "checkconnliveness",
        "clientfoundrows",
        "collation",
        "columnswithalias",
        "connect_timeout",
        "interpolateparams",
        "loc",
        "maxallowedpacket",
        "multistatements",
        "parsetime",
        "readtimeout",
        "rejectreadonly",
        "timeout",
        "writetimeout",
    }
)
_TLS_OFF = frozenset({"", "false", "0", "disabled", "disable", "off"})


def scrub_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***``, for error messages and logs.

    >>> scrub_dsn("postgres://app:hunter2@db/keys")
    'postgres://app:***@db/keys'
    """
    text = _KEYWORD_PASSWORD.sub(r"\1***", dsn)
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    # The credentials end at the last "@": passwords may contain "@" and ":" unescaped in the
    # Go form, and hiding too much of a malformed string is better than leaking part of it.
    at = rest.rfind("@")
    if at != -1:
        user, colon, _ = rest[:at].partition(":")
        if colon:
            rest = f"{user}:***{rest[at:]}"
    return scheme + sep + rest


def split_host_port(addr: str, default_port: int) -> tuple[str, int]:
    """``("host", port)`` from ``host:port``, ``host`` or ``[v6]:port``."""
    addr = addr.strip()
    if addr.startswith("["):
        host, bracket, tail = addr[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError(f"invalid address {addr!r}: expected [ipv6]:port")
        port_text = tail[1:]
    elif addr.count(":") > 1:
        host, port_text = addr, ""  # a bare IPv6 address
    else:
        host, _, port_text = addr.partition(":")
    if not host:
        raise ValueError(f"invalid address {addr!r}: no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid address {addr!r}: port must be a number from 1 to 65535")
    return host, int(port_text)


def is_postgres_url(location: str) -> bool:
    """A store setting (``auth.builtin_db``, ``usage.database``) names PostgreSQL, not a SQLite
    path."""
    return location.strip().lower().startswith(("postgresql://", "postgres://"))


def postgres_dsn(dsn: str) -> str:
    """A ``postgresql://`` URL asyncpg accepts, from a URL or libpq's ``key=value`` form."""
    dsn = dsn.strip()
    scheme = dsn.partition("://")[0].lower() if "://" in dsn else ""
    if scheme in ("postgres", "postgresql"):
        try:
            parts = urlsplit(dsn)
            parts.port  # noqa: B018 - urlsplit checks the port only when it is read
        except ValueError as exc:
            raise ValueError(f"invalid PostgreSQL dsn {scrub_dsn(dsn)!r}: {exc}") from None
        return dsn
    if scheme:
        raise ValueError(
            f"invalid PostgreSQL dsn {scrub_dsn(dsn)!r}: scheme must be postgres:// or "
            "postgresql://"
        )
    return _postgres_keywords_to_url(dsn)


def _postgres_keywords_to_url(dsn: str) -> str:
    words: dict[str, str] = {}
    position = 0
    while position < len(dsn.rstrip()):
        match = _PG_KEYWORD.match(dsn, position)
        if match is None:
            raise ValueError(
                f"invalid PostgreSQL dsn {scrub_dsn(dsn)!r}: expected a postgres:// URL or "
                "key=value pairs"
            )
        value = match.group(2)
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        words[match.group(1).lower()] = value
        position = match.end()
    if not words:
        raise ValueError("empty PostgreSQL dsn")
    user = quote(words.pop("user", ""), safe="")
    password = quote(words.pop("password", ""), safe="")
    host = words.pop("host", "")
    port = words.pop("port", "")
    database = quote(words.pop("dbname", ""), safe="")
    if host.startswith("/"):  # a Unix socket directory goes in the query
        words["host"], host = host, ""
    elif ":" in host:
        host = f"[{host}]"
    userinfo = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    netloc = userinfo + host + (f":{port}" if port else "")
    query = f"?{urlencode(words)}" if words else ""
    return f"postgresql://{netloc}/{database}{query}"


@dataclass(frozen=True, slots=True)
class MySQLTarget:
    """Where a MySQL/MariaDB pool connects; ``repr`` hides the password."""

    host: str = "127.0.0.1"
    port: int = MYSQL_DEFAULT_PORT
    user: str = ""
    password: str = field(default="", repr=False)
    database: str = ""
    unix_socket: str = ""
    charset: str = "utf8mb4"


def parse_mysql_dsn(dsn: str) -> MySQLTarget:
    """The target of ``mysql://user:pass@host:port/db`` or Go's ``user:pass@tcp(host:port)/db``."""
    dsn = dsn.strip()
    if not dsn:
        raise ValueError("empty MySQL dsn")
    if dsn.lower().startswith(("mysql://", "mariadb://")):
        return _mysql_from_url(dsn)
    if "://" in dsn:
        raise ValueError(
            f"invalid MySQL dsn {scrub_dsn(dsn)!r}: scheme must be mysql:// or mariadb://, or use "
            "the user:pass@tcp(host:3306)/db form"
        )
    return _mysql_from_go(dsn)


def _mysql_from_url(dsn: str) -> MySQLTarget:
    try:
        parts = urlsplit(dsn)
        port = parts.port or MYSQL_DEFAULT_PORT
    except ValueError as exc:
        raise ValueError(f"invalid MySQL dsn {scrub_dsn(dsn)!r}: {exc}") from None
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    socket = params.pop("unix_socket", params.pop("socket", ""))
    return MySQLTarget(
        host=parts.hostname or "127.0.0.1",
        port=port,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=unquote(parts.path.lstrip("/")),
        unix_socket=socket,
        charset=_mysql_charset(dsn, params),
    )


def _mysql_from_go(dsn: str) -> MySQLTarget:
    # go-sql-driver's grammar: [user[:password]@][net[(addr)]]/dbname[?param=value&...]. As in Go,
    # the database starts after the last "/" and the credentials end at the last "@" before it,
    # so a password may contain "@", ":" and "/".
    slash = dsn.rfind("/")
    if slash == -1:
        raise ValueError(
            f"invalid MySQL dsn {scrub_dsn(dsn)!r}: expected user:pass@tcp(host:3306)/dbname"
        )
    head, (database, _, query) = dsn[:slash], dsn[slash + 1 :].partition("?")
    user = password = ""
    at = head.rfind("@")
    if at != -1:
        user, _, password = head[:at].partition(":")
        head = head[at + 1 :]
    network = _GO_NETWORK.fullmatch(head)
    if network is None:
        raise ValueError(
            f"invalid MySQL dsn {scrub_dsn(dsn)!r}: expected tcp(host:port) or unix(/path) "
            "before /dbname"
        )
    net, addr = network.group("net") or "tcp", network.group("addr") or ""
    host, port, socket = "127.0.0.1", MYSQL_DEFAULT_PORT, ""
    if net in ("tcp", "tcp4", "tcp6"):
        if addr:
            host, port = split_host_port(addr, MYSQL_DEFAULT_PORT)
    elif net == "unix":
        if not addr:
            raise ValueError(f"invalid MySQL dsn {scrub_dsn(dsn)!r}: unix() needs a socket path")
        socket = addr
    else:
        raise ValueError(f"invalid MySQL dsn {scrub_dsn(dsn)!r}: unknown network {net!r}")
    params = dict(parse_qsl(query, keep_blank_values=True))
    return MySQLTarget(
        host=host,
        port=port,
        user=user,
        password=password,
        database=unquote(database),
        unix_socket=socket,
        charset=_mysql_charset(dsn, params),
    )


def _mysql_charset(dsn: str, params: dict[str, str]) -> str:
    charset = "utf8mb4"
    for name, value in params.items():
        lowered = name.lower()
        if lowered == "charset":
            charset = value.split(",")[0].strip() or charset  # Go allows a fallback list
        elif lowered in ("tls", "ssl", "ssl-mode", "ssl_mode", "sslmode"):
            if value.lower() not in _TLS_OFF:
                raise ValueError(
                    f"MySQL dsn {scrub_dsn(dsn)!r}: TLS ({name}={value}) is not supported yet; "
                    "remove the parameter or connect through a local TLS tunnel"
                )
        elif lowered not in _MYSQL_IGNORED_PARAMS:
            raise ValueError(
                f"MySQL dsn {scrub_dsn(dsn)!r}: unknown parameter {name!r} (accepted: charset, "
                "and the Go driver's options, which are ignored)"
            )
    return charset


def sqlite_path(dsn: str) -> str:
    """The file path named by a SQLite ``dsn`` (plain path, ``sqlite://path`` or ``file:path``)."""
    text = dsn.strip()
    if text.lower().startswith("sqlite://"):
        path = text[len("sqlite://") :]
    elif text.lower().startswith("file:"):
        path = unquote(text[len("file:") :].partition("?")[0])
        if path.startswith("//"):  # file://localhost/path or file:///path
            path = "/" + path[2:].partition("/")[2]
    else:
        path = text
    if not path or path == ":memory:":
        raise ValueError(f"SQLite dsn {dsn!r} names no file (an in-memory database holds no keys)")
    return path


def sqlite_readonly_uri(path: str) -> str:
    """The ``file:`` URI that opens ``path`` read-only (``sqlite3.connect(uri, uri=True)``)."""
    return f"file:{quote(path, safe='/')}?mode=ro"
