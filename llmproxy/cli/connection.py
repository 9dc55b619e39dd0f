"""How a daemon command finds the daemon: the shared options and the socket discovery.

Every command that talks to the daemon takes the same options (``--config``, ``--socket``,
``--admin-url``, ``--token``, ``--json``), declared once here as ``Annotated`` types. The socket is
found exactly as the daemon finds it — the same :func:`admin_socket_path` on the same config file —
so an operator who can start the daemon with ``-c FILE`` reaches it with ``-c FILE`` too.

:func:`daemon_session` turns every failure (bad config, no daemon, API error) into a message on
stderr and the documented exit code, so the commands contain only the happy path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

import typer

from llmproxy.cli.output import ExitCode, exit_code_for, print_error, print_json, print_note

if TYPE_CHECKING:
    import httpx

    from llmproxy.cli.admin_client import AdminClient
    from llmproxy.config.model import AdminConfig

DEFAULT_CONFIG = Path("config.yaml")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file of the daemon, to find its admin socket "
        "(default: $LLMPROXY_CONFIG, then ./config.yaml).",
        envvar="LLMPROXY_CONFIG",
        show_default=False,
    ),
]
SocketOption = Annotated[
    Path | None,
    typer.Option(
        "--socket",
        help="Admin socket to talk to, instead of the one the config names.",
        show_default=False,
    ),
]
AdminUrlOption = Annotated[
    str | None,
    typer.Option(
        "--admin-url",
        help="URL of the daemon's TCP admin listener (admin.listen), e.g. http://10.0.0.5:9090.",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="Bearer token for --admin-url (admin.token).",
        envvar="LLMPROXY_ADMIN_TOKEN",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print the API's JSON answer (one document), for scripts."),
]


@dataclass(frozen=True, slots=True)
class Target:
    """Where the operator asked to reach the daemon, as given on the command line."""

    config: Path | None = None
    socket: Path | None = None
    admin_url: str | None = None
    token: str | None = None


class TargetError(Exception):
    """The options or the config file do not say where the daemon is (exit code 2)."""


def discover_socket(config_file: Path | None, env: Mapping[str, str], cwd: Path) -> Path:
    """The admin socket of the daemon serving ``config_file`` (``None``: not given).

    An explicitly named file (``--config`` or ``$LLMPROXY_CONFIG``) must exist; without one,
    ``./config.yaml`` is used when present, else the default socket for a daemon started here
    (the default ``admin`` section, ``cwd`` as the config directory).
    """
    from llmproxy.config.model import AdminConfig
    from llmproxy.daemon.admin_socket import admin_socket_path

    if config_file is None:
        candidate = cwd / DEFAULT_CONFIG
        if not candidate.exists():
            return admin_socket_path(AdminConfig(), base_dir=cwd, env=env)
        config_file = candidate
    elif not config_file.is_absolute():
        config_file = cwd / config_file
    admin = admin_section(config_file, env)
    if not admin.enabled:
        raise TargetError(
            f"{config_file}: admin.enabled is false, so the daemon opens no admin socket; "
            "set admin.enabled: true and restart the daemon"
        )
    return admin_socket_path(admin, base_dir=config_file.absolute().parent, env=env)


def admin_section(config_file: Path, env: Mapping[str, str]) -> AdminConfig:
    """The ``admin`` section of ``config_file``, even when another section is broken.

    The file on disk is often the one being edited: a mistake elsewhere in it must not keep the
    operator from reaching the daemon — least of all ``llmproxy reload``, whose refusal is how the
    daemon reports that very mistake. Only a file that cannot be read or parsed, or whose
    ``admin`` section itself is wrong, is an error here.
    """
    from pydantic import ValidationError

    from llmproxy.config._yaml_lines import read_yaml
    from llmproxy.config.errors import ConfigError
    from llmproxy.config.loader import load_config
    from llmproxy.config.model import AdminConfig

    try:
        return load_config(config_file, env).admin
    except ConfigError as error:
        problem = error
    try:
        # Unset variables read as empty here: an operator's shell seldom holds the daemon's
        # secrets (`${REDIS_PASSWORD}`), and the admin section rarely uses any.
        lenient = _Lenient(env)
        text = config_file.read_text(encoding="utf-8")
        data, _lines = read_yaml(text, str(config_file), lenient)
        section = data.get("admin")
        if _unset_in(section):
            # The admin section itself needs the variable: the loader's message says where.
            raise TargetError(f"{config_file}: the config is invalid\n{problem}")
        return AdminConfig.model_validate(section if section is not None else {})
    except (OSError, UnicodeDecodeError, ConfigError, ValidationError):
        raise TargetError(f"{config_file}: the config is invalid\n{problem}") from None


def check_admin_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host, else :class:`TargetError`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetError(
            f"--admin-url: expected http://host:port or https://host:port, got {url!r}"
        )
    return url


def open_client(
    target: Target, env: Mapping[str, str], cwd: Path, timeout: httpx.Timeout | None = None
) -> AdminClient:
    """An :class:`AdminClient` for ``target``; raises :class:`TargetError` when it cannot say.

    ``timeout`` replaces the client's default (shell completion asks with a short one).
    """
    from llmproxy.cli.admin_client import DEFAULT_TIMEOUT, AdminClient

    wait = timeout or DEFAULT_TIMEOUT
    if target.socket is not None and target.admin_url is not None:
        raise TargetError("give --socket or --admin-url, not both")
    if target.admin_url is not None:
        url = check_admin_url(target.admin_url)
        return AdminClient(url=url, token=target.token, timeout=wait)
    if target.socket is not None:
        return AdminClient(socket=target.socket, timeout=wait)
    return AdminClient(socket=discover_socket(target.config, env, cwd), timeout=wait)


@contextlib.contextmanager
def daemon_session(target: Target, *, json_output: bool = False) -> Iterator[AdminClient]:
    """A client for the block; any failure inside ends the command with its exit code.

    With ``json_output`` an API error body is also printed on stdout, so a script reading the
    answer sees the refusal in the same shape.
    """
    from llmproxy.cli.admin_client import AdminError, DaemonUnreachable

    try:
        client = open_client(target, os.environ, Path.cwd())
    except TargetError as error:
        print_error(str(error))
        raise typer.Exit(ExitCode.USAGE) from None
    try:
        with client:
            yield client
    except DaemonUnreachable as error:
        print_error(error.message)
        raise typer.Exit(exit_code_for(error)) from None
    except AdminError as error:
        if json_output and error.body:
            print_json(error.body)
        print_error(error.message)
        if error.code == "no_key_store":
            print_note(
                "hint: the keys commands need the builtin key store "
                "(auth.storage: builtin, or a `builtin` provider in auth.pipeline)"
            )
        raise typer.Exit(exit_code_for(error)) from None


_UNSET = "\x00unset:"


def _unset_in(section: object) -> str | None:
    """The first unset variable a value of ``section`` used (see `_Lenient`), or None."""
    values = section.values() if isinstance(section, dict) else ()
    for value in values:
        if isinstance(value, str) and _UNSET in value:
            return value.split(_UNSET, 1)[1].split("\x00", 1)[0]
    return None


class _Lenient(Mapping[str, str]):
    """``env`` in which every variable is set: an unset one reads as a marker, so the admin
    section can still refuse one it uses while the rest of the file is read."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def __getitem__(self, name: str) -> str:
        return self.get(name)

    def get(self, name: str, default: object = None) -> str:
        value = self._env.get(name)
        return f"{_UNSET}{name}\x00" if value is None else value

    def __contains__(self, name: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)
