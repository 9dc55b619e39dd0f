"""The optional drivers: which pip extra installs each one, and which config needs which.

A base ``pip install llmproxy`` runs the demo, the SQLite key and usage stores and in-memory
limits. PostgreSQL, MySQL/MariaDB and Redis drivers are extras, so a gateway that does not talk
to those servers does not carry (or compile) their clients::

    pip install 'llmproxy[postgres]'   # asyncpg: key store, usage store, database provider
    pip install 'llmproxy[mysql]'      # aiomysql + PyMySQL: database provider
    pip install 'llmproxy[redis]'      # redis + hiredis: shared limits, redis provider
    pip install 'llmproxy[all]'

:data:`EXTRAS` is the one definition: ``pyproject.toml``'s optional dependencies are checked
against it (tests/packaging), and :func:`missing_extras` reads a config against it so that
``config check``, ``serve`` and a reload refuse a config naming a driver that is not installed
with the command that installs it, rather than an ImportError traceback at the first request.
Modules that use a driver import it inside the code that needs it (types under
``TYPE_CHECKING``), so importing the package never needs one.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from llmproxy.config.model import Config
from llmproxy.dsn import is_postgres_url


@dataclass(frozen=True)
class Extra:
    """One pip extra: the modules it installs and what they talk to."""

    name: str
    modules: tuple[str, ...]
    """Top-level import names (``pymysql``, not ``PyMySQL``)."""
    server: str
    """What the driver talks to, in words for an error message."""

    @property
    def install(self) -> str:
        """The command that installs it, quoted for a shell."""
        return f"pip install 'llmproxy[{self.name}]'"


EXTRAS: dict[str, Extra] = {
    "postgres": Extra("postgres", ("asyncpg",), "PostgreSQL"),
    "mysql": Extra("mysql", ("aiomysql", "pymysql"), "MySQL/MariaDB"),
    "redis": Extra("redis", ("redis",), "Redis"),
}
"""Extra name → what it installs. ``all`` is every one of them."""

_DATABASE_DRIVERS = {
    "postgres": "postgres",
    "postgresql": "postgres",
    "mysql": "mysql",
    "mariadb": "mysql",
}


class MissingExtra(ValueError):
    """A config (or a command) needs a driver that this install lacks.

    A ``ValueError``, so every place that refuses a config for a bad value refuses it for this.
    The message names the config key, the extra and the ``pip install`` command.
    """


def installed(extra: str) -> bool:
    """Whether every module of ``extra`` can be imported (found, not imported: cheap)."""
    return all(_found(module) for module in EXTRAS[extra].modules)


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a finder that knows the module is absent may say so by raising
        return False


def require(extra: str, needed_by: str) -> None:
    """Raise :class:`MissingExtra` unless ``extra`` is installed; ``needed_by`` names the user
    (``"usage.database"``, ``"auth.pipeline[0] (redis provider)"``)."""
    if not installed(extra):
        info = EXTRAS[extra]
        raise MissingExtra(
            f"{needed_by} needs the {info.server} driver, which is not installed: {info.install}"
        )


def extras_needed(config: Config) -> list[tuple[str, str]]:
    """``(extra, config key)`` for every driver ``config`` uses, in file order."""
    needed: list[tuple[str, str]] = []
    auth = config.auth
    if is_postgres_url(auth.builtin_db):
        needed.append(("postgres", "auth.builtin_db"))
    for index, provider in enumerate(auth.pipeline):
        where = f"auth.pipeline[{index}] ({provider.type} provider {provider.name!r})"
        if not (auth.enabled and provider.enabled):
            continue
        if provider.type == "redis":
            needed.append(("redis", where))
        elif provider.type == "database" and provider.database is not None:
            extra = _DATABASE_DRIVERS.get(provider.database.driver)
            if extra is not None:
                needed.append((extra, where))
    limits = config.rate_limit
    if limits.enabled and limits.storage == "redis":
        needed.append(("redis", "rate_limit.storage"))
    if config.usage.enabled and is_postgres_url(config.usage.database):
        needed.append(("postgres", "usage.database"))
    return needed


def missing_extras(config: Config) -> str | None:
    """What ``config`` needs that is not installed, one line per config key, or None."""
    lines = []
    for extra, where in extras_needed(config):
        try:
            require(extra, where)
        except MissingExtra as exc:
            lines.append(str(exc))
    return "\n".join(lines) if lines else None


def require_for(config: Config) -> None:
    """Raise :class:`MissingExtra` listing every driver ``config`` needs and lacks."""
    problem = missing_extras(config)
    if problem is not None:
        raise MissingExtra(problem)
