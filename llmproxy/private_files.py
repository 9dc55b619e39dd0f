"""Files and directories the gateway writes are its own: 0600 files in 0700 directories.

Usage records, the outbox, recordings, key hashes and the run directory say who called what, with
which key prefix and what they sent; none of it is for other local users. One definition, used by
every writer, so a new file cannot be forgotten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("llmproxy")

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700


def private_directory(path: Path) -> None:
    """Create ``path`` and each missing parent owner-only; an existing one is left as it is (it
    may be a directory the operator shares on purpose, such as ``/var/lib``)."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(mode=DIRECTORY_MODE, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(directory, DIRECTORY_MODE)  # mkdir's mode passes through the umask


def private_file(path: Path) -> None:
    """Make sure ``path`` exists, created owner-only, before a library (SQLite) opens it with
    the umask's mode; SQLite gives ``-wal`` and ``-shm`` the database's mode. An existing file
    keeps the mode the operator gave it (a warning says when others can read it)."""
    private_directory(path.parent)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        _warn_if_shared(path)
        return
    os.close(descriptor)


def open_private_append(path: Path) -> BinaryIO:
    """``open(path, "ab")``, creating the file owner-only (an existing one keeps its mode)."""
    private_directory(path.parent)
    if path.exists():
        _warn_if_shared(path)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    return os.fdopen(descriptor, "ab")


def _warn_if_shared(path: Path) -> None:
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning(
                "%s can be read by other users (mode %04o); `chmod 600 %s` unless that is meant",
                path,
                mode,
                path,
            )
