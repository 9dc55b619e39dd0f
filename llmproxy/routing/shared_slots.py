"""Backend slots and the admission queue's order, shared by the workers of one daemon.

``backends[].max_in_flight`` is a GPU's batch slots: with N workers each counting its own, the GPU
would get N times as many. So with more than one worker the supervisor creates this table and
every worker's capped backends take and give their slots in it, under its ``flock``
(:mod:`llmproxy.mapped`): the check and the take are one step, so two workers cannot both take
the last slot.

Waiting requests keep one order across the workers: a request that starts waiting draws a ticket
from the table's counter, and each worker publishes its best waiter (priority, ticket) in its own
cell, refreshed while it waits. A request does not take a free slot while a waiter at least as
important waits in any worker, and a waiter routes again only when it is the best of the daemon.
A worker wakes its own best waiter at once when it frees a slot; a waiter in another worker finds
the slot within :data:`POLL` seconds (the cost of sharing, paid only while the fleet is full). A
published head not refreshed for :data:`STALE_AFTER` seconds (its worker died) is ignored.

A dead worker's slots come back when its replacement attaches: each worker's share of each
backend's count is kept in a cell of its own and subtracted then.

A drain (``llmproxy backends drain``, served by one worker) is a flag on the backend's row and a
count of drain changes; every worker compares the count with its own at the start of each request
(one read) and takes the flags over when it moved.

Layout: header (magic, backends, workers, ticket counter, drain changes), one row per backend
identity (hash of name and url, slots taken, draining), one cell per (worker, backend), one head
per worker.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from llmproxy.mapped import MappedFile, attach_mapped, check_worker, create_mapped

DEFAULT_BACKENDS: Final = 1024
POLL: Final = 0.01
"""Seconds between two looks of a waiter whose slot may be freed by another worker."""
STALE_AFTER: Final = 1.0
_MAGIC: Final = b"llmpslt1"
_HEADER: Final = struct.Struct("<8sIIQQ")  # magic, rows, workers, tickets drawn, drain changes
_TICKETS_AT: Final = 16
_DRAINS_AT: Final = 24
_HEADER_SIZE: Final = 64
_ROW: Final = struct.Struct("<Qqq")  # identity hash, slots taken, draining (0/1)
_COUNT: Final = struct.Struct("<q")
_HEAD: Final = struct.Struct("<qqqd")  # waiting (0/1), priority, ticket, refreshed at
_U64: Final = struct.Struct("<Q")


def _identity(name: str, url: str) -> int:
    digest = hashlib.blake2b(f"{name}\x00{url}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1  # 0 marks an empty row


def slots_table_size(backends: int, workers: int) -> int:
    return (
        _HEADER_SIZE
        + backends * _ROW.size
        + workers * backends * _COUNT.size
        + workers * _HEAD.size
        + workers * backends * _COUNT.size  # requests in flight each worker last reported
    )


class SharedSlots:
    """One worker's handle on the daemon's slot table."""

    __slots__ = ("_file", "_map", "backends", "path", "worker", "workers")

    def __init__(self, mapped: MappedFile, worker: int) -> None:
        self._file = mapped
        self._map = mapped.map
        self.path = mapped.path
        magic, backends, workers, _, _ = _HEADER.unpack_from(self._map, 0)
        if magic != _MAGIC or mapped.size != slots_table_size(backends, workers):
            raise ValueError(f"{mapped.path} is not a slot table of this llmproxy")
        check_worker(worker, workers)
        self.backends: int = backends
        self.workers: int = workers
        self.worker = worker

    @classmethod
    def create(cls, path: Path, workers: int, backends: int = DEFAULT_BACKENDS) -> None:
        """Create a fresh table (owner-only), for the supervisor to hand to its workers."""
        header = _HEADER.pack(_MAGIC, backends, workers, 0, 0)
        create_mapped(path, slots_table_size(backends, workers), header)

    @classmethod
    def attach(cls, path: Path, worker: int) -> SharedSlots:
        """Open the table as ``worker``: what a dead predecessor held is given back and its
        published waiter cleared."""
        shared = attach_mapped(path, lambda mapped: cls(mapped, worker))
        shared.recover()
        return shared

    def close(self) -> None:
        self._file.close()

    def recover(self) -> None:
        """Subtract this worker index's slots from every backend's count and clear its head."""
        with self._file.locked() as table:
            for row in range(self.backends):
                cell = self._cell(self.worker, row)
                held = _COUNT.unpack_from(table, cell)[0]
                if held:
                    total = _COUNT.unpack_from(table, self._row(row) + 8)[0]
                    _COUNT.pack_into(table, self._row(row) + 8, max(0, total - held))
                    _COUNT.pack_into(table, cell, 0)
            _HEAD.pack_into(table, self._head(self.worker), 0, 0, 0, 0.0)

    def counter(self, name: str, url: str) -> SlotCounter:
        """The slot counter of the backend ``name`` at ``url`` (a row is made for it)."""
        key = _identity(name, url)
        with self._file.locked() as table:
            row = key % self.backends
            for _ in range(self.backends):
                found = _U64.unpack_from(table, self._row(row))[0]
                if found == key:
                    break
                if found == 0:
                    _ROW.pack_into(table, self._row(row), key, 0, 0)
                    break
                row = (row + 1) % self.backends
            else:
                raise ValueError(f"more than {self.backends} backends in the slot table")
        return SlotCounter(self, row)

    def drain_changes(self) -> int:
        """How many times a backend was drained or undrained in the daemon (no lock)."""
        changes: int = _U64.unpack_from(self._map, _DRAINS_AT)[0]
        return changes

    # The waiting order.

    def draw_ticket(self) -> int:
        """The next place in the daemon's queue (arrival order across every worker)."""
        with self._file.locked() as table:
            ticket: int = _U64.unpack_from(table, _TICKETS_AT)[0] + 1
            _U64.pack_into(table, _TICKETS_AT, ticket)
        return ticket

    def publish(self, head: tuple[int, int] | None) -> None:
        """This worker's best waiter (priority, ticket), or None when nobody waits here."""
        offset = self._head(self.worker)
        if head is None:
            _HEAD.pack_into(self._map, offset, 0, 0, 0, 0.0)
        else:
            _HEAD.pack_into(self._map, offset, 1, head[0], head[1], time.monotonic())

    def best_elsewhere(self) -> tuple[int, int] | None:
        """The best waiter of the other workers (priority, ticket), if any is waiting."""
        best: tuple[int, int] | None = None
        table = self._map
        fresh = time.monotonic() - STALE_AFTER
        for worker in range(self.workers):
            if worker == self.worker:
                continue
            waiting, priority, ticket, at = _HEAD.unpack_from(table, self._head(worker))
            if waiting and at >= fresh and (best is None or (priority, ticket) < best):
                best = (priority, ticket)
        return best

    def report(self, row: int, in_flight: int) -> None:
        """This worker's requests in flight on the backend of ``row`` (for ``backends status``;
        written every status interval, no lock)."""
        _COUNT.pack_into(self._map, self._reported(self.worker, row), in_flight)

    def reported(self, row: int, workers: Iterable[int]) -> int:
        """The sum of what ``workers`` last reported for the backend of ``row``."""
        return sum(
            _COUNT.unpack_from(self._map, self._reported(worker, row))[0] for worker in workers
        )

    def _reported(self, worker: int, row: int) -> int:
        return self._head(self.workers) + (worker * self.backends + row) * _COUNT.size

    def _row(self, row: int) -> int:
        return _HEADER_SIZE + row * _ROW.size

    def _cell(self, worker: int, row: int) -> int:
        return _HEADER_SIZE + self.backends * _ROW.size + (worker * self.backends + row) * 8

    def _head(self, worker: int) -> int:
        return (
            _HEADER_SIZE
            + self.backends * _ROW.size
            + self.workers * self.backends * _COUNT.size
            + worker * _HEAD.size
        )


class SlotCounter:
    """One backend's slots, and its drain flag, in the daemon's table."""

    __slots__ = ("_cell", "_draining", "_file", "_map", "_total", "row")

    def __init__(self, shared: SharedSlots, row: int) -> None:
        self.row = row
        """The backend's row: its identity for the daemon's other tables (affinity homes)."""
        self._file = shared._file
        self._map: mmap.mmap = shared._map
        self._total = shared._row(row) + 8
        self._draining = shared._row(row) + 16
        self._cell = shared._cell(shared.worker, row)

    def draining(self) -> bool:
        """Whether the daemon drains this backend (no lock)."""
        return bool(_COUNT.unpack_from(self._map, self._draining)[0])

    def set_draining(self, draining: bool) -> None:
        """Drain or undrain it for every worker (each applies it before its next request)."""
        with self._file.locked() as table:
            _COUNT.pack_into(table, self._draining, int(draining))
            _U64.pack_into(table, _DRAINS_AT, _U64.unpack_from(table, _DRAINS_AT)[0] + 1)

    def taken(self) -> int:
        """Slots taken by every worker now (read without the lock: a hint for routing; the
        take itself is :meth:`try_take`)."""
        count: int = _COUNT.unpack_from(self._map, self._total)[0]
        return count

    def try_take(self, limit: int, reserve: int = 0) -> bool:
        """Take a slot unless ``limit`` less ``reserve`` are taken already (one atomic step)."""
        table = self._file.lock()
        try:
            total = _COUNT.unpack_from(table, self._total)[0]
            if limit <= total + reserve:
                return False
            _COUNT.pack_into(table, self._total, total + 1)
            _COUNT.pack_into(table, self._cell, _COUNT.unpack_from(table, self._cell)[0] + 1)
            return True
        finally:
            self._file.unlock()

    def give(self) -> None:
        """Give a slot back."""
        table = self._file.lock()
        try:
            total = _COUNT.unpack_from(table, self._total)[0]
            _COUNT.pack_into(table, self._total, max(0, total - 1))
            held = _COUNT.unpack_from(table, self._cell)[0]
            _COUNT.pack_into(table, self._cell, max(0, held - 1))
        finally:
            self._file.unlock()
