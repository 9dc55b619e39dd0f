"""The admin socket's file: where it lives, binding it owner-only, and who is on the other end.

The admin API is reachable by anyone who can connect to this socket, so the file itself is the
first line of defence: it is created ``0600`` inside a ``0700`` directory, and the daemon also
checks the peer's uid (:func:`peer_uid`) on every request. The CLI finds the socket with the same
:func:`admin_socket_path` the daemon binds it with, so the two can never disagree.

A socket file left behind by a killed daemon is replaced; one a live daemon still answers on is
never taken over (two daemons on one socket would make the CLI talk to a random one).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Protocol

from llmproxy.config.model import AdminConfig

MAX_PATH_BYTES: Final = 107
"""Longest Unix socket path Linux accepts (``sun_path`` is 108 bytes with its terminating NUL)."""

_PROBE_TIMEOUT: Final = 1.0
"""How long a connect to an existing socket file may take before it counts as live."""

_BACKLOG: Final = 128

_PEERCRED: Final = struct.Struct("3i")
"""``struct ucred``: pid, uid, gid."""


class AdminSocketError(OSError):
    """The admin socket cannot be bound; the message names the path and what to do."""


class AdminSocketInUse(AdminSocketError):
    """Another process (most likely another llmproxy daemon) accepts connections on the path."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"another llmproxy daemon answers on {path}; stop it first, or give this one "
            "another admin.socket"
        )
        self.path = path


def admin_socket_path(admin: AdminConfig, base_dir: Path, env: Mapping[str, str]) -> Path:
    """The socket path for ``admin``: pure, so the daemon and the CLI compute the same one.

    ``admin.socket`` when set (a relative path is relative to ``base_dir``, the config file's
    directory; ``~/`` is the ``HOME`` of ``env``); else ``$XDG_RUNTIME_DIR/llmproxy/admin.sock``
    (a per-user, tmpfs directory on systemd machines); else ``base_dir/run/admin.sock``.
    """
    if admin.socket:
        text = admin.socket
        home = env.get("HOME")
        if home and (text == "~" or text.startswith("~/")):
            text = home + text[1:]
        path = Path(text)
        return path if path.is_absolute() else base_dir / path
    runtime_dir = env.get("XDG_RUNTIME_DIR", "")
    # The XDG spec says a relative value must be ignored.
    if runtime_dir and Path(runtime_dir).is_absolute():
        return Path(runtime_dir) / "llmproxy" / "admin.sock"
    return base_dir / "run" / "admin.sock"


def bind_admin_socket(path: Path) -> socket.socket:
    """A listening, non-blocking Unix socket bound at ``path``, readable by its owner only.

    Raises :class:`AdminSocketInUse` when a live process answers on ``path``, and
    :class:`AdminSocketError` when ``path`` is too long, is not a socket, or cannot be checked.
    """
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise AdminSocketError(
            f"admin socket path {path} is longer than the {MAX_PATH_BYTES} bytes a Unix socket "
            "path may have; set a shorter admin.socket"
        )
    _private_directory(path.parent)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # The umask makes the file 0600 from its first instant; a chmod afterwards would leave a
        # window in which another user could connect.
        previous = os.umask(0o077)
        try:
            sock.bind(os.fspath(path))
        finally:
            os.umask(previous)
        os.chmod(path, 0o600)
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:  # another daemon bound it after our check
            raise AdminSocketInUse(path) from None
        raise
    return sock


def _private_directory(directory: Path) -> None:
    """Create ``directory`` as 0700, or tighten it to 0700 when it is ours and open to others."""
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir's mode passes through the umask; say it explicitly.
        os.chmod(directory, 0o700)
        return
    info = directory.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        os.chmod(directory, 0o700)


def _remove_stale(path: Path) -> None:
    """Unlink a socket file nobody accepts connections on; refuse anything else at ``path``."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise AdminSocketError(
            f"{path} exists and is not a socket; remove it or set another admin.socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT)
    try:
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        # Nothing listens: a daemon died without removing its socket.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    except (TimeoutError, BlockingIOError):
        # A listener whose backlog is full is still a listener.
        raise AdminSocketInUse(path) from None
    except OSError as exc:
        raise AdminSocketError(
            f"cannot tell whether a daemon answers on {path}: {exc.strerror or exc}"
        ) from exc
    finally:
        probe.close()
    raise AdminSocketInUse(path)


class SocketLike(Protocol):
    """What :func:`peer_uid` needs of a socket (asyncio and uvloop hand out socket wrappers)."""

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def peer_uid(sock: SocketLike) -> int | None:
    """The uid of the process at the other end of a connected Unix socket.

    None where the platform has no ``SO_PEERCRED`` (the socket file's mode is then the only
    guard). An ``OSError`` from the kernel propagates: the caller must refuse, never guess.
    """
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    data = sock.getsockopt(socket.SOL_SOCKET, option, _PEERCRED.size)
    _pid, uid, _gid = _PEERCRED.unpack(data)
    return int(uid)
