"""Limits shared by the workers of one daemon: one table in shared memory, exact across them.

``server.workers: N`` runs N processes on one port. A :class:`MemoryLimitStore` per process would
let each of them admit a key's whole budget (20 of 40 requests for a key allowed 10). So with more
than one worker the supervisor creates one table in a memory-mapped file, and every worker's
:class:`SharedLimitStore` decides on it, under an exclusive ``flock``, with the very same
arithmetic as the memory store (:func:`~llmproxy.limits.memory.admit_state` on a key's row).

Why this design rather than a limiter process the workers ask: a decision is a few microseconds of
Python on a row; a round trip to another process would cost more than the decision, twice per
request. The mapping and its ``flock`` are :mod:`llmproxy.mapped`'s.

What a dead worker held is given back: besides the row's totals, each worker has a cell per row
with the leases it holds (slots in flight, quota reserved); a worker starting in a dead one's place
subtracts that worker's cells from the rows before it serves. Tokens it reserved from a per-minute
bucket come back as the bucket refills.

Layout: a 64-byte header (magic, capacity, workers, the global bucket), ``capacity`` rows of one
key each (open addressing on a 64-bit hash of the key id, linear probing), then per worker one
cell per row. A row that equals a fresh state is dropped when the table is rebuilt, which happens
when 70 % of the rows are taken (rows are never deleted in between, so probing needs no
tombstones); a table still that full after a rebuild refuses new keys with
:class:`~llmproxy.limits.admission.LimitsUnavailable` (503): use Redis for more keys than
:data:`DEFAULT_CAPACITY` × 0.7 with quotas in flight or counted.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import mmap
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Final

from llmproxy.limits.admission import Admission, KeyPolicy, LimitsUnavailable, Rate
from llmproxy.limits.memory import (
    LOCAL_LEASE_PREFIX,
    Bucket,
    Hold,
    KeyState,
    admit_state,
    is_idle,
    settle_state,
    take_global,
)
from llmproxy.mapped import MappedFile, attach_mapped, check_worker, create_mapped

log = logging.getLogger("llmproxy.limits")

DEFAULT_CAPACITY: Final = 1 << 16
"""Rows of the table: keys with limit state at once (about 5 MB, plus 1 MB per worker)."""
_MAX_LOAD: Final = 0.7
_MAGIC: Final = b"llmplim1"
_HEADER: Final = struct.Struct("<8sIIddQ")  # magic, capacity, workers, global bucket, rows taken
_GLOBAL: Final = struct.Struct("<dd")
_GLOBAL_AT: Final = 16
_TAKEN: Final = struct.Struct("<Q")
_TAKEN_AT: Final = 32
_HEADER_SIZE: Final = 64
_ROW: Final = struct.Struct("<Qddddqqqd")
"""hash, requests bucket (tokens, at), tokens bucket (tokens, at), in flight, used, reserved,
idle at. A bucket's time is NaN while the key has none (a fresh, full bucket)."""
_ROW_SIZE: Final = _ROW.size
_KEY: Final = struct.Struct("<Q")
_MAX_HINTS: Final = 100_000
_FULL: Final = "the daemon's limit table is full (use storage: redis)"
_FULL_BACKOFF: Final = 1.0
"""Seconds new keys are refused without another rebuild after one that freed nothing."""
_CELL: Final = struct.Struct("<qq")
"""One worker's share of a row: leases in flight, quota reserved."""
_EMPTY: Final = 0
_NAN: Final = math.nan


def _hash(key_id: str) -> int:
    value = int.from_bytes(hashlib.blake2b(key_id.encode(), digest_size=8).digest(), "little")
    return value or 1  # 0 marks an empty row


def table_size(capacity: int, workers: int) -> int:
    """Bytes of a table of ``capacity`` rows for ``workers`` workers."""
    return _HEADER_SIZE + capacity * (_ROW.size + workers * _CELL.size)


class SharedLimits:
    """One process's handle on the daemon's table: the mapping, the lock, its worker index."""

    __slots__ = ("_file", "_map", "capacity", "path", "worker", "workers")

    def __init__(self, mapped: MappedFile, worker: int) -> None:
        self._file = mapped
        self._map = mapped.map
        self.path = mapped.path
        magic, capacity, workers, _, _, _ = _HEADER.unpack_from(self._map, 0)
        if magic != _MAGIC or mapped.size != table_size(capacity, workers):
            raise ValueError(f"{mapped.path} is not a limit table of this llmproxy")
        check_worker(worker, workers)
        self.capacity: int = capacity
        self.workers: int = workers
        self.worker = worker

    @classmethod
    def create(cls, path: Path, workers: int, capacity: int = DEFAULT_CAPACITY) -> None:
        """Create a fresh table at ``path`` (owner-only; an old one is replaced), for the
        supervisor to hand to its workers."""
        if capacity & (capacity - 1) or capacity < 8:
            raise ValueError(f"capacity must be a power of two >= 8, got {capacity}")
        header = _HEADER.pack(_MAGIC, capacity, workers, _NAN, _NAN, 0)
        create_mapped(path, table_size(capacity, workers), header)

    @classmethod
    def attach(cls, path: Path, worker: int) -> SharedLimits:
        """Open the table as worker ``worker``, giving back what a dead predecessor held."""
        shared = attach_mapped(path, lambda mapped: cls(mapped, worker))
        shared.recover()
        return shared

    def close(self) -> None:
        """Unmap and close (the file stays for the other workers; the supervisor removes it)."""
        self._file.close()

    def locked(self) -> AbstractContextManager[mmap.mmap]:
        """The table, exclusively."""
        return self._file.locked()

    def lock(self) -> mmap.mmap:
        """Take the table's lock and return the table (the hot path's :meth:`locked`, without
        a generator); pair with :meth:`unlock` in a ``finally``."""
        return self._file.lock()

    def unlock(self) -> None:
        self._file.unlock()

    def recover(self) -> int:
        """Subtract this worker index's cells from the rows and clear them: a worker that died
        with leases held (its slots, its quota reservations) gives them back. Returns how many
        rows had something held."""
        found = 0
        with self.locked() as table:
            for slot, in_flight, reserved in self._held(table):
                offset = self._row_offset(slot)
                row = list(_ROW.unpack_from(table, offset))
                row[5] = max(0, row[5] - in_flight)
                row[7] = max(0, row[7] - reserved)
                _ROW.pack_into(table, offset, *row)
                _CELL.pack_into(table, self._cell_offset(self.worker, slot), 0, 0)
                found += 1
        return found

    def _held(self, table: mmap.mmap) -> Iterator[tuple[int, int, int]]:
        start = self._cell_offset(self.worker, 0)
        cells = memoryview(table)[start : start + self.capacity * _CELL.size].cast("q")
        try:
            for slot in range(self.capacity):
                in_flight, reserved = cells[2 * slot], cells[2 * slot + 1]
                if in_flight or reserved:
                    yield slot, in_flight, reserved
        finally:
            cells.release()

    def _row_offset(self, slot: int) -> int:
        return _HEADER_SIZE + slot * _ROW.size

    def _cell_offset(self, worker: int, slot: int) -> int:
        return (
            _HEADER_SIZE + self.capacity * _ROW.size + (worker * self.capacity + slot) * _CELL.size
        )


class SharedLimitStore:
    """A :class:`~llmproxy.limits.admission.LimitStore` on the daemon's :class:`SharedLimits`.

    Each call takes the table's lock, loads the key's row into a
    :class:`~llmproxy.limits.memory.KeyState`, decides exactly as the memory store does and
    writes the row back; nothing is awaited while the lock is held. Leases are named like the
    memory store's and remembered in this process (the worker that admitted settles).
    """

    def __init__(self, shared: SharedLimits, *, clock: Callable[[], float] = time.monotonic):
        self._shared = shared
        self._clock = clock
        self._full_until = 0.0
        self._rows: dict[str, tuple[int, int]] = {}
        """key id → (hash, the row it was last found in): a hint, checked against the row's
        hash on use (a rebuild moves rows)."""
        self._leases: dict[str, tuple[int, Hold]] = {}
        self._lease_ids = itertools.count(1)
        self._prefix = f"{LOCAL_LEASE_PREFIX}w{shared.worker}."

    async def check_global(self, rate: Rate) -> Admission:
        """Take one token from the bucket all the daemon's traffic shares."""
        with self._shared.locked() as table:
            tokens, at = _GLOBAL.unpack_from(table, _GLOBAL_AT)
            bucket = None if at != at else Bucket(tokens, at)
            answer, bucket = take_global(bucket, rate, self._clock())
            _GLOBAL.pack_into(table, _GLOBAL_AT, bucket.tokens, bucket.updated_at)
        return answer

    async def admit(self, key_id: str, policy: KeyPolicy, reserve_tokens: int) -> Admission:
        """Check every dimension first, then take from all of them — or from none."""
        lease = f"{self._prefix}{next(self._lease_ids)}" if policy.needs_lease else None
        shared = self._shared
        table = shared.lock()
        try:
            key, slot = self._row(table, key_id)
            offset = _HEADER_SIZE + slot * _ROW_SIZE
            state = _load(table, offset)
            answer, hold = admit_state(state, policy, reserve_tokens, self._clock(), lease)
            _store(table, offset, key, state)
            if hold is not None:
                cell = shared._cell_offset(shared.worker, slot)
                in_flight, reserved = _CELL.unpack_from(table, cell)
                _CELL.pack_into(table, cell, in_flight + 1, reserved + max(hold.quota, 0))
        finally:
            shared.unlock()
        if hold is not None and lease is not None:
            self._leases[lease] = (key, hold)
        return answer

    def _row(self, table: mmap.mmap, key_id: str) -> tuple[int, int]:
        """(hash, row) of ``key_id``, creating its row when it has none (lock held)."""
        hint = self._rows.get(key_id)
        if hint is not None:
            key, slot = hint
            if _KEY.unpack_from(table, _HEADER_SIZE + slot * _ROW_SIZE)[0] == key:
                return hint
        else:
            key = _hash(key_id)
        slot = self._find(table, key, insert=True)
        if len(self._rows) >= _MAX_HINTS:
            self._rows.clear()
        self._rows[key_id] = (key, slot)
        return key, slot

    async def settle(
        self, key_id: str, policy: KeyPolicy, lease: str, reserved_tokens: int, used_tokens: int
    ) -> None:
        """Free the slot and settle the reservations recorded for ``lease`` (once)."""
        record = self._leases.pop(lease, None)
        if record is None:  # settled already, or never issued here
            return
        key, hold = record
        shared = self._shared
        table = shared.lock()
        try:
            hint = self._rows.get(key_id)
            if (
                hint is not None
                and hint[0] == key
                and _KEY.unpack_from(table, _HEADER_SIZE + hint[1] * _ROW_SIZE)[0] == key
            ):
                slot = hint[1]
            else:
                slot = self._find(table, key, insert=False)
                if slot < 0:  # given back already (a recovery by another handle of this worker)
                    return
            offset = _HEADER_SIZE + slot * _ROW_SIZE
            state = _load(table, offset)
            settle_state(state, hold, used_tokens, self._clock())
            _store(table, offset, key, state)
            cell = shared._cell_offset(shared.worker, slot)
            in_flight, reserved = _CELL.unpack_from(table, cell)
            _CELL.pack_into(table, cell, in_flight - 1, reserved - max(hold.quota, 0))
        finally:
            shared.unlock()

    async def quota_used(self, key_id: str) -> int:
        """Tokens counted against ``key_id``'s quota by the daemon."""
        state = self._read(key_id)
        return 0 if state is None else state.used

    async def in_flight(self, key_id: str) -> int:
        """Leases of ``key_id`` not yet settled, in every worker."""
        state = self._read(key_id)
        return 0 if state is None else state.in_flight

    async def close(self) -> None:
        """Nothing to release: the table is the process's (:class:`SharedLimits`)."""

    def _read(self, key_id: str) -> KeyState | None:
        shared = self._shared
        with shared.locked() as table:
            slot = self._find(table, _hash(key_id), insert=False)
            return None if slot < 0 else _load(table, shared._row_offset(slot))

    def _find(self, table: mmap.mmap, key: int, *, insert: bool) -> int:
        """The row of ``key``; with ``insert``, a new one when it has none (-1 otherwise)."""
        shared = self._shared
        mask = shared.capacity - 1
        slot = key & mask
        free = -1
        for _ in range(shared.capacity):
            found = _KEY.unpack_from(table, shared._row_offset(slot))[0]
            if found == key:
                return slot
            if found == _EMPTY:
                break
            slot = (slot + 1) & mask
        if not insert:
            return -1
        taken = _TAKEN.unpack_from(table, _TAKEN_AT)[0]
        if taken + 1 > shared.capacity * _MAX_LOAD:
            # A rebuild scans every row under the lock every worker waits on: after one that
            # freed nothing, new keys are refused at once for a while rather than rebuilding
            # for each of them.
            now = time.monotonic()
            if now < self._full_until:
                raise LimitsUnavailable(_FULL)
            if self._rebuild(table) + 1 > shared.capacity * _MAX_LOAD:
                self._full_until = now + _FULL_BACKOFF
                log.error("%s: %d keys hold limit state", _FULL, shared.capacity * _MAX_LOAD)
                raise LimitsUnavailable(_FULL)
            return self._find(table, key, insert=True)
        if free < 0:
            free = slot
        _ROW.pack_into(table, shared._row_offset(free), key, 0.0, _NAN, 0.0, _NAN, 0, 0, 0, 0.0)
        _TAKEN.pack_into(table, _TAKEN_AT, taken + 1)
        return free

    def _rebuild(self, table: mmap.mmap) -> int:
        """Drop the rows equal to a fresh state and lay the others out again (with their
        workers' cells); returns the rows kept."""
        shared = self._shared
        now = self._clock()
        kept: list[tuple[bytes, list[bytes]]] = []
        for slot in range(shared.capacity):
            offset = shared._row_offset(slot)
            key = _KEY.unpack_from(table, offset)[0]
            if key == _EMPTY:
                continue
            if is_idle(_load(table, offset), now):
                continue
            cells = [
                bytes(table[c : c + _CELL.size])
                for c in (shared._cell_offset(w, slot) for w in range(shared.workers))
            ]
            kept.append((bytes(table[offset : offset + _ROW.size]), cells))
        end = shared._cell_offset(shared.workers, 0)
        table[_HEADER_SIZE:end] = bytes(end - _HEADER_SIZE)
        mask = shared.capacity - 1
        for row, cells in kept:
            key = _KEY.unpack_from(row)[0]
            slot = key & mask
            while _KEY.unpack_from(table, shared._row_offset(slot))[0] != _EMPTY:
                slot = (slot + 1) & mask
            offset = shared._row_offset(slot)
            table[offset : offset + _ROW.size] = row
            for worker, cell in enumerate(cells):
                start = shared._cell_offset(worker, slot)
                table[start : start + _CELL.size] = cell
        _TAKEN.pack_into(table, _TAKEN_AT, len(kept))
        return len(kept)


def _load(table: mmap.mmap, offset: int) -> KeyState:
    _, req, req_at, tok, tok_at, in_flight, used, reserved, idle_at = _ROW.unpack_from(
        table, offset
    )
    state = KeyState()
    if req_at == req_at:  # not NaN
        state.requests = Bucket(req, req_at)
    if tok_at == tok_at:
        state.tokens = Bucket(tok, tok_at)
    state.in_flight = in_flight
    state.used = used
    state.reserved = reserved
    state.idle_at = idle_at
    return state


def _store(table: mmap.mmap, offset: int, key: int, state: KeyState) -> None:
    requests, tokens = state.requests, state.tokens
    _ROW.pack_into(
        table,
        offset,
        key,
        0.0 if requests is None else requests.tokens,
        _NAN if requests is None else requests.updated_at,
        0.0 if tokens is None else tokens.tokens,
        _NAN if tokens is None else tokens.updated_at,
        state.in_flight,
        state.used,
        state.reserved,
        state.idle_at,
    )
