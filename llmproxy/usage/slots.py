"""A process's journal of requests in flight as a memory-mapped file: one slot per request.

With the usage store in a SQLite file the whole fleet is one machine, and what must survive is a
killed process (``kill -9``, the OOM killer), not a lost machine: ``usage.synchronous: normal``
promises no more. A write into a shared file mapping is in the kernel's page cache the moment
it is made and outlives the process that made it, so a request is journalled by copying its
skeleton into the mapping — a few µs on the event loop, no thread hop, no transaction — and a
checkpoint is a 24-byte copy. (The SQLite tables did the same work in ~40 µs of CPU per request
plus a thread hop: ~10 % of a short streamed request.)

Layout: :data:`SLOT` -byte slots. A request takes as many consecutive slots as its skeleton
needs; its first slot starts with a header::

    magic "\\0LPJ" | state (1: live) | current copy (0|1) | lease length | slots | body length
    | opened at | counts copy 0 (prompt, completion, at) | counts copy 1 | body | lease

A checkpoint writes the copy not in use and then flips the one-byte selector, and an open
writes everything but the state byte before it, so a process killed in the middle of either
leaves a row as it was before or after, never torn. The magic starts with a NUL, which JSON
text never holds: a scan stepping slot by slot cannot mistake a body for a header.

Whose file is whose: each process holds an exclusive ``flock`` on its own file from creation
to exit, and the kernel drops it when the process dies, however it dies. A sweeper that gets
the lock knows the owner is gone and that no other sweeper is settling the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import struct
from pathlib import Path
from typing import Final

from llmproxy.private_files import FILE_MODE, private_directory
from llmproxy.usage.rows import JournalRow

log = logging.getLogger("llmproxy.usage")

SLOT: Final = 1024
"""Bytes per slot: a usual skeleton (~450 bytes) with its header fits in one."""
INITIAL_SLOTS: Final = 256
"""Slots of a new file (sparse: pages are allocated as they are first written)."""
SUFFIX: Final = ".slots"

MAGIC: Final = b"\0LPJ"
_HEADER: Final = struct.Struct("<4sBBHIId")
"""magic, state, current copy, lease length, slots, body length, opened at."""
_COUNTS: Final = struct.Struct("<QQd")
"""prompt tokens, completion tokens, when counted."""
_STATE: Final = 4
_CURRENT: Final = 5
_COPIES: Final = (_HEADER.size, _HEADER.size + _COUNTS.size)
_BODY: Final = _HEADER.size + 2 * _COUNTS.size
_LIVE: Final = 1
_FREE: Final = 0


class SlotFile:
    """This process's journal file in ``directory``, created and locked (see the module
    docstring). Every method runs on the event loop: they copy bytes into memory."""

    def __init__(self, directory: Path, owner: str) -> None:
        private_directory(directory)
        name = owner.replace("/", "_").replace(":", "_")
        self.path = directory / f"{name}{SUFFIX}"
        # Created and locked under a name no sweeper looks at, then renamed: a sweeper never
        # locks a file its owner has not locked yet.
        building = directory / f"{name}.new"
        for attempt in range(3):
            self._fd = os.open(building, os.O_RDWR | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if not _same_file(building, self._fd) and attempt < 2:
                    # A sweeper took it for a dead process's unfinished file between our open
                    # and our lock, and removed it: start again.
                    os.close(self._fd)
                    continue
                os.ftruncate(self._fd, INITIAL_SLOTS * SLOT)
                os.rename(building, self.path)
                self._map = mmap.mmap(self._fd, INITIAL_SLOTS * SLOT)
            except BaseException:
                os.close(self._fd)
                raise
            break
        self._slots = INITIAL_SLOTS
        self._top = 0
        """Slots below it have been handed out at least once."""
        self._free: dict[int, list[int]] = {}
        """Freed runs by length (in slots): their offsets."""

    def open(self, body: bytes, lease: bytes, opened_at: float, prompt: int) -> int:
        """Journal one request; answers its offset (for :meth:`count` and :meth:`free`)."""
        size = _BODY + len(body) + len(lease)
        slots = -(-size // SLOT)
        runs = self._free.get(slots)
        if runs:
            offset = runs.pop()
        else:
            if self._top + slots > self._slots:
                self._grow(self._top + slots)
            offset = self._top * SLOT
            self._top += slots
        view = self._map
        _HEADER.pack_into(view, offset, MAGIC, _FREE, 0, len(lease), slots, len(body), opened_at)
        _COUNTS.pack_into(view, offset + _COPIES[0], prompt, 0, opened_at)
        start = offset + _BODY
        view[start : start + len(body)] = body
        if lease:
            view[start + len(body) : start + len(body) + len(lease)] = lease
        view[offset + _STATE] = _LIVE  # last: a row is live once whole
        return offset

    def count(self, offset: int, prompt: int, completion: int, at: float) -> None:
        """Checkpoint a request's tokens: into the copy not in use, then made current."""
        view = self._map
        spare = 1 - view[offset + _CURRENT]
        _COUNTS.pack_into(view, offset + _COPIES[spare], prompt, completion, at)
        view[offset + _CURRENT] = spare

    def free(self, offset: int) -> None:
        """The request's record is stored: its slots are not a journal row any more."""
        view = self._map
        view[offset + _STATE] = _FREE
        self._free.setdefault(_HEADER.unpack_from(view, offset)[4], []).append(offset)

    def _grow(self, needed: int) -> None:
        slots = max(needed, 2 * self._slots)
        self._map.resize(slots * SLOT)  # the file too
        self._slots = slots

    def close(self, *, remove: bool) -> None:
        """Unmap and unlock; ``remove``: nothing in it is live (a clean stop), so the file goes."""
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._map.close()
        os.close(self._fd)


def _same_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def read_rows(data: bytes, owner: str) -> list[JournalRow]:
    """The live rows of a journal file's contents (``request_id`` left empty: the caller reads
    the id from the body); a row that does not hold together is skipped, and logged."""
    rows = []
    offset = 0
    end = len(data)
    while offset + _BODY <= end:
        if data[offset : offset + 4] != MAGIC or data[offset + _STATE] != _LIVE:
            offset += SLOT
            continue
        _, _, current, lease_length, slots, body_length, opened_at = _HEADER.unpack_from(
            data, offset
        )
        start = offset + _BODY
        if current > 1 or slots < 1 or start + body_length + lease_length > end:
            log.error("usage journal: a damaged row at byte %d is skipped", offset)
            offset += SLOT
            continue
        prompt, completion, at = _COUNTS.unpack_from(data, offset + _COPIES[current])
        body = data[start : start + body_length]
        lease = data[start + body_length : start + body_length + lease_length]
        rows.append(JournalRow("", owner, body, prompt, completion, opened_at, at, lease.decode()))
        offset += slots * SLOT
    return rows


class Orphan:
    """The journal file of a process that is gone, locked by this one while it is settled."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def read(self) -> bytes:
        with open(self._fd, "rb", closefd=False) as file:
            return file.read()

    def settled(self) -> None:
        """Its rows are billed: the file goes, then the lock."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self.release()

    def release(self) -> None:
        """Let go without settling (a failed write: the next sweep tries again)."""
        os.close(self._fd)


def orphans(directory: Path, mine: Path | None) -> list[Orphan]:
    """The journal files in ``directory`` whose owner is gone, each locked for this process
    (blocking calls: run them off the event loop). A file a process died building (before any
    request could be journalled in it) is removed."""
    found = []
    try:
        candidates = sorted(directory.glob(f"*{SUFFIX}"))
        unfinished = list(directory.glob("*.new"))
    except OSError:
        return []
    for path in unfinished:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(path, fd):
                    os.unlink(path)
            finally:
                os.close(fd)
    for path in candidates:
        if path == mine:
            continue
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue  # settled by another process meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Locked: the owner is gone. Still the file that name points at? Another sweeper
            # may have settled and removed it between our open and our lock.
            if not _same_file(path, fd):
                raise FileNotFoundError(path)
        except OSError:
            os.close(fd)
            continue
        found.append(Orphan(path, fd))
    return found
