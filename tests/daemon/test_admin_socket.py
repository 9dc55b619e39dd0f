"""The admin socket file: where it is, owner-only modes, stale files replaced, live ones kept."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmproxy.config.model import AdminConfig
from llmproxy.daemon.admin_socket import (
    AdminSocketError,
    AdminSocketInUse,
    admin_socket_path,
    bind_admin_socket,
    peer_uid,
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh directory under /tmp: Unix socket paths must stay under 108 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="llmp-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        try:
            client.connect(os.fspath(path))
        except OSError:
            return False
    return True


# admin_socket_path -------------------------------------------------------------------------


def test_configured_absolute_path_is_used_as_is() -> None:
    """An absolute admin.socket wins over XDG_RUNTIME_DIR."""
    admin = AdminConfig(socket="/srv/llmproxy/admin.sock")
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    assert admin_socket_path(admin, Path("/etc/llmproxy"), env) == Path("/srv/llmproxy/admin.sock")


def test_configured_relative_path_is_relative_to_the_config_directory() -> None:
    """A relative admin.socket lives next to the config file, not in the working directory."""
    admin = AdminConfig(socket="run/a.sock")
    assert admin_socket_path(admin, Path("/etc/llmproxy"), {}) == Path("/etc/llmproxy/run/a.sock")


def test_configured_path_may_start_at_home() -> None:
    """``~/`` is the HOME of the given environment (the function reads nothing else)."""
    admin = AdminConfig(socket="~/llmproxy.sock")
    assert admin_socket_path(admin, Path("/etc"), {"HOME": "/home/ops"}) == Path(
        "/home/ops/llmproxy.sock"
    )


def test_default_is_under_xdg_runtime_dir() -> None:
    """Without admin.socket, the per-user runtime directory is used when there is one."""
    path = admin_socket_path(AdminConfig(), Path("/etc/llmproxy"), {"XDG_RUNTIME_DIR": "/run/u/7"})
    assert path == Path("/run/u/7/llmproxy/admin.sock")


@pytest.mark.parametrize("env", [{}, {"XDG_RUNTIME_DIR": ""}, {"XDG_RUNTIME_DIR": "relative"}])
def test_default_falls_back_to_run_next_to_the_config(env: dict[str, str]) -> None:
    """No usable XDG_RUNTIME_DIR (unset, empty or relative): ``run/admin.sock`` by the config."""
    path = admin_socket_path(AdminConfig(), Path("/etc/llmproxy"), env)
    assert path == Path("/etc/llmproxy/run/admin.sock")


# bind_admin_socket -------------------------------------------------------------------------


def test_socket_is_owner_only_in_an_owner_only_directory(short_dir: Path) -> None:
    """A missing directory is created 0700; the socket file is 0600, listening, non-blocking."""
    path = short_dir / "run" / "admin.sock"
    sock = bind_admin_socket(path)
    try:
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        info = path.lstat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert sock.getblocking() is False
        assert _connects(path)
    finally:
        sock.close()


def test_an_open_directory_of_ours_is_tightened(short_dir: Path) -> None:
    """An existing directory we own that others may enter becomes 0700."""
    directory = short_dir / "shared"
    directory.mkdir()
    directory.chmod(0o755)
    sock = bind_admin_socket(directory / "admin.sock")
    sock.close()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_the_umask_is_restored(short_dir: Path) -> None:
    """The 0077 umask is held only around bind()."""
    previous = os.umask(0o022)
    try:
        bind_admin_socket(short_dir / "admin.sock").close()
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(previous)


def test_a_stale_socket_file_is_replaced(short_dir: Path) -> None:
    """A socket file nobody listens on (a killed daemon's) is unlinked and bound afresh."""
    path = short_dir / "admin.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(os.fspath(path))
    dead.close()  # the file stays behind, as after kill -9
    assert path.exists()
    assert not _connects(path)
    sock = bind_admin_socket(path)
    try:
        assert _connects(path)
        assert stat.S_IMODE(path.lstat().st_mode) == 0o600
    finally:
        sock.close()


def test_a_live_socket_is_never_stolen(short_dir: Path) -> None:
    """When a process answers on the path, binding fails and that process keeps its socket."""
    path = short_dir / "admin.sock"
    first = bind_admin_socket(path)
    inode = path.stat().st_ino
    try:
        with pytest.raises(AdminSocketInUse, match="another llmproxy daemon answers on") as caught:
            bind_admin_socket(path)
        assert str(path) in str(caught.value)
        assert caught.value.path == path
        assert path.stat().st_ino == inode
        assert _connects(path)
    finally:
        first.close()


def test_a_file_that_is_not_a_socket_is_refused(short_dir: Path) -> None:
    """A regular file at the path is neither removed nor bound over."""
    path = short_dir / "admin.sock"
    path.write_text("keep me")
    with pytest.raises(AdminSocketError, match="exists and is not a socket"):
        bind_admin_socket(path)
    assert path.read_text() == "keep me"


def test_a_too_long_path_is_refused_with_the_reason(short_dir: Path) -> None:
    """Paths over the kernel's limit fail with a message naming the limit, not EINVAL."""
    path = short_dir / ("x" * 120) / "admin.sock"
    with pytest.raises(AdminSocketError, match="longer than the 107 bytes"):
        bind_admin_socket(path)


# peer_uid -----------------------------------------------------------------------------------


def test_peer_uid_is_the_connecting_process_uid() -> None:
    """SO_PEERCRED reports this process's uid for a connection it made to itself."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert peer_uid(left) == os.getuid()
        assert peer_uid(right) == os.getuid()
