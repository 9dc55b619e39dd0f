"""A file mapped into every worker's memory, with one lock: what the daemon's shared tables use.

``server.workers: N`` runs N processes; state that must be the daemon's (limits, backend slots)
lives in a table the supervisor creates and every worker maps. Why ``flock``: the kernel
releases it when its holder dies, even by ``kill -9``, so a dead worker cannot wedge the others
(a ``multiprocessing.Lock`` would stay taken). A critical section is a few struct reads and
writes, never an ``await``, so waiting for the lock is waiting for microseconds.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from llmproxy.private_files import FILE_MODE, private_directory


def create_mapped(path: Path, size: int, header: bytes) -> None:
    """Create ``path`` owner-only, ``size`` zero bytes starting with ``header``; an old file is
    replaced in one step (a worker never maps a half-written table)."""
    private_directory(path.parent)
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.ftruncate(fd, size)
        os.pwrite(fd, header, 0)
    finally:
        os.close(fd)
    os.replace(scratch, path)


_T = TypeVar("_T")


def attach_mapped(path: Path, build: Callable[[MappedFile], _T]) -> _T:
    """``build(mapping of path)``: a table's handle over a fresh mapping, which is closed again
    when ``build`` refuses it (not a table of this kind, a worker index out of range)."""
    mapped = MappedFile(path)
    try:
        return build(mapped)
    except BaseException:
        mapped.close()
        raise


def check_worker(worker: int, workers: int) -> None:
    """Refuse a worker index the table has no cells for."""
    if not 0 <= worker < workers:
        raise ValueError(f"worker {worker} of a table for {workers}")


class MappedFile:
    """One process's mapping of a shared table, and the table's lock."""

    __slots__ = ("_fd", "map", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR)
        try:
            self.map = mmap.mmap(self._fd, os.fstat(self._fd).st_size)
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def size(self) -> int:
        return len(self.map)

    def lock(self) -> mmap.mmap:
        """Take the lock and return the table; pair with :meth:`unlock` in a ``finally``."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self.map

    def unlock(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextmanager
    def locked(self) -> Iterator[mmap.mmap]:
        """The table, exclusively (:meth:`lock` / :meth:`unlock` where a generator costs too
        much)."""
        table = self.lock()
        try:
            yield table
        finally:
            self.unlock()

    def close(self) -> None:
        """Unmap and close (the file stays for the other workers; the supervisor removes it)."""
        if not self.map.closed:
            self.map.close()
            os.close(self._fd)
