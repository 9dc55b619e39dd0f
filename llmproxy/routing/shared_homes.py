"""`prefix_affinity`'s homes for the whole daemon: the table every worker routes a prefix by.

With one home table per worker, two workers home a tenant each on the replica its own arrivals
suggest, and drift apart once spills or demand moves differ: the tenant's prefix then lives in
two caches. So with several workers the homes, their demand and the decaying scale live in one
memory-mapped table (its own ``flock``, see :mod:`llmproxy.mapped`), and each worker's
`PrefixAffinity` makes its decision for a request inside :meth:`SharedHomes.transaction`.

Backends are named by their row in the daemon's slot table
(:attr:`~llmproxy.routing.shared_slots.SlotCounter.row`), the same in every worker.

Layout: header (magic, capacity, backend rows, keys, total demand, scale), per backend row
(keys owned, demand), then ``capacity`` key rows (key, backend row, heat), open addressing with
linear probing. When 70 % of the key rows are taken the table keeps the most wanted half and
lays them out again.
"""

from __future__ import annotations

import contextlib
import mmap
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from llmproxy.mapped import MappedFile, attach_mapped, create_mapped
from llmproxy.routing.backend import Backend
from llmproxy.routing.homes import GROWTH, RESCALE_AT

DEFAULT_CAPACITY: Final = 1 << 17
_MAX_LOAD: Final = 0.7
_MAGIC: Final = b"llmphom1"
_HEADER: Final = struct.Struct("<8sIIQdd")  # magic, capacity, backend rows, keys, total, scale
_KEYS_AT: Final = 16
_TOTAL_AT: Final = 24
_SCALE_AT: Final = 32
_U64: Final = struct.Struct("<Q")
_F64: Final = struct.Struct("<d")
_HEADER_SIZE: Final = 64
_BACKEND: Final = struct.Struct("<qd")  # keys owned, demand
_KEY: Final = struct.Struct("<Qqd")  # key (0: empty), backend row, heat


def homes_table_size(capacity: int, rows: int) -> int:
    return _HEADER_SIZE + rows * _BACKEND.size + capacity * _KEY.size


def create_homes(path: Path, rows: int, capacity: int = DEFAULT_CAPACITY) -> None:
    """A fresh table (owner-only) for ``rows`` backend rows, for the supervisor."""
    header = _HEADER.pack(_MAGIC, capacity, rows, 0, 0.0, 1.0)
    create_mapped(path, homes_table_size(capacity, rows), header)


class HomesFile:
    """One worker's mapping of the daemon's homes table."""

    __slots__ = ("capacity", "file", "rows")

    def __init__(self, mapped: MappedFile) -> None:
        magic, capacity, rows, _, _, _ = _HEADER.unpack_from(mapped.map, 0)
        if magic != _MAGIC or mapped.size != homes_table_size(capacity, rows):
            raise ValueError(f"{mapped.path} is not a homes table of this llmproxy")
        self.file = mapped
        self.capacity: int = capacity
        self.rows: int = rows

    @classmethod
    def attach(cls, path: Path) -> HomesFile:
        return attach_mapped(path, cls)

    def close(self) -> None:
        self.file.close()


class SharedHomes:
    """The :class:`~llmproxy.routing.homes.HomeTable` of the daemon, for one snapshot's backends
    (each with its slot-table row)."""

    __slots__ = ("_by_row", "_file", "_map", "_mask", "_rows_at", "_slots_of")

    def __init__(self, homes: HomesFile, backends: Sequence[Backend]) -> None:
        self._file = homes
        self._map: mmap.mmap = homes.file.map
        self._mask = homes.capacity - 1
        self._rows_at = _HEADER_SIZE + homes.rows * _BACKEND.size
        self._by_row: dict[int, Backend] = {}
        self._slots_of: dict[Backend, int] = {}
        for backend in backends:
            if backend.slots is None:
                raise ValueError(f"backend {backend.name} has no row in the daemon's slot table")
            self._by_row[backend.slots.row] = backend
            self._slots_of[backend] = backend.slots.row

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self._file.file.lock()
        try:
            yield
        finally:
            self._file.file.unlock()

    # Reads and writes below run inside transaction().

    def lookup(self, key: int) -> Backend | None:
        slot = self._find(key)
        if slot < 0:
            return None
        _, row, _ = _KEY.unpack_from(self._map, self._key_at(slot))
        return self._by_row.get(row)

    def insert(self, key: int, backend: Backend) -> None:
        row = self._slots_of[backend]
        slot = self._find(key)
        if slot >= 0:  # known, but homed on a backend this snapshot does not have
            self._rehome(slot, row)
            return
        if self.keys() + 1 > self._file.capacity * _MAX_LOAD:
            self._keep_most_wanted()
        slot = self._free_slot(key)
        _KEY.pack_into(self._map, self._key_at(slot), key or 1, row, 0.0)
        owned, demand = _BACKEND.unpack_from(self._map, self._backend_at(row))
        _BACKEND.pack_into(self._map, self._backend_at(row), owned + 1, demand)
        _U64.pack_into(self._map, _KEYS_AT, self.keys() + 1)

    def count(self, key: int) -> None:
        slot = self._find(key)
        if slot < 0:
            return
        table = self._map
        at = self._key_at(slot)
        stored, row, heat = _KEY.unpack_from(table, at)
        scale = self.scale()
        _KEY.pack_into(table, at, stored, row, heat + scale)
        owned, demand = _BACKEND.unpack_from(table, self._backend_at(row))
        _BACKEND.pack_into(table, self._backend_at(row), owned, demand + scale)
        _F64.pack_into(table, _TOTAL_AT, self.total() + scale)
        scale *= GROWTH
        _F64.pack_into(table, _SCALE_AT, scale)
        if scale > RESCALE_AT:
            self._rescale()

    def move(self, key: int, backend: Backend) -> None:
        slot = self._find(key)
        if slot >= 0:
            self._rehome(slot, self._slots_of[backend])

    def heat(self, key: int) -> float:
        slot = self._find(key)
        if slot < 0:
            return 0.0
        heat: float = _KEY.unpack_from(self._map, self._key_at(slot))[2]
        return heat

    def owned(self, backend: Backend) -> int:
        owned: int = _BACKEND.unpack_from(self._map, self._backend_at(self._slots_of[backend]))[0]
        return owned

    def demand(self, backend: Backend) -> float:
        demand: float = _BACKEND.unpack_from(self._map, self._backend_at(self._slots_of[backend]))[
            1
        ]
        return demand

    def keys(self) -> int:
        keys: int = _U64.unpack_from(self._map, _KEYS_AT)[0]
        return keys

    def total(self) -> float:
        total: float = _F64.unpack_from(self._map, _TOTAL_AT)[0]
        return total

    def scale(self) -> float:
        scale: float = _F64.unpack_from(self._map, _SCALE_AT)[0]
        return scale

    # Layout.

    def _backend_at(self, row: int) -> int:
        return _HEADER_SIZE + row * _BACKEND.size

    def _key_at(self, slot: int) -> int:
        return self._rows_at + slot * _KEY.size

    def _find(self, key: int) -> int:
        key = key or 1
        table, mask = self._map, self._mask
        slot = key & mask
        for _ in range(mask + 1):
            found = _U64.unpack_from(table, self._key_at(slot))[0]
            if found == key:
                return slot
            if found == 0:
                return -1
            slot = (slot + 1) & mask
        return -1

    def _free_slot(self, key: int) -> int:
        table, mask = self._map, self._mask
        slot = (key or 1) & mask
        while _U64.unpack_from(table, self._key_at(slot))[0] != 0:
            slot = (slot + 1) & mask
        return slot

    def _rehome(self, slot: int, row: int) -> None:
        table = self._map
        at = self._key_at(slot)
        key, old, heat = _KEY.unpack_from(table, at)
        owned, demand = _BACKEND.unpack_from(table, self._backend_at(old))
        _BACKEND.pack_into(table, self._backend_at(old), owned - 1, demand - heat)
        owned, demand = _BACKEND.unpack_from(table, self._backend_at(row))
        _BACKEND.pack_into(table, self._backend_at(row), owned + 1, demand + heat)
        _KEY.pack_into(table, at, key, row, heat)

    def _entries(self) -> list[tuple[int, int, float]]:
        table = self._map
        entries = []
        for slot in range(self._mask + 1):
            key, row, heat = _KEY.unpack_from(table, self._key_at(slot))
            if key:
                entries.append((key, row, heat))
        return entries

    def _lay_out(self, entries: list[tuple[int, int, float]]) -> None:
        """Write ``entries`` as the whole table, with the per-backend sums they give."""
        table = self._map
        table[_HEADER_SIZE : self._key_at(self._mask + 1)] = bytes(
            self._key_at(self._mask + 1) - _HEADER_SIZE
        )
        sums: dict[int, tuple[int, float]] = {}
        for key, row, heat in entries:
            _KEY.pack_into(table, self._key_at(self._free_slot(key)), key, row, heat)
            owned, demand = sums.get(row, (0, 0.0))
            sums[row] = (owned + 1, demand + heat)
        for row, (owned, demand) in sums.items():
            _BACKEND.pack_into(table, self._backend_at(row), owned, demand)
        _U64.pack_into(table, _KEYS_AT, len(entries))
        _F64.pack_into(table, _TOTAL_AT, sum(demand for _, demand in sums.values()))

    def _keep_most_wanted(self) -> None:
        """Forget the less wanted half of the keys (the table is 70 % full)."""
        entries = sorted(self._entries(), key=lambda entry: entry[2], reverse=True)
        self._lay_out(entries[: int(self._file.capacity * _MAX_LOAD / 2)])

    def _rescale(self) -> None:
        """Bring the scale back to 1 (every ~10^5 requests), shares unchanged."""
        factor = self.scale()
        self._lay_out([(key, row, heat / factor) for key, row, heat in self._entries()])
        _F64.pack_into(self._map, _SCALE_AT, 1.0)
